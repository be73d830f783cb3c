"""torch.compile as a target: every built-in spec's training step traces as one graph (no graph
breaks), compiled meta-gradients equal eager ones, and schedules advance without recompiling.

Specs are shrunk with --set overrides (width, depth, chunk sizes) so tracing stays quick; the
code paths are the same as at full size."""

import pytest
import torch
import torch._dynamo

import nestc
from nestc.loader import builtin_names
from nestc.runtime.train import forward_loss, frozen, make_loss_fns, probe_loss, signals

from region_backwards import backward_variants
from small_models import ADAM_CHUNKS, MODEL_SPECS, SHRINK, SMALL, call_start, small


def test_every_model_spec_is_covered():
    models = [n for n in builtin_names() if nestc.compile(n).program.layers]
    assert sorted(models) == MODEL_SPECS


@pytest.mark.parametrize("name", MODEL_SPECS)
def test_training_step_has_no_graph_breaks(name):
    torch._dynamo.reset()
    model = small(name).model()
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    lss = {k: torch.zeros(2, 16, w) for k, w in model.lss_sites()}
    ex = torch._dynamo.explain(lambda a, b, s: forward_loss(model, a, b, s))(x, y, lss)
    assert ex.graph_break_count == 0, [str(r.reason) for r in ex.break_reasons]
    assert ex.graph_count == 1
    if lss:
        probes = {k: v.clone().requires_grad_() for k, v in lss.items()}
        ex = torch._dynamo.explain(lambda a, b, s: probe_loss(model, a, b, s))(x, y, probes)
        assert ex.graph_break_count == 0, [str(r.reason) for r in ex.break_reasons]


def _explain_small_hope():
    """torch._dynamo.explain of the small Hope's real pass, in the loop mode set now."""
    torch._dynamo.reset()
    model = small("hope").model()
    x = torch.randint(0, 256, (2, 16))
    lss = {k: torch.zeros(2, 16, w) for k, w in model.lss_sites()}
    return torch._dynamo.explain(lambda a, b, s: forward_loss(model, a, b, s))(x, x, lss)


def test_hope_in_region_mode_traces_one_graph_of_region_calls(request):
    """Loop mode "region": Hope's self-modifying loop becomes calls of a compiled region, still in
    one graph with no breaks (the loop body is a method of the block, so the region takes only
    the module, constants and tensors)."""
    from nestc.runtime.ops import set_loop_mode

    set_loop_mode("region")
    request.addfinalizer(lambda: set_loop_mode("unroll"))
    ex = _explain_small_hope()
    assert ex.graph_break_count == 0, [str(r.reason) for r in ex.break_reasons]
    assert ex.graph_count == 1
    assert "invoke_subgraph" in ex.graphs[0].code


def test_hope_in_region_mode_calls_one_region_for_every_chunk(request, monkeypatch):
    """Every chunk of the small Hope's self-modifying loop (both layers: the model is one graph
    here) calls the same region, and AOTAutograd traces one backward for it: the first chunk's
    initial state (broadcast, meta-learned) and the last chunk's unread final state would each
    cost a copy of the body otherwise (runtime/ops.py `_region_loop`)."""
    import re

    from nestc.runtime.ops import set_loop_mode

    variants = backward_variants(monkeypatch)
    set_loop_mode("region")
    request.addfinalizer(lambda: set_loop_mode("unroll"))
    torch._dynamo.reset()
    model = small("hope").model()
    x = torch.randint(0, 256, (2, 16))
    lss = {k: torch.zeros(2, 16, w) for k, w in model.lss_sites()}
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        # aot_eager: AOTAutograd traces the backward every time (inductor's caches could skip it)
        return torch._dynamo.backends.debugging.aot_eager(gm, inputs)

    loss = torch.compile(lambda a, b, s: forward_loss(model, a, b, s), backend=backend, fullgraph=True)(x, x, lss)
    loss.backward()
    (gm,) = graphs
    called = re.findall(r"invoke_subgraph\(\w+, '(\w+)'", gm.code)
    assert len(called) >= 4 and set(called) == {"subgraph_0"}, called
    assert variants == [("subgraph_0", 0)], variants


def test_hope_in_call_mode_breaks_the_graph_only_at_its_chunk_loops(request):
    """Loop mode "call": the step's only graph breaks are the chunk loops, run between the
    layer's graphs as calls of a body compiled by itself: the small Hope's block loop (its
    self-modifying memories) and the loops inside one memory call (its main memory's chunks and
    the fast CMS level's, `DeepMemory._call_chunks`)."""
    from nestc.runtime.ops import set_loop_mode

    set_loop_mode("call", {"backend": "eager"})
    request.addfinalizer(lambda: set_loop_mode("unroll"))
    ex = _explain_small_hope()
    reasons = [str(r.reason) for r in ex.break_reasons]
    # dynamo counts the break once in each frame it passes through (model, layer, block, loop)
    assert ex.graph_break_count > 0 and all("_call_loop" in r or "_call_chunks" in r for r in reasons), reasons
    assert any("_call_loop" in r for r in reasons) and any("_call_chunks" in r for r in reasons), reasons


