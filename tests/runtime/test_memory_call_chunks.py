"""A deep memory's own chunk loop in loop mode "call" (`DeepMemory._call_chunks`): under
torch.compile a call of whole chunks runs between graphs, each chunk a call of one compiled
step, as a block's chunk loop does in that mode. The reference is the eager per-chunk loop of
`DeepMemory.forward` (which the conformance suite checks against token-by-token references):
same reads, same final state, same gradients for every input, for plain GD (the CMS levels'
dot objective), momentum, and DGD with self-generated values (Hope's main memory). The step is
compiled once for every chunk, memory and call; an objective gradient that reads other streams
at the chunk's span keeps the unrolled loop. In float64, so that a difference is a bug, not
rounding (the loss below weighs the states' entries up to gradients of ~1e3)."""

import pytest
import torch

from nestc.runtime import ops as R
from nestc.runtime.memory import DeepMemory, MemorySettings, MLPShape, SelfValues

B, H, T, C = 2, 2, 16, 4


def l2_grad(p, t, s, e):  # as the code generator writes it: no closure, the span unused
    return 2.0 * (p - t)


def dot_grad(p, t, s, e):
    return (1.0 * t).expand_as(p)


CASES = {  # name: (settings, objective gradient, self-generated values, gate, momentum)
    "gd_dot": (dict(shape=MLPShape((6, 12, 6), "gelu", False), optimizer="gd"), dot_grad, False, False, False),
    "gd_l2_gated": (dict(shape=MLPShape((6, 12, 6), "silu", True), optimizer="gd"), l2_grad, False, True, False),
    "momentum": (dict(shape=MLPShape((6, 12, 6), "silu", True), optimizer="momentum"), l2_grad, False, True, True),
    "dgd_self_values": (dict(shape=MLPShape((6, 12, 6), "silu", True), optimizer="dgd"), l2_grad, True, True, False),
}


@pytest.fixture
def call_mode(request):
    request.addfinalizer(lambda: R.set_loop_mode("unroll"))


def _collected_call_mode() -> list:
    """Loop mode "call" from a fresh dynamo state, its bodies' graphs collected in the list
    returned (run as traced, without inductor)."""
    torch._dynamo.reset()
    steps = []

    def backend(gm, inputs):
        steps.append(gm)
        return gm.forward

    R.set_loop_mode("call", {"backend": backend})
    return steps


def _inputs(case, seed=0):
    settings, _, self_values, gated, momentum = CASES[case]
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    d_in, d_out = settings["shape"].dims[0], settings["shape"].dims[-1]
    keys = torch.nn.functional.normalize(torch.randn(B, H, T, d_in, **f64), dim=-1).requires_grad_()
    target = torch.randn(B, H, T, d_in if self_values else d_out, **f64).requires_grad_()
    query = torch.randn(B, H, T, d_in, **f64).requires_grad_()
    lr = (0.2 * torch.rand(B, H, T, **f64)).requires_grad_()
    gate = torch.sigmoid(3 + torch.randn(B, H, T, **f64)).requires_grad_() if gated else None
    beta = torch.sigmoid(torch.randn(B, H, T, **f64)).requires_grad_() if momentum else None
    return keys, target, query, lr, gate, beta


def _memory(case):
    torch.manual_seed(0)
    settings = CASES[case][0]
    return DeepMemory(MemorySettings(heads=H, period=C, name=f"m_{case}", **settings)).double()


def _run(memory, case, keys, target, query, lr, gate, beta, shared_query=False):
    grad, self_values = CASES[case][1], CASES[case][2]
    tgt = SelfValues(target) if self_values else target
    q = keys if shared_query else query
    out, state = memory(memory.initial_state(B), keys=keys, target=tgt, lr=lr, gate=gate, beta=beta,
                        query=q, out_grad=grad)
    return out, state


def _loss(out, state):
    # the reads and the final state both reach the loss, as in training (later calls read it)
    return out.square().sum() + sum((m * torch.cos(torch.arange(m.numel(), dtype=m.dtype).reshape(m.shape))).sum()
                                    for m in state["M"])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("shared_query", [False, True])
def test_call_chunks_equal_the_eager_loop_forward_and_backward(case, shared_query, call_mode):
    memory = _memory(case)
    args = _inputs(case)
    leaves = [a for a in args if a is not None] + list(memory.parameters())
    out, state = _run(memory, case, *args, shared_query=shared_query)
    ref = torch.autograd.grad(_loss(out, state), leaves, allow_unused=True)

    torch._dynamo.reset()
    R.set_loop_mode("call", {"backend": "aot_eager"})
    fn = torch.compile(lambda *a: _run(memory, case, *a, shared_query=shared_query), backend="aot_eager")
    c_out, c_state = fn(*args)
    assert c_state["pos"] == T and c_state["offset"] == 0 and c_state["W"] is c_state["M"]
    torch.testing.assert_close(c_out, out, rtol=1e-10, atol=1e-12)
    for a, b in zip(c_state["M"], state["M"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    got = torch.autograd.grad(_loss(c_out, c_state), leaves, allow_unused=True)
    for i, (a, b) in enumerate(zip(got, ref)):
        assert (a is None) == (b is None), i
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_the_chunk_step_compiles_once_for_every_chunk_memory_and_call(call_mode):
    """Four chunks, two memories of one box (two layers), two calls: one compiled step. Its first
    chunk gets the broadcast initial state, and would compile a variant of its own unless the
    loop gives it the layout and requires_grad of the later ones."""
    steps = _collected_call_mode()
    memories = [_memory("dgd_self_values"), _memory("dgd_self_values")]
    fn = torch.compile(lambda m, *a: _run(m, "dgd_self_values", *a), backend="eager")
    for seed in range(2):
        for memory in memories:
            out, state = fn(memory, *_inputs("dgd_self_values", seed))
            _loss(out, state).backward()
    assert len(steps) == 1
    assert len(R._COMPILED_BODIES[DeepMemory]) == 1


def test_a_gradient_that_reads_the_span_keeps_the_unrolled_loop(call_mode):
    """An objective gradient that reads another stream at the chunk's span (a closure, as the
    code generator writes one) cannot be told the span inside one compiled step: the loop
    stays in the caller's graph, and still equals eager."""
    steps = _collected_call_mode()
    memory = _memory("gd_dot")
    keys, target, query, lr, gate, beta = _inputs("gd_dot")
    weight = torch.rand(B, H, T, 1, dtype=torch.float64)

    def run(k, t, q, r):
        def weighted_grad(p, t_, s, e):
            return weight[:, :, s:e] * (p - t_)

        return memory(memory.initial_state(B), keys=k, target=t, lr=r, gate=None, beta=None,
                      query=q, out_grad=weighted_grad)

    out, state = run(keys, target, query, lr)
    c_out, c_state = torch.compile(run, backend="eager")(keys, target, query, lr)
    torch.testing.assert_close(c_out, out)
    assert steps == [] and DeepMemory not in R._COMPILED_BODIES
