"""Every chunked lowering rule against the general per-token rule, box option by box option.

The general rule (rule memory_general, `runtime/memory.py` GeneralMemory) runs a memory one token
at a time and takes its inner gradients with torch.func from the spec's objective as written: the
slow, obviously-correct form. `nestc.compile(..., options={"rules": "reference"})` lowers every box
a chunked rule would run (the delta rule, linear attention, the chunk-parallel deep memory) to it
instead. Each case below is one combination of state, objective, retention, optimizer, update
frequency and read; the whole model's loss and every parameter's gradient must agree in float64.

The second half checks the general rule's own features, which no chunked rule has, against
specs with the same meaning that lower to chunked rules (proximal retention, expression
objectives, update rules with retention) or against torch.optim (Adam on the inner objective).
"""

from __future__ import annotations

import pytest
import torch

import nestc
from nestc.diagnostics import NestError
from nestc.runtime import memory as mem
from small_models import loss_and_grads

GATE = "sigmoid(linear(in, heads) + 1.0)"
DECAY = "sigmoid(linear(in, heads) - 2.0)"
BETA = "sigmoid(linear(in, heads))"


def box_spec(*, state="matrix(d_head, d_head)", objective="l2(M(k), v)", retention=None,
             optimizer=None, every=1, read=None, init="zeros()", lr="0.5 * sigmoid(linear(in, heads))",
             update=None, values="linear(in, d_model)", extra=()) -> str:
    """A one-box model: the box between an embedding and the output, a residual around it."""
    lines = ["heads heads", f"state {state}", f"init {init}",
             "keys l2norm(linear(in, d_model), groups=heads)", f"values {values}",
             f"every {every} tokens"]
    lines.append(f"lr {lr}")
    lines.append(f"objective {objective}" if update is None else f"update {update}")
    lines += [f"retention {retention}"] * (retention is not None)
    lines += [f"optimizer {optimizer}"] * (optimizer is not None)
    lines += [read] * (read is not None)
    lines += list(extra)
    body = "\n".join(f"        {line}" for line in lines)
    return f"""spec one_box "one memory box"
param d_model = 16
param heads   = 2
param d_head  = d_model / heads
block layer {{
    box mem : memory {{
{body}
    }}
    x = x + linear(mem(rmsnorm(x)), d_model)
}}
model {{
    dim d_model
    repeat 1 {{ layer }}
}}
"""


def compiled(text: str, **options):
    return nestc.compile("one_box.nest", text=text, options=options)


def rules(c) -> dict[str, str]:
    """Box -> lowering rule, as the generated module's docstring lists them."""
    doc = c.module.__doc__.split("Lowering:")[1]
    return dict(line.strip().split(": ", 1) for line in doc.strip().splitlines())


def same_model_pair(a, b, vocab=40):
    """Models of two compilations with the same parameters and buffers (a fixed random initial
    state, say) in float64, and the pairs of names that hold the same tensor in each. Names are
    equal but for a matrix memory's initial state: the delta rule's module calls it
    `init_state`, the deep and general memories `init_weights.0` (learned) or `init_w0`."""
    torch.manual_seed(0)
    ma = a.model(vocab).double()
    mb = b.model(vocab).double()
    sa, sb = ma.state_dict(), mb.state_dict()
    only_a, only_b = sorted(sa.keys() - sb.keys()), sorted(sb.keys() - sa.keys())
    assert len(only_a) == len(only_b) <= 1
    pairs = {k: k for k in sa.keys() & sb.keys()} | dict(zip(only_a, only_b))
    mb.load_state_dict({pairs[k]: v for k, v in sa.items()})
    names_b = {n for n, _ in mb.named_parameters()}
    return ma, mb, [(n, pairs[n]) for n, _ in ma.named_parameters() if pairs[n] in names_b]