@pytest.mark.parametrize("name", sorted(n for n in builtin_names() if not nestc.compile(n).program.layers))
def test_optimizer_step_variants_have_no_graph_breaks(name):
    torch._dynamo.reset()
    (_, group, cls, _), = nestc.compile(name).module.OPTIMIZERS
    params = [torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(4, 3))]
    opt = cls(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # creates the state
    group = opt.param_groups[0]
    W = [p for p in group["params"]]
    states = opt._box_state(group, W)
    for i in range(len(opt.VARIANTS)):
        fn = getattr(opt, f"_update_{i}")
        ex = torch._dynamo.explain(fn)(W, [p.grad for p in W], states, opt._steps(W), opt._hyper(group))
        assert ex.graph_break_count == 0, (i, [str(r.reason) for r in ex.break_reasons])


@pytest.mark.slow
@pytest.mark.parametrize("name,loops", [("titans", "unroll"), ("hope", "unroll"), ("titans", "scan"),
                                        ("hope", "scan"), ("hope", "region"), ("hope", "call")])
def test_compiled_meta_gradients_equal_eager(name, loops, request, torch_threads):
    """Outer gradients through the inner updates (the meta-learned initial states and every
    projection) agree between the compiled step and eager execution, with chunk loops unrolled,
    traced as scans, run as calls of one compiled region, or run between graphs as calls of a
    body compiled by itself. And every graph of the step is one AOTAutograd's cache may keep (a
    graph it bypasses is traced again in every new process; runtime/autograd_cache.py)."""
    from torch._dynamo.utils import counters

    from nestc.runtime.ops import set_loop_mode

    set_loop_mode(loops)
    request.addfinalizer(lambda: set_loop_mode("unroll"))
    if (name, loops) == ("titans", "unroll"):
        # two threads, whatever the session runs with (one per pytest-xdist worker): inductor
        # then writes its OpenMP-parallel loops, as in the benchmarks
        torch_threads(2)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = small(name).model()
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    lss = {k: torch.randn(2, 16, w) * 1e-2 for k, w in model.lss_sites()}
    eager = torch.autograd.grad(forward_loss(model, x, y, lss), list(model.parameters()), allow_unused=True)
    fn = torch.compile(lambda a, b, s: forward_loss(model, a, b, s), fullgraph=loops != "call")
    bypassed = counters["aot_autograd"]["autograd_cache_bypass"]
    compiled = torch.autograd.grad(fn(x, y, lss), list(model.parameters()), allow_unused=True)
    if loops != "scan":  # torch 2.13's cache does not take the scan operator
        assert counters["aot_autograd"]["autograd_cache_bypass"] == bypassed
    compared = _assert_eager_gradients(model, eager, compiled)
    assert any("init" in n for n in compared)  # the meta-learned initial states received gradients


# two boxes only the general per-token rule runs: Adam on an MLP memory's inner objective, and a
# matrix memory with a Huber objective and proximal retention, updated every 2 tokens
GENERAL_RULE_SPEC = """spec general_pair "two boxes of the general rule"
param d_model = 16
param heads   = 2
param d_head  = d_model / heads
block layer {
    box adam_mem : memory {
        heads     heads
        state     mlp(d_head, depth=2, expansion=2, act=gelu)
        init      meta
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.05
        objective l2(M(k), v)
        optimizer adam(0.9, 0.99, 1e-6)
        every     1 tokens
    }
    box prox_mem : memory {
        heads     heads
        state     matrix(d_head, d_head)
        init      meta
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.5 * sigmoid(linear(in, heads))
        objective huber(M(k), v, 0.5)
        retention proximal(0.2)
        every     2 tokens
    }
    let h = rmsnorm(x)
    x = x + linear(adam_mem(h), d_model) + linear(prox_mem(h), d_model)
}
model {
    dim d_model
    repeat 1 { layer }
}
"""


@pytest.mark.slow
@pytest.mark.parametrize("loops", ["unroll", "scan"])
def test_general_rule_compiled_meta_gradients_equal_eager(loops, request):
    """The general rule takes inner gradients with torch.func inside the compiled step; the
    outer gradients through them equal eager's, with the tokens as calls of one region (the
    default) and as one scan (loop mode "scan"). (They did not while the rule read its state
    through the custom autograd Function compiled steps use elsewhere: torch 2.13 gave wrong
    values for it inside torch.func.grad, the forward loss included.)"""
    from nestc.runtime.ops import set_loop_mode

    set_loop_mode(loops)
    request.addfinalizer(lambda: set_loop_mode("unroll"))
    c = nestc.compile("general_pair.nest", text=GENERAL_RULE_SPEC)
    assert "layer.adam_mem: memory_general" in c.module.__doc__
    assert "layer.prox_mem: memory_general" in c.module.__doc__
    compared = _compiled_step_equals_eager(c, length=8)
    assert {"layers.0.box_adam_mem.init_weights.0", "layers.0.box_prox_mem.init_weights.0"} <= set(compared)


def _general_rule_graph(box: str) -> torch.fx.GraphModule:
    """The compiled step's graph of GENERAL_RULE_SPEC with only `box`, over 8 tokens (traced
    with aot_eager; the backward is run)."""
    import re

    keep = {"adam_mem": "x = x + linear(adam_mem(h), d_model)", "prox_mem": "x = x + linear(prox_mem(h), d_model)"}
    spec = GENERAL_RULE_SPEC.replace("x = x + linear(adam_mem(h), d_model) + linear(prox_mem(h), d_model)", keep[box])
    other = "prox_mem" if box == "adam_mem" else "adam_mem"
    spec = re.sub(r"    box %s : memory \{.*?\n    \}\n" % other, "", spec, flags=re.S)
    model = nestc.compile("general_one.nest", text=spec).model(50)
    torch._dynamo.reset()
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, inputs)

    x = torch.randint(0, 50, (2, 8))
    torch.compile(lambda a, b: forward_loss(model, a, b, {}), backend=backend, fullgraph=True)(x, x).backward()
    (gm,) = graphs
    return gm


