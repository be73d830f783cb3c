"""Self-generated values v̂ = M(e) (NL Eq. 84) given to a deep memory as `SelfValues(e)`: the
memory reads e in the same products as its keys (`mlp_forward`'s extra tokens) instead of through
a function of the weights. The reference is that function (`memory.apply(W, e[:, :, s:e])`, the
form every other `values` expression still takes), which the DGD conformance suite checks against
a token-by-token loop: same reads, same final state, same gradients."""

from textwrap import dedent

import pytest
import torch

import nestc
from nestc.runtime.memory import DeepMemory, MemorySettings, MLPShape, SelfValues, mlp_forward, objective_grad

F64 = torch.float64


def test_extra_tokens_go_through_the_keys_products_with_the_same_results():
    torch.manual_seed(0)
    shape = MLPShape((6, 12, 6), "silu", True)
    weights = [torch.randn(2, 3, 12, 6, dtype=F64, requires_grad=True),
               torch.randn(2, 3, 6, 12, dtype=F64, requires_grad=True)]
    x, y, z = (torch.randn(2, 3, n, 6, dtype=F64, requires_grad=True) for n in (4, 5, 3))
    alone = [mlp_forward(shape, weights, t) for t in (x, y, z)]
    pred, acts, pres, (out_y, out_z) = mlp_forward(shape, weights, x, (y, z))
    torch.testing.assert_close(pred, alone[0][0], rtol=0, atol=1e-13)
    for mine, ref in zip(acts + pres, alone[0][1] + alone[0][2]):
        assert mine.shape == ref.shape
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(out_y, alone[1][0], rtol=0, atol=1e-13)
    torch.testing.assert_close(out_z, alone[2][0], rtol=0, atol=1e-13)
    probe = [torch.randn_like(t) for t in (pred, out_y, out_z)]
    fused = torch.autograd.grad(sum((a * p).sum() for a, p in zip((pred, out_y, out_z), probe)),
                                [*weights, x, y, z])
    ref = torch.autograd.grad(sum((a[0] * p).sum() for a, p in zip(alone, probe)), [*weights, x, y, z])
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


CASES = [  # (optimizer, form, grad_state)
    ("dgd", "state", "chunk_start"),
    ("gd", "state", "chunk_start"),
    ("gd", "dual", "chunk_start"),
    ("momentum", "state", "chunk_start"),
    ("gd", "state", "call_start"),
]


@pytest.mark.parametrize("optimizer,form,grad_state", CASES)
@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize("query", ["separate", "keys", "none"])
def test_self_values_equal_the_function_of_the_weights(optimizer, form, grad_state, stop, query):
    torch.manual_seed(1)
    settings = MemorySettings(heads=2, shape=MLPShape((6, 12, 6), "silu", True), period=4,
                              optimizer=optimizer, form=form, grad_state=grad_state)
    memory = DeepMemory(settings).double()
    # the dual and the call-start forms take whole chunks only; otherwise three whole chunks and
    # a partial one, which stays open
    B, H, T = 2, 2, (12 if form == "dual" or grad_state == "call_start" else 14)
    keys = torch.randn(B, H, T, 6, dtype=F64, requires_grad=True)
    values_in = torch.randn(B, H, T, 6, dtype=F64, requires_grad=True)
    lr = (0.2 * torch.rand(B, H, T, dtype=F64)).requires_grad_()
    gate = torch.sigmoid(torch.randn(B, H, T, dtype=F64) + 2).requires_grad_()
    beta = torch.full((B, H, T), 0.8, dtype=F64) if optimizer == "momentum" else None
    grad = objective_grad("l2", 1.0)

    def function(W, s, e):
        out = memory.apply(W, values_in[:, :, s:e])
        return out.detach() if stop else out

    inputs = [keys, values_in, lr, gate, *memory.parameters()]
    results = []
    for target in (function, SelfValues(values_in, stop)):
        q = {"separate": keys * 0.5, "keys": keys, "none": None}[query]
        out, state = memory(memory.initial_state(B), keys=keys, target=target, lr=lr, gate=gate, beta=beta,
                            query=q, out_grad=lambda p, t, s, e: grad(p, t))
        loss = (out.square().sum() if out is not None else 0) + sum(m.square().sum() for m in state["M"])
        results.append((out, state, torch.autograd.grad(loss, inputs, allow_unused=True)))
    (o1, s1, g1), (o2, s2, g2) = results
    if query == "none":
        assert o1 is None and o2 is None
    else:
        torch.testing.assert_close(o2, o1, rtol=1e-11, atol=1e-12)
    for a, b in zip(s2["M"] + s2["W"], s1["M"] + s1["W"]):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    assert (s2["offset"], s2["pos"]) == (s1["offset"], s1["pos"]) == (T % 4, T)
    if T % 4:
        assert (s2["M"][1] - s2["W"][1]).abs().max() > 1e-4  # the open chunk moved the running state
    for i, (a, b) in enumerate(zip(g2, g1)):
        if i == 1 and stop:  # no gradient reaches the values' inputs through a stopped target
            # (the fused form reads them in the keys' products, so it returns zeros, not None)
            assert b is None and a is not None and a.abs().max() == 0
            continue
        assert b.abs().max() > 0, i
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _generated(spec_text: str, tmp_path, overrides=None) -> str:
    path = tmp_path / "spec.nest"
    path.write_text(dedent(spec_text))
    return nestc.compile(path, overrides or {}).source