def assert_same_training_signal(ma, mb, pairs, t=10, rtol=1e-9):
    torch.manual_seed(1)
    x, y = torch.randint(0, 40, (2, t)), torch.randint(0, 40, (2, t))
    la, ga = loss_and_grads(ma, x, y)
    lb, gb = loss_and_grads(mb, x, y)
    assert torch.isfinite(la)
    assert abs(la.item() - lb.item()) <= rtol * abs(la.item())
    grads_a = dict(zip((n for n, _ in ma.named_parameters()), ga))
    grads_b = dict(zip((n for n, _ in mb.named_parameters()), gb))
    assert len(pairs) == len(grads_a) == len(grads_b)
    for name_a, name_b in pairs:
        u, w = grads_a[name_a], grads_b[name_b]
        if u is None or w is None:  # unused by one of them: then the other's is zero
            assert all(g is None or g.abs().max() == 0 for g in (u, w)), name_a
            continue
        assert torch.isfinite(u).all(), name_a
        scale = u.abs().max().item() or 1.0
        assert (u - w).abs().max().item() <= rtol * scale, name_a


def assert_same_model(spec_a: str, rule_a: str, spec_b: str, rule_b: str) -> None:
    """Two specs that mean the same, lowered to the rules named: the same training signal."""
    a, b = compiled(spec_a), compiled(spec_b)
    assert (rules(a)["layer.mem"], rules(b)["layer.mem"]) == (rule_a, rule_b)
    ma, mb, pairs = same_model_pair(a, b)
    assert_same_training_signal(ma, mb, pairs)