@pytest.mark.parametrize("box", ["adam_mem", "prox_mem"])
def test_general_rule_tokens_are_one_scan(box, request):
    """In loop mode "scan" a compiled step runs a general-rule box's tokens as one scan, whose
    body (one token's step and read) is traced once whatever the sequence's length
    (runtime/memory.py `GeneralMemory._token_scan`): cold compiles of examples/adam_memory.nest
    stay within 25-44 s from 16 to 128 tokens (benchmarks/results/amd_epyc/general_rule/).
    prox_mem commits every 2 tokens, inside the same scan."""
    from nestc.runtime.ops import set_loop_mode

    set_loop_mode("scan")
    request.addfinalizer(lambda: set_loop_mode("unroll"))
    gm = _general_rule_graph(box)
    assert gm.code.count("scan(") == 1 and "invoke_subgraph" not in gm.code, gm.code


@pytest.mark.parametrize("box", ["adam_mem", "prox_mem"])
def test_general_rule_calls_one_region_for_every_token(box, monkeypatch):
    """By default a compiled step runs each token of a general-rule box as a call of one region,
    traced once with one backward (its compile grows with the sequence by the calls only, about
    0.8 s per token). Adam's step count is a tensor to the
    region, the reads' and the last token's gradients are laid out as every other token's
    (runtime/memory.py `_token_step`). prox_mem is updated every 2 tokens: two regions, one for
    the first token of each pair (which reads the memory, at the committed state it runs from)
    and one for the second (no read; the committed state is not the running one there)."""
    import re

    variants = backward_variants(monkeypatch)
    gm = _general_rule_graph(box)
    called = re.findall(r"invoke_subgraph\(\w+, '(\w+)'", gm.code)
    regions = {"adam_mem": ["subgraph_0"], "prox_mem": ["subgraph_0", "subgraph_1"]}[box]
    assert len(called) >= 7 and sorted(set(called)) == regions, called
    assert sorted(variants) == [(r, 0) for r in regions], variants


# four boxes of the general rule with what a token scan carries beside the running state: a
# user-written update read after each token; momentum with proximal retention, committed every 3
# tokens (a call of 8 ends mid-chunk); DGD with proximal retention every 2; Adam with a retained
# gradient (at the gated state), read after each token
GENERAL_VARIANTS_SPEC = """spec general_variants "four general-rule boxes with options the token scan must carry"
param d_model = 16
param heads   = 2
param d_head  = d_model / heads
block layer {
    box hebb : memory {
        heads     heads
        state     matrix(d_head, d_head)
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        update    M + 0.1 * outer(v, k)
        retention gate(sigmoid(linear(in, heads) + 2.0))
        read      after
    }
    box mom_prox : memory {
        heads     heads
        state     mlp(d_head, depth=2, expansion=2)
        init      meta
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.3 * sigmoid(linear(in, heads))
        objective huber(M(k), v, 0.5)
        retention proximal(0.1)
        optimizer momentum(sigmoid(linear(in, heads)))
        every     3 tokens
        reset     6
    }
    box dgd_prox : memory {
        heads     heads
        state     matrix(d_head, d_head)
        init      meta
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.5 * sigmoid(linear(in, heads))
        objective l2(M(k), v)
        retention proximal(0.2)
        optimizer dgd(step=paper, decay_keys=first)
        every     2 tokens
    }
    box adam_gate : memory {
        heads     heads
        state     mlp(d_head, depth=2, expansion=2)
        init      meta
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.05
        objective l2(M(k), v)
        retention gate(sigmoid(linear(in, heads) + 3.0), grad=retained)
        optimizer adam(0.9, 0.99, 1e-6)
        every     1 tokens
        read      after
        reset     4
    }
    let h = rmsnorm(x)
    x = x + linear(combine(hebb(h), mom_prox(h), dgd_prox(h), adam_gate(h)), d_model)
}
model {
    dim d_model
    repeat 1 { layer }
}
"""