def test_codegen_gives_values_of_the_form_M_e_as_self_values(tmp_path):
    through = nestc.compile("hope").source
    stopped = nestc.compile("hope", {"value_grad": '"stop"'}).source
    for source, stop in ((through, False), (stopped, True)):
        # the stacked k/v/eta/alpha memories and the main memory
        assert source.count("target=mem.SelfValues(") == 2
        assert source.count(f"stop={stop})") == 2
        assert "_target(W, s, e)" not in source
    # any other expression of M stays a function of the weights and the span
    other = _generated("""
        spec other "self-generated values of another form"
        block layer {
            box mem : memory {
                state     mlp(8, expansion=2, act="silu", residual=true)
                keys      k
                values    0.5 * M(v)
                objective l2(M(k), v)
                optimizer gd
                every     4 tokens
            }
            let k = linear(x, 8)
            let v = linear(x, 8)
            x = x + mem(k)
        }
        model {
            dim 8
            repeat 1 { layer }
        }
        """, tmp_path)
    assert "SelfValues" not in other and "def mem_target(W, s, e):" in other


@pytest.mark.slow
def test_scan_mode_hope_with_three_memory_chunks_equals_eager():
    """Loop mode "scan" once gave every chunk of Hope's main memory the first chunk's
    self-generated values (a function of the span called with (0, C) inside the scan): with three
    or more chunks in a call, the compiled loss differed from eager (5.56996 against 5.56796 in
    the shrunk Hope, CMS chunks 2/4/8). The values now come as `SelfValues`, which the scan cuts
    into chunks, and a target that is still a function keeps the plain loop. The CMS levels'
    chunks are longer here (their loops, unrolled, are most of the compile)."""
    import nestc
    from small_models import SHRINK, SMALL

    from nestc.runtime.ops import set_loop_mode
    from nestc.runtime.train import forward_loss

    set_loop_mode("scan")
    try:
        torch._dynamo.reset()
        torch.manual_seed(0)
        cms = {"c_fast": "8", "c_mid": "16", "c_slow": "32"}
        model = nestc.compile("hope", {**SMALL, **SHRINK["hope"], **cms}).model()  # c_memory 8: four chunks in 32 tokens
        x = torch.randint(0, 256, (2, 32))
        y = torch.randint(0, 256, (2, 32))
        lss = {k: torch.randn(2, 32, w) * 1e-2 for k, w in model.lss_sites()}
        eager = forward_loss(model, x, y, lss)
        compiled = torch.compile(lambda a, b, s: forward_loss(model, a, b, s), fullgraph=True)(x, y, lss)
    finally:
        set_loop_mode("unroll")
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=2e-6, atol=2e-6)