# (case id, box options, the chunked rule it lowers to)
CASES = [
    ("delta", {}, "delta_rule_chunked"),
    ("delta-gate", {"retention": f"gate({GATE})"}, "delta_rule_chunked"),
    ("delta-gate-retained", {"retention": f"gate({GATE}, grad=retained)"}, "delta_rule_chunked"),
    ("delta-weight-decay-read-before", {"retention": "weight_decay(0.3)", "read": "read before"},
     "delta_rule_chunked"),
    ("linear-attention-decay", {"objective": "-dot(M(k), v)", "retention": f"decay({DECAY})"},
     "linear_attn_chunked"),
    ("linear-attention-retained", {"objective": "-dot(M(k), v)",
                                   "retention": f"gate({GATE}, grad=retained)"}, "linear_attn_chunked"),
    ("matrix-momentum", {"optimizer": f"momentum({BETA})"}, "deep_memory_chunked"),
    ("matrix-chunk-4", {"every": 4, "retention": f"decay({DECAY})"}, "deep_memory_chunked"),
    ("matrix-lp3-read-after", {"objective": "lp(M(k), v, 3)", "read": "read after"},
     "deep_memory_chunked"),
    # p < 2 with residuals that are exactly 0 (a zero state reading ReLU values): the objective's
    # second derivative is infinite there, and the meta-gradients were NaN (runtime/ops.py abs_pow)
    ("matrix-lp1.5-zero-residuals", {"objective": "lp(M(k), v, 1.5)", "values": "relu(linear(in, d_model))",
                                     "every": 2}, "deep_memory_chunked"),
    ("mlp-relu-lp1.5-zero-residuals", {"state": "mlp(d_head, depth=2, expansion=2, act=relu, residual=false)",
                                       "init": "zeros()", "objective": "lp(M(k), v, 1.5)",
                                       "values": "relu(linear(in, d_model))", "every": 3}, "deep_memory_chunked"),
    ("titans", {"state": "mlp(d_head, depth=2, expansion=2)", "init": "meta", "every": 4,
                "retention": f"decay({DECAY})", "optimizer": f"momentum({BETA})"}, "deep_memory_chunked"),
    ("mlp-huber", {"state": "mlp(d_head, depth=2, expansion=2, act=silu)", "init": "meta",
                   "objective": "huber(M(k), v, 0.3)", "every": 3}, "deep_memory_chunked"),
    ("mlp-relu-lp3-momentum-token", {"state": "mlp(d_head, depth=2, expansion=2, act=relu, residual=false)",
                                     "init": "random(std=0.3)", "objective": "lp(M(k), v, 3)",
                                     "optimizer": "momentum(0.8)", "read": "read after"},
     "deep_memory_chunked"),
    ("mlp-dot", {"state": "mlp(d_head, depth=2, expansion=1, act=tanh)", "init": "meta",
                 "objective": "-dot(M(k), v)", "every": 2, "lr": "0.1"}, "deep_memory_chunked"),
    ("mlp-expression-objective", {"state": "mlp(d_head, depth=2, expansion=2)", "init": "meta",
                                  "objective": "sum(abs(M(k) - v) ** 3) + 0.1 * sum(M(k) * v)",
                                  "every": 4, "retention": f"gate({GATE})"}, "deep_memory_chunked"),
    ("mlp-dgd", {"state": "mlp(d_head, depth=2, expansion=2)", "init": "meta", "every": 4,
                 "optimizer": "dgd()", "retention": f"gate({GATE})"}, "deep_memory_chunked"),
    ("matrix-dgd-paper-first", {"optimizer": "dgd(step=paper, decay_keys=first)", "every": 2},
     "deep_memory_chunked"),
    ("mlp-stop-grad-writes", {"state": "mlp(d_head, depth=2, expansion=2)", "init": "meta",
                              "every": 4, "extra": ("grad stop",)}, "deep_memory_chunked"),
    # `none()`, the form `nestc specs --functions` lists, was an internal error (only `none` worked)
    ("matrix-retention-none-call", {"retention": "none()", "every": 4, "objective": "lp(M(k), v, 1.5)"},
     "deep_memory_chunked"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_chunked_rule_equals_the_per_token_reference(case):
    _, options, rule = case
    text = box_spec(**options)
    fast, ref = compiled(text), compiled(text, rules="reference")
    assert rules(fast)["layer.mem"] == rule
    assert rules(ref)["layer.mem"] == "memory_general"
    ma, mb, names = same_model_pair(fast, ref)
    assert_same_training_signal(ma, mb, names, t=10)  # 10 tokens: a partial last chunk too


# a seeded sample of the whole option grid (the cases above pick one combination each)
GRID = {
    "state": ["matrix(d_head, d_head)", "mlp(d_head, depth=2, expansion=2)",
              "mlp(d_head, depth=2, expansion=2, act=tanh, residual=false)",
              "mlp(d_head, depth=3, expansion=1, act=silu)"],
    "init": ["zeros()", "meta", "random(std=0.2)"],
    "objective": ["l2(M(k), v)", "-dot(M(k), v)", "lp(M(k), v, 3)", "huber(M(k), v, 0.5)",
                  "0.5 * sum((M(k) - v) ** 2) + 0.1 * sum(abs(M(k)) ** 3)"],
    "retention": [None, f"gate({GATE})", f"decay({DECAY})", "weight_decay(0.2)", "0.9 * M",
                  f"gate({GATE}, grad=retained)"],
    "optimizer": [None, "momentum(0.7)", f"momentum({BETA})", "dgd()", "dgd(step=neurips)"],
    "every": [1, 2, 4],
    "read": [None, "read after"],
    "lr": ["0.3", "0.5 * sigmoid(linear(in, heads))"],
}


def sampled_cases(n: int, seed: int) -> list[dict]:
    """n combinations that a chunked rule runs (the others are errors or the general rule)."""
    import random

    rng = random.Random(seed)
    out = []
    while len(out) < n:
        options = {k: rng.choice(v) for k, v in GRID.items()}
        try:
            c = compiled(box_spec(**options))
        except NestError:
            continue  # a combination the compiler refuses (read after every 4 tokens, ...)
        if rules(c)["layer.mem"] != "memory_general":
            out.append(options)
    return out


@pytest.mark.parametrize("options", sampled_cases(20, seed=7), ids=lambda o: f"{o['state'][:6]}-{o['every']}")
def test_sampled_box_options_equal_the_per_token_reference(options):
    text = box_spec(**options)
    ma, mb, names = same_model_pair(compiled(text), compiled(text, rules="reference"))
    assert_same_training_signal(ma, mb, names, t=9, rtol=1e-8)


def test_a_retained_gradient_on_a_deep_memory_is_not_lowered_to_a_rule_that_ignores_it():
    """The chunk-parallel rule takes every gradient before the gate; with grad=retained an MLP
    memory goes to the per-token rule, which takes it at the gated state (it differs)."""
    opts = {"state": "mlp(d_head, depth=2, expansion=2)", "init": "meta"}
    retained = compiled(box_spec(retention=f"gate({GATE}, grad=retained)", **opts))
    previous = compiled(box_spec(retention=f"gate({GATE})", **opts))
    assert rules(retained)["layer.mem"] == "memory_general"
    assert rules(previous)["layer.mem"] == "deep_memory_chunked"
    ma, mb, _ = same_model_pair(retained, previous)
    x = torch.randint(0, 40, (2, 10))
    assert (ma(x)[0] - mb(x)[0]).abs().max().item() > 1e-6


@pytest.mark.parametrize("options, message", [
    ({"retention": f"gate({GATE}, grad=retained)", "every": 4}, "not every 4 tokens"),
    ({"retention": f"gate({GATE}, grad=retained)", "optimizer": "dgd()"}, "not with dgd"),
    ({"retention": f"gate({GATE}, grad=retained)", "update": "M + 0.1 * outer(v, k)"},
     "not with an `update` rule"),
    ({"retention": "proximal(0.1)", "update": "M + 0.1 * outer(v, k)"}, "instead of an objective"),
    ({"retention": "M - 0.1 * outer(M(k), k)"}, "cannot read the memory with M(...)"),
])
def test_combinations_without_a_lowering_are_errors_at_compile_time(options, message):
    with pytest.raises(NestError) as err:
        compiled(box_spec(**options))
    text = str(err.value)
    assert "box `mem`" in text and message in text and "one_box.nest:" in text


# -- reads that put a box in a chunk loop --------------------------------------------------------

def two_reads_spec(first: str, second: str, read: str = "before") -> str:
    """A delta-rule box read twice with the same input, the two reads summed."""
    return f"""spec two_reads "a delta-rule memory read twice"
param d_model = 16
param heads   = 2
block layer {{
    box mem : memory {{
        heads     heads
        state     matrix(8, 8)
        init      zeros()
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.5 * sigmoid(linear(in, heads))
        objective l2(M(k), v)
        read      {read}
    }}
    let h = rmsnorm(x)
    let a = {first}
    let b = {second}
    x = x + linear(a + b, d_model)
}}
model {{
    dim d_model
    repeat 1 {{ layer }}
}}
"""


def test_a_delta_rule_box_read_in_a_chunk_loop_runs_the_chunk_start_rule():
    """Read twice, the box runs in a chunk loop, where every read sees the state before the
    token's update: the delta rule (a whole call at once) keeps no such states, so the box runs
    the chunk-start rule there, one token per piece. Same recurrence as one read of the delta
    rule (its state before each token), used twice."""
    assert_same_model(two_reads_spec("read_before(mem, h)", "read_before(mem, h)"), "deep_memory_chunked",
                      two_reads_spec("mem(h)", "a"), "delta_rule_chunked")


@pytest.mark.parametrize("first, second, read, message", [
    ("read_before(mem, h)", "read_after(mem, h)", "before",
     "it is read more than once (or in a cycle), so every read sees the state before"),
    ("read_after(mem, h)", "a", "before", "its `read` property is `before`"),
    ("read_before(mem, h)", "a", "after", "its `read` property is `after`"),
])
def test_a_read_the_box_cannot_give_is_an_error(first, second, read, message):
    with pytest.raises(NestError) as err:
        compiled(two_reads_spec(first, second, read))
    assert message in str(err.value) and "one_box.nest:" in str(err.value)


def test_read_after_on_a_box_that_reads_after_is_its_own_read():
    assert_same_model(two_reads_spec("read_after(mem, h)", "a", read="after"), "delta_rule_chunked",
                      two_reads_spec("mem(h)", "a", read="after"), "delta_rule_chunked")


# -- the general rule's own features ------------------------------------------------------------


def test_proximal_retention_to_a_zero_initial_state_is_weight_decay():
    """proximal(w) adds w/2 |M - M_0|² to the objective: with M_0 = 0 a GD step is
    (1 - lr w) M - lr grad, which is what weight_decay(w) keeps (the delta rule, chunked)."""
    assert_same_model(box_spec(retention="proximal(0.3)"), "memory_general",
                      box_spec(retention="weight_decay(0.3)"), "delta_rule_chunked")


def test_proximal_retention_pulls_towards_the_initial_state():
    """A matrix memory with an L2 objective, proximal(w) and a meta-learned M_0, run by the
    generated box against the rule written out here, token by token."""
    c = compiled(box_spec(retention="proximal(0.4)", init="meta", read="read after", lr="0.5"))
    box = c.model(40).double().layers[0].box_mem
    b, h, t, d = 2, 2, 6, 8
    torch.manual_seed(2)
    k = torch.nn.functional.normalize(torch.randn(b, h, t, d, dtype=torch.float64), dim=-1)
    v, q = torch.randn(b, h, t, d, dtype=torch.float64), torch.randn(b, h, t, d, dtype=torch.float64)

    def loss(W, z):  # z: one token's slice of each stream
        return ((torch.einsum("bhoi,bhti->bhto", W[0], z["k"]) - z["v"]) ** 2).sum()

    out, _ = box(box.initial_state(b), length=t, loss=loss, lr=0.5, query=q, proximal=0.4,
                 streams={"k": k, "v": v})
    M0 = box._inits()[0].detach()
    M = M0.expand(b, h, d, d)
    expected = []
    for i in range(t):
        err = torch.einsum("bhoi,bhi->bho", M, k[:, :, i]) - v[:, :, i]
        grad = 2 * err[..., :, None] * k[:, :, i, None, :] + 0.4 * (M - M0)
        M = M - 0.5 * grad
        expected.append(torch.einsum("bhoi,bhi->bho", M, q[:, :, i]))
    assert (out - torch.stack(expected, 2)).abs().max().item() < 1e-12


def test_an_objective_written_out_equals_the_built_in_one():
    """sum((M(k) - v) ** 2) as an expression (torch.func on it, chunk-parallel) against l2(M(k), v)
    (the chunked delta rule)."""
    assert_same_model(box_spec(objective="sum((M(k) - v) ** 2)"), "deep_memory_chunked",
                      box_spec(objective="l2(M(k), v)"), "delta_rule_chunked")


def test_an_update_rule_keeps_what_the_retention_keeps():
    """`update M + lr * outer(v, k)` (lr 0.1) under a gate is Hebbian linear attention with that
    gate: M <- g M + 0.1 v kᵀ, which minimising -<M(k), v> with lr 0.1 also writes (chunked). The
    per-token rule used to drop the retention of a box with an update rule."""
    assert_same_model(box_spec(update="M + lr * outer(v, k)", lr="0.1", retention=f"gate({GATE})"),
                      "memory_general",
                      box_spec(objective="-dot(M(k), v)", lr="0.1", retention=f"gate({GATE})"),
                      "linear_attn_chunked")


def test_an_update_rule_that_reads_the_memory_is_the_delta_rule():
    """`update M - 2 lr outer(M(k) - v, k)` is one GD step on |M(k) - v|², the chunked delta rule
    (the rule reads the memory at the committed state with M(k))."""
    assert_same_model(box_spec(update="M - 2 * lr * outer(M(k) - v, k)", retention=f"gate({GATE})"),
                      "memory_general",
                      box_spec(objective="l2(M(k), v)", retention=f"gate({GATE})"), "delta_rule_chunked")


def test_inner_adam_equals_torch_adam_on_the_same_objective():
    """`optimizer adam(b1, b2, eps)` on a memory updated every token: one torch.optim.Adam step
    per token on that token's objective, from the same initial state."""
    c = compiled(box_spec(optimizer="adam(0.8, 0.95, 1e-6)", init="meta", read="read after",
                          lr="0.05"))
    box = c.model(40).double().layers[0].box_mem
    t, d = 7, 8
    torch.manual_seed(3)
    k = torch.nn.functional.normalize(torch.randn(1, 1, t, d, dtype=torch.float64), dim=-1)
    v, q = torch.randn(1, 1, t, d, dtype=torch.float64), torch.randn(1, 1, t, d, dtype=torch.float64)
    box.s.heads = 1  # one head of the box, so that torch's Adam sees one matrix
    w0 = box._inits()[0][:1].detach()
    box.init_weights[0].data = w0.clone()

    def loss(W, z):
        return ((torch.einsum("bhoi,bhti->bhto", W[0], z["k"]) - z["v"]) ** 2).sum()

    out, _ = box(box.initial_state(1), length=t, loss=loss, lr=0.05, query=q, streams={"k": k, "v": v})
    W = w0[None].clone().requires_grad_()
    adam = torch.optim.Adam([W], lr=0.05, betas=(0.8, 0.95), eps=1e-6)
    expected = []
    for i in range(t):
        adam.zero_grad()
        ((torch.einsum("hoi,hi->ho", W[0], k[0, :, i]) - v[0, :, i]) ** 2).sum().backward()
        adam.step()
        expected.append(torch.einsum("hoi,hi->ho", W[0].detach(), q[0, :, i]))
    assert (out[0] - torch.stack(expected, 1)).abs().max().item() < 1e-12


def test_inner_adam_meta_gradients_are_finite_where_gradients_are_exactly_zero():
    """A ReLU memory behind a zero-initialised layer: some inner gradients are exactly 0, so
    Adam's second moment is too, and the outer backward through its square root gave NaN."""
    c = compiled(box_spec(state="mlp(d_head, depth=2, expansion=2, act=relu, residual=false)",
                          optimizer="adam(0.9, 0.99, 1e-6)", init="zeros()"))
    torch.manual_seed(0)
    model = c.model(40)
    x, y = torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8))
    loss, grads = loss_and_grads(model, x, y)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