@pytest.mark.slow
@pytest.mark.parametrize("loops", ["unroll", "scan"])
def test_general_rule_variants_compiled_equal_eager_in_one_call_and_in_pieces(loops, request):
    """The region calls (the default) and the token scan (loop mode "scan") against the eager
    token-by-token loop: the training loss and every gradient over 8 tokens, and a stream fed
    in pieces of 5 and 3 tokens (two compiled calls, the second starting mid-chunk, with
    moments, step counts and committed states carried) against one eager call. Two boxes start
    again from their initial state every few tokens (`reset`): in the scan, inside a call, at
    positions 4 and 6 of the stream."""
    from nestc.runtime.ops import set_loop_mode

    set_loop_mode(loops)
    request.addfinalizer(lambda: set_loop_mode("unroll"))
    c = nestc.compile("general_variants.nest", text=GENERAL_VARIANTS_SPEC)
    assert c.module.__doc__.count(": memory_general") == 4
    compared = _compiled_step_equals_eager(c, length=8)
    assert sum("init_weights" in n for n in compared) == 6  # every meta-learned initial state

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = c.model(50).eval()
    x = torch.randint(0, 50, (2, 8))
    step = torch.compile(lambda a, s: model(a, s), fullgraph=True)
    with torch.no_grad():
        whole, whole_state = model(x)
        state, outs = model.initial_state(2), []
        for s, e in ((0, 5), (5, 8)):
            out, state = step(x[:, s:e], state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-5, atol=1e-5)
    # every box's state: tensors, and the offsets, positions and Adam's step count
    want, spec = torch.utils._pytree.tree_flatten(whole_state)
    got, got_spec = torch.utils._pytree.tree_flatten(state)
    assert got_spec == spec
    for a, b in zip(got, want):
        if torch.is_tensor(b):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            assert a == b
    assert whole_state[0]["box_mom_prox"]["offset"] == 2  # the stream ends inside a chunk


def _compiled_step_equals_eager(c, length: int) -> list[str]:
    """The training loss of a small model of `c` and every parameter's gradient, compiled
    (fullgraph) against eager; returns the names of the parameters compared."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = c.model(50)
    x, y = torch.randint(0, 50, (2, length)), torch.randint(0, 50, (2, length))
    eager_loss = forward_loss(model, x, y, {})
    eager = torch.autograd.grad(eager_loss, list(model.parameters()), allow_unused=True)
    fn = torch.compile(lambda a, b: forward_loss(model, a, b, {}), fullgraph=True)
    compiled_loss = fn(x, y)
    compiled = torch.autograd.grad(compiled_loss, list(model.parameters()), allow_unused=True)
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-6)
    return _assert_eager_gradients(model, eager, compiled)


# four memories no built-in spec has, each on the chunk-parallel rule: delta gradient descent with
# the paper's step on a matrix, an objective written as an expression under a gate, a Huber
# objective with data-dependent momentum, an L3 objective read after each token
NOVEL_RULES_SPEC = """spec novel_rules "four memories no built-in spec has, each on a chunked rule"
param d_model = 16
param heads   = 2
param d_head  = d_model / heads
block layer {
    box dgd_mem : memory {
        heads     heads
        state     matrix(d_head, d_head)
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.5 * sigmoid(linear(in, heads))
        objective l2(M(k), v)
        optimizer dgd(step=paper, decay_keys=first)
        every     2 tokens
    }
    box cubic_mem : memory {
        heads     heads
        state     mlp(d_head, depth=2, expansion=2)
        init      meta
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.1
        objective sum(abs(M(k) - v) ** 3) + 0.1 * sum(M(k) * v)
        retention gate(sigmoid(linear(in, heads) + 1.0))
        every     4 tokens
    }
    box huber_mem : memory {
        heads     heads
        state     mlp(d_head, depth=2, expansion=2, act=silu)
        init      meta
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.5 * sigmoid(linear(in, heads))
        objective huber(M(k), v, 0.3)
        optimizer momentum(sigmoid(linear(in, heads)))
        every     3 tokens
    }
    box lp_mem : memory {
        heads     heads
        state     matrix(d_head, d_head)
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.2
        objective lp(M(k), v, 3)
        read      after
    }
    let h = rmsnorm(x)
    x = x + linear(combine(dgd_mem(h), cubic_mem(h), huber_mem(h), lp_mem(h)), d_model)
}
model {
    dim d_model
    repeat 1 { layer }
}
"""


@pytest.mark.slow
def test_novel_memories_compiled_meta_gradients_equal_eager():
    """The built-ins' compiled steps are checked against eager above; this is the same check
    for box options none of them uses."""
    c = nestc.compile("novel_rules.nest", text=NOVEL_RULES_SPEC)
    assert c.module.__doc__.count(": deep_memory_chunked") == 4
    compared = _compiled_step_equals_eager(c, length=12)
    assert sum("init_weights" in n for n in compared) == 6  # every meta-learned initial state


# a memory read twice (so its block runs a chunk loop), with no gate and a constant momentum:
# the chunk loop's region saves running sums of constants for its backward
TWO_READS_SPEC = """spec two_reads "an MLP memory read twice, no gate, constant momentum"
param d_model = 16
param heads   = 2
block layer {
    box mem : memory {
        heads     heads
        state     mlp(8, depth=2, expansion=2)
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.5 * sigmoid(linear(in, heads))
        objective l2(M(k), v)
        optimizer momentum(0.9)
        every     4 tokens
    }
    let h = rmsnorm(x)
    let a = read_before(mem, h)
    x = x + linear(a + read_before(mem, rmsnorm(a)), d_model)
}
model {
    dim d_model
    repeat 1 { layer }
}
"""


@pytest.mark.slow
def test_region_mode_on_a_memory_read_twice_gives_eager_gradients(request):
    """Loop mode "region" on a chunk loop whose region saves tensors of two kinds torch 2.13's
    inductor mishandled: a running sum of a constant (its rewrite into a broadcast made the
    region's calls disagree on a layout: "subgraph args must have consistent values!"; now a
    product, runtime/memory.py `_cumsum_tokens`), and an input of the region (the state a
    chunk starts from), whose buffer the outer graph reused while the backward still read it
    (runtime/subgraph_aliases.py). Both failed at e99c7e8
    (benchmarks/results/amd_epyc/region_two_reads/)."""
    from nestc.runtime.ops import set_loop_mode

    set_loop_mode("region")
    request.addfinalizer(lambda: set_loop_mode("unroll"))
    c = nestc.compile("two_reads.nest", text=TWO_READS_SPEC)
    compared = _compiled_step_equals_eager(c, length=16)
    assert "layers.0.box_mem.init_weights.0" in compared


def _assert_eager_gradients(model, eager, compiled) -> list[str]:
    """Every parameter's compiled gradient equals eager's (None or zero where eager has none);
    returns the names of the parameters compared."""
    compared = []
    for (pname, _), a, b in zip(model.named_parameters(), eager, compiled):
        if a is None:
            assert b is None or b.abs().max() == 0
            continue
        # atol relative to this gradient's size: they range from 0.26 (embeddings) down to 6e-5
        # (Hope's fused memories' initial state), where an absolute 1e-6 let a 1.6% error pass.
        # Measured: max |a - b| <= 1.1e-6 * max |a| for every parameter, loop mode and spec.
        scale = a.abs().max().item()
        assert scale > 0 and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale), pname
        compared.append(pname)
    return compared


@pytest.mark.slow
def test_m3_schedule_advances_without_recompiling():
    torch._dynamo.reset()
    (_, _, cls, _), = nestc.compile("m3", {"f": "3"}).module.OPTIMIZERS
    params = [torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(5, 6))]
    opt = cls(params).compile_steps(backend="aot_eager")
    for step in range(2):  # warm: one compile per variant (two variants for f = 3)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # the third step is the first slow-momentum step
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(9):  # three more cycles, with a changing learning rate
            opt.param_groups[0]["lr"] = 0.01 * (1 + step)
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()


@pytest.mark.slow
def test_compiled_first_pass_gives_eager_signals_and_leaves_parameters_alone():
    """The first pass (local surprise signals) runs with the parameters frozen, so that the
    compiled backward computes the probes' gradients only (runtime/train.py `frozen`). The
    signals must be eager's, no parameter may gain a gradient, every requires_grad flag must
    come back, and a second call must not recompile."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = small("hope").model()
    flags = [p.requires_grad for p in model.parameters()]
    assert all(flags)
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    eager = signals(model, make_loss_fns(model), x, y)
    fns = make_loss_fns(model, compile=True)
    compiled = signals(model, fns, x, y)
    assert eager and eager.keys() == compiled.keys()
    for k in eager:
        assert eager[k].abs().max() > 0
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-7)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    # the first pass's autograd graph reaches the probes and no parameter
    probes = {k: torch.zeros_like(v).requires_grad_() for k, v in compiled.items()}
    leaves = _autograd_leaves(fns.probe(x, y, probes))
    assert leaves and {id(t) for t in leaves} <= {id(t) for t in probes.values()}
    # the real pass after it still trains every parameter, and nothing recompiles on the next step
    fns.main(x, y, compiled).backward()
    assert sum(p.grad is not None for p in model.parameters()) > 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        fns.main(x, y, signals(model, fns, x, y)).backward()