def test_root_is_sqrt_with_a_zero_gradient_at_zero():
    x = torch.tensor([0.0, 1e-30, 0.25, 4.0], dtype=torch.float64, requires_grad=True)
    y = mem._root(x)
    assert torch.equal(y.detach(), torch.sqrt(x.detach()))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g[0] == 0
    assert torch.allclose(g[1:], 0.5 / torch.sqrt(x.detach()[1:]))


# Self-generated values (NL Eq. 84) of expressions, against the same values written with lets.
# The general rule cannot run self-generated values, so the reference is the form that already
# compiled: a block-level `let` for each part free of M. (value expression, the same with lets,
# the lets, state, every, optimizer, parameter names of the first -> those of the second where
# they differ)
RENAMED_NORM = {"layers.0.x_norm.weight": "layers.0.h_norm.weight"}
SELF_VALUES = [
    # a matrix memory updated every token went to the delta rule, which takes its values as a
    # stream: internal error (KeyError 'v'), in both forms
    ("tanh(M(in)) - linear(in, d_model)", "tanh(M(h)) - p", "let p = linear(h, d_model)",
     "matrix(d_head, d_head)", 1, None,
     {**RENAMED_NORM, "layers.0.mem_values_part0_linear.weight": "layers.0.p_linear.weight"}),
    # M(linear(...)) reached the per-head code with `linear` in it: internal error ("`linear`
    # has no lowering inside a box")
    ("M(linear(in, d_model))", "M(p)", "let p = linear(h, d_model)",
     "mlp(d_head, depth=2, expansion=2)", 2, "dgd()",
     {**RENAMED_NORM, "layers.0.mem_values_part0_linear.weight": "layers.0.p_linear.weight"}),
    ("stop_grad(M(rmsnorm(in))) + silu(linear(in, d_model))", "stop_grad(M(r)) + silu(p)",
     "let r = rmsnorm(h)\n    let p = linear(h, d_model)", "mlp(d_head, depth=2, expansion=2, act=tanh)",
     3, "momentum(0.5)",
     {**RENAMED_NORM, "layers.0.mem_values_part0_norm.weight": "layers.0.r_norm.weight",
      "layers.0.mem_values_part1_linear.weight": "layers.0.p_linear.weight"}),
]


@pytest.mark.parametrize("case", SELF_VALUES, ids=[c[0] for c in SELF_VALUES])
def test_self_generated_values_of_expressions_equal_the_same_with_lets(case):
    values, with_lets, lets, state, every, optimizer, renamed = case
    options = {"state": state, "init": "meta" if state.startswith("mlp") else "random(std=0.3)", "every": every,
               "optimizer": optimizer}
    inline = box_spec(values=values, **options)
    read = "    x = x + linear(mem(rmsnorm(x)), d_model)"
    assert read in inline
    named = box_spec(values=with_lets, **options).replace(
        read, f"    let h = rmsnorm(x)\n    {lets}\n    x = x + linear(mem(h), d_model)")
    a, b = compiled(inline), compiled(named)
    assert rules(a)["layer.mem"] == rules(b)["layer.mem"] == "deep_memory_chunked"
    torch.manual_seed(0)
    ma, mb = a.model(40).double(), b.model(40).double()
    sa = ma.state_dict()
    assert {renamed.get(k, k) for k in sa} == set(mb.state_dict())
    mb.load_state_dict({renamed.get(k, k): v for k, v in sa.items()})
    assert_same_training_signal(ma, mb, [(n, renamed.get(n, n)) for n, _ in ma.named_parameters()])