@pytest.mark.slow
def test_first_pass_signals_in_scan_mode_equal_eager_through_a_later_layer(request):
    """Loop mode "scan", first pass frozen, two layers: layer 0's signal is the gradient that comes
    back through layer 1's compiled graph, whose memories' chunk loops are scans that start from
    frozen states (no gradient) while their keys and values need one (they depend on layer 0's
    probes). torch 2.13's compiled scan gave wrong gradients for such inputs (layer 0's signal off by
    5.6e-4 of its size in float64, layer 1's exact); `ops.scan` now hands a carry that needs no
    gradient in requiring one (`_as_carried`). Float64, so that anything but a wrong gradient
    agrees to about 1e-15."""
    from nestc.runtime.ops import set_loop_mode

    request.addfinalizer(lambda: set_loop_mode("unroll"))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nestc.compile("hope", {**SMALL, **SHRINK["hope"], "n_layers": "2"}).model().double()
    x = torch.randint(0, 256, (3, 16))
    y = torch.randint(0, 256, (3, 16))
    eager = signals(model, make_loss_fns(model), x, y)
    compiled = signals(model, make_loss_fns(model, compile=True, loops="scan"), x, y)
    assert sorted(k.split(".")[0] for k in eager) == ["0", "1"]
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-9, atol=1e-12)


def _assert_compiled_equals_eager_in_float64(name: str, text: str, loops: str, request) -> None:
    """A spec's model in float64, batch 2 x 13 tokens: the compiled two-pass loss and every
    gradient against eager's, to 1e-9 of each gradient's largest entry."""
    from nestc.runtime.ops import set_loop_mode

    request.addfinalizer(lambda: set_loop_mode("unroll"))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nestc.compile(name, text=text).model(30).double()
    x, y = torch.randint(0, 30, (2, 13)), torch.randint(0, 30, (2, 13))
    eager = make_loss_fns(model)
    loss_e = eager.main(x, y, signals(model, eager, x, y))
    grads_e = torch.autograd.grad(loss_e, list(model.parameters()), allow_unused=True)
    fns = make_loss_fns(model, compile=True, loops=loops)
    loss_c = fns.main(x, y, signals(model, fns, x, y))
    grads_c = torch.autograd.grad(loss_c, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-12, atol=0)
    for (pname, _), a, b in zip(model.named_parameters(), grads_e, grads_c):
        if a is not None and b is not None:
            assert (a - b).abs().max() <= 1e-9 * a.abs().max(), pname


# Found by fuzzing random specs (a /tmp script, 2026-12-07) and cut down line by line to what
# it needs: a memory with `grad_state call_start` (DeepMemory._parallel) beside a general-rule
# memory with proximal retention and stop-gradient writes (GeneralMemory._token_scan). Each
# alone, or either option of the second alone, was right; so were unroll, region and call loops
# and the aot_eager backend, while inductor's scan gave gradients up to 100% off. Turning off
# inductor's joint-graph constant folding (or all fusion) made them right: scan mode now
# compiles without it (runtime/train.py make_loss_fns).
SCAN_STOP_PROXIMAL = """spec scan_stop_proximal "a call-start memory beside a proximal, stop-gradient general one"
param d_model = 8
param heads = 2
param d_head = d_model / heads
block layer {
    box mem : memory {
        heads heads
        state matrix(d_head, 4)
        keys l2norm(g, groups=heads)
        values M(in)
        every 2 tokens
        objective l2(M(k), v)
        grad_state call_start
    }
    box mem2 : memory {
        heads heads
        state matrix(d_head, d_head)
        keys l2norm(linear(in, d_model), groups=heads)
        values g
        objective lp(M(k), v, 1.5)
        retention proximal(0.2)
        grad stop
    }
    let h = rmsnorm(x)
    let g = linear(h, d_model)
    let a = mem(h)
    x = x + linear(a, d_model) + linear(mem2(h), d_model)
}
model {
    dim d_model
    repeat 1 { layer }
}
"""


@pytest.mark.slow
@pytest.mark.parametrize("loops", ["unroll", "call", "scan"])
def test_stop_gradient_proximal_memory_beside_a_call_start_memory(loops, request):
    _assert_compiled_equals_eager_in_float64("scan_stop_proximal.nest", SCAN_STOP_PROXIMAL, loops, request)


@pytest.mark.slow
@pytest.mark.parametrize("loops", ["unroll", "region"])
def test_adam_on_chunks_of_several_tokens_compiles_and_equals_eager(loops, request):
    """A general-rule memory with Adam updated every 4 tokens (small_models.ADAM_CHUNKS): its
    per-token region calls stopped torch 2.13's inductor (AssertionError: subgraph args must have
    consistent values!, an internal error from `nestc train --compile`), found by fuzzing random
    specs; its tokens now run as one scan there (runtime/memory.py `_can_scan_tokens`). Every 1
    token (examples/adam_memory.nest) keeps the region calls."""
    _assert_compiled_equals_eager_in_float64("adam_chunks.nest", ADAM_CHUNKS, loops, request)


ADAM_CHUNKS_RESET = ADAM_CHUNKS.replace("every     4 tokens", "every     4 tokens\n        reset     8")


@pytest.mark.slow
@pytest.mark.parametrize("loops", ["unroll", "scan"])
def test_adam_on_chunks_with_resets_compiles_to_eager_gradients(loops, request):
    """The same memory starting again from its initial state every 8 tokens: a reset kept the
    per-token region calls (it acted between tokens, in Python), and inductor's region calls gave
    NaN gradients in every loop mode (aot_eager's were right). The resets now run inside the
    token scan (a 0/1 flag per token, Adam's step count starting again with them)."""
    _assert_compiled_equals_eager_in_float64("adam_chunks_reset.nest", ADAM_CHUNKS_RESET, loops, request)


# found by fuzzing (benchmarks/fuzz_specs.py --seed 6000 --loops unroll,region,call,scan):
# DeepMemory's chunk scan dropped a retention gate that is a number, not a stream
CONSTANT_GATE = """spec constant_gate "a deep memory every token, with a constant retention"
param d_model = 8
param heads = 2
block layer {
    box mem : memory {
        heads     heads
        state     mlp(d_model / heads, depth=2, expansion=1, out=4, residual=false)
        init      random(std=0.2)
        keys      in
        values    linear(in, d_model)
        lr        1.0
        objective dot(M(k), v)
        retention RETENTION
        every     1 tokens
    }
    x = x + linear(mem(rmsnorm(x)), d_model)
}
model {
    dim d_model
    repeat 1 { layer }
}
"""


@pytest.mark.slow
@pytest.mark.parametrize("retention", ["gate(0.9)", "weight_decay(0.1)"])
def test_scan_keeps_a_constant_retention_gate(retention, request):
    """Loop mode scan ran the memory's chunks without its gate (the fuzzer's row: loss 2.5e-3 and
    gradients 300% off; aot_eager alike, so not inductor's doing); a gate that is a stream was
    right."""
    _assert_compiled_equals_eager_in_float64("constant_gate.nest", CONSTANT_GATE.replace("RETENTION", retention),
                                             "scan", request)


def test_call_loops_refuse_adam_on_chunks():
    from nestc.diagnostics import NestError

    model = nestc.compile("adam_chunks.nest", text=ADAM_CHUNKS).model(30)
    with pytest.raises(NestError, match="`--loops call` cannot compile box `mem`"):
        make_loss_fns(model, compile=True, loops="call")


@pytest.mark.slow
@pytest.mark.parametrize("loops", ["unroll", "call"])
def test_shared_first_pass_compiles_no_graph_of_its_own_and_gives_eager_signals(loops, request):
    """first_pass "shared" (runtime/train.py make_loss_fns): the first pass runs through the real
    pass's compiled code, with zero signals and the probes added after the lss boxes learn.
    Once the real pass has compiled, the first pass compiles no graph of its own; its signals,
    the loss and every parameter's gradient are eager's; a first pass leaves no gradient on any
    parameter; nothing recompiles on the next step."""
    from torch._dynamo.utils import counters

    from nestc.runtime.ops import set_loop_mode

    request.addfinalizer(lambda: set_loop_mode("unroll"))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = small("hope").model()
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    params = list(model.parameters())
    eager_fns = make_loss_fns(model)
    eager_lss = signals(model, eager_fns, x, y)
    eager_loss = eager_fns.main(x, y, eager_lss)
    eager = torch.autograd.grad(eager_loss, params, allow_unused=True)

    fns = make_loss_fns(model, compile=True, loops=loops, first_pass="shared")
    fns.main(x, y, {k: torch.zeros_like(v) for k, v in eager_lss.items()}).backward()  # compiles the real pass
    for p in params:
        p.grad = None
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    lss = signals(model, fns, x, y)
    assert counters["stats"]["unique_graphs"] == graphs  # the first pass reused the real pass's graphs
    assert all(p.grad is None for p in params)
    assert eager_lss and lss.keys() == eager_lss.keys()
    for k in eager_lss:
        assert eager_lss[k].abs().max() > 0
        torch.testing.assert_close(lss[k], eager_lss[k], rtol=1e-4, atol=1e-7)
    loss = fns.main(x, y, lss)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    _assert_eager_gradients(model, eager, torch.autograd.grad(loss, params, allow_unused=True))
    with torch._dynamo.config.patch(error_on_recompile=True):
        fns.main(x, y, signals(model, fns, x, y)).backward()


def test_many_models_in_one_process_each_get_their_own_compile_budget():
    """Dynamo keeps compiled variants, and its limit of 8 on them, per code object. Every model
    adds its own variants of the step's compiled functions (two passes, a layer class of its
    own), so a process that trains several models (a test session, a notebook) must not pool
    them in one budget: the ninth variant of a fullgraph function is a hard error."""
    torch._dynamo.reset()
    x = torch.randint(0, 256, (2, 16))
    for _ in range(6):  # 6 models x 2 passes: 12 variants of the layer and head functions
        model = small("cms").model()
        fns = make_loss_fns(model, compile=True, backend="eager")
        fns.main(x, x, signals(model, fns, x, x)).backward()


def test_an_unknown_first_pass_mode_is_refused():
    model = small("hope").model()
    with pytest.raises(ValueError, match="frozen"):
        make_loss_fns(model, compile=True, first_pass="thawed")


def test_frozen_restores_the_flags_after_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[1].bias.requires_grad_(False)  # a parameter frozen by the user stays frozen
    with pytest.raises(RuntimeError, match="boom"):
        with frozen(model):
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("boom")
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]


def _autograd_leaves(out: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors a backward from `out` would accumulate into."""
    seen, stack, leaves = set(), [out.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(n for n, _ in node.next_functions)
    return leaves


def test_call_start_memories_compile_to_one_graph_with_eager_gradients(tmp_path):
    """`grad_state call_start` (DeepMemory._parallel: every chunk at once, no chunk loop) traces
    as one graph with no breaks, and its compiled loss and outer gradients equal eager ones."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = call_start(tmp_path, {"n_layers": "2", "d_model": "32", "heads": "2", "chunk": "4"}).model()
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    ex = torch._dynamo.explain(lambda a, b: forward_loss(model, a, b, {}))(x, y)
    assert ex.graph_break_count == 0, [str(r.reason) for r in ex.break_reasons]
    assert ex.graph_count == 1
    params = list(model.parameters())
    eager_loss = forward_loss(model, x, y, {})
    eager = torch.autograd.grad(eager_loss, params)
    fn = torch.compile(lambda a, b: forward_loss(model, a, b, {}), fullgraph=True)
    compiled_loss = fn(x, y)
    compiled = torch.autograd.grad(compiled_loss, params)
    assert torch.allclose(eager_loss, compiled_loss, rtol=1e-5, atol=1e-6)
    assert len(_assert_eager_gradients(model, eager, compiled)) == len(params)  # every one has a gradient


@pytest.mark.slow
def test_compiled_bf16_titans_step_gives_eager_bf16_gradients():
    """`--precision bf16` with torch.compile (tests/runtime/test_autocast.py covers eager): the
    compiled step, whose memories read their states through `_StateTimes`, gives float32
    gradients within bf16 rounding of the eager bf16 step's."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = small("titans").model()
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    params = list(model.parameters())

    def grads(fn):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(x, y, {})
        return torch.autograd.grad(loss, params, allow_unused=True)

    eager = grads(lambda a, b, s: forward_loss(model, a, b, s))
    compiled = grads(torch.compile(lambda a, b, s: forward_loss(model, a, b, s), fullgraph=True))
    pairs = [(a, b) for a, b in zip(compiled, eager) if b is not None]
    assert pairs and all(a is not None and a.dtype == torch.float32 for a, _ in pairs)
    err = sum(float((a.double() - b.double()).norm()) ** 2 for a, b in pairs) ** 0.5
    scale = sum(float(b.double().norm()) ** 2 for _, b in pairs) ** 0.5
    assert err / scale < 3e-2, err / scale  # bf16 rounding, as tests/runtime/test_autocast.py bounds it
