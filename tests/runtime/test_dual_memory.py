"""Plain-GD deep memories read their chunk-start weights through the past tokens' updates instead
of writing a new state every chunk (the dual form of rule deep_memory_chunked: `DeepMemory._dual`,
`PendingUpdates`). The reference is the state form, which the conformance suite checks against
token-by-token references: same reads, same final state, same gradients for every input."""

import pytest
import torch

from nestc.runtime.memory import DeepMemory, MemorySettings, MLPShape, objective_grad

CASES = [  # (activation, layer widths, residual)
    ("gelu", (8, 16, 8), False),
    ("silu", (6, 12, 6), True),
    ("none", (5, 7), False),
    ("tanh", (4, 6, 6, 4), False),
]


def _run(memory, form, x, query, target, lr, gate, stop=False):
    memory.s.form = form
    memory.s.grad = "stop" if stop else "through"
    grad = objective_grad("l2", 1.0)
    out, state = memory(memory.initial_state(x.shape[0]), keys=x, target=target, lr=lr, gate=gate,
                        query=query, out_grad=lambda p, t, s, e: grad(p, t))
    return out, state


@pytest.mark.parametrize("act,dims,residual", CASES)
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("shared_query", [False, True])
def test_dual_form_equals_the_state_form(act, dims, residual, gated, shared_query):
    torch.manual_seed(0)
    memory = DeepMemory(MemorySettings(heads=2, shape=MLPShape(dims, act, residual), period=4)).double()
    B, H, T = 3, 2, 12
    x = torch.randn(B, H, T, dims[0], dtype=torch.float64, requires_grad=True)
    target = torch.randn(B, H, T, dims[-1], dtype=torch.float64, requires_grad=True)
    lr = (0.1 * torch.rand(B, H, T, dtype=torch.float64)).requires_grad_()
    gate = torch.sigmoid(torch.randn(B, H, T, dtype=torch.float64)).requires_grad_() if gated else None
    inputs = [x, target, lr, *memory.parameters()] + ([gate] if gated else [])
    results = {}
    for form in ("state", "dual"):
        # the state form reads a separate query tensor; the dual form may share the keys' forward
        query = x if (shared_query and form == "dual") else x * 1.0
        out, state = _run(memory, form, x, query, target, lr, gate)
        loss = out.pow(2).sum() + sum(w.pow(2).sum() for w in state["W"])
        results[form] = (out, state, torch.autograd.grad(loss, inputs))
    (o1, s1, g1), (o2, s2, g2) = results["state"], results["dual"]
    torch.testing.assert_close(o2, o1, rtol=1e-10, atol=1e-12)
    for a, b in zip(s2["W"], s1["W"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert (s2["offset"], s2["pos"]) == (s1["offset"], s1["pos"]) == (0, T)
    for a, b in zip(g2, g1):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_stop_gradient_writes_match_too():
    torch.manual_seed(1)
    memory = DeepMemory(MemorySettings(heads=1, shape=MLPShape((6, 12, 6), "gelu"), period=3)).double()
    x = torch.randn(2, 1, 9, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 1, 9, 6, dtype=torch.float64)
    grads = []
    for form in ("state", "dual"):
        out, _ = _run(memory, form, x, x, target, 0.2, None, stop=True)
        grads.append(torch.autograd.grad(out.sum(), [x, *memory.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _memory(optimizer="gd", dims=(256, 1024, 256), period=16, **kw):
    return DeepMemory(MemorySettings(heads=1, shape=MLPShape(dims), period=period, optimizer=optimizer, **kw))


def test_auto_takes_the_dual_form_only_where_it_is_cheaper_and_applies():
    m = _memory()
    fresh = m.initial_state(1)
    # CMS at its default width: T (256 + 1024) <= 2 * 256 * 1024 up to T = 409
    assert m._can_dual(fresh, 128) and m._can_dual(fresh, 400)
    assert not m._can_dual(fresh, 416)  # a long sequence: its history outweighs the state
    assert not m._can_dual(fresh, 120)  # not whole chunks
    assert not m._can_dual(dict(fresh, offset=3), 128)  # not from a chunk boundary
    assert not m._can_dual(fresh, 16)  # one chunk: nothing to save
    for other in (_memory("momentum"), _memory("dgd"), _memory(read="after"), _memory(reset=32)):
        assert not other._can_dual(other.initial_state(1), 128)
    forced = _memory(form="dual")
    assert forced._can_dual(forced.initial_state(1), 1024)
    m.s.form = "state"
    assert not m._can_dual(fresh, 128)


def test_streaming_after_a_dual_call_continues_the_same_memory():
    """A dual call's materialised final state is what the next call (any form) starts from."""
    torch.manual_seed(2)
    memory = DeepMemory(MemorySettings(heads=2, shape=MLPShape((4, 8, 4), "gelu"), period=4)).double()
    x = torch.randn(2, 2, 19, 4, dtype=torch.float64)
    target = torch.randn(2, 2, 19, 4, dtype=torch.float64)
    grad = objective_grad("l2", 1.0)

    def call(state, s, e, form):
        memory.s.form = form
        # lr 0.1: at 0.3 the memory diverged on these unnormalised keys (reads of 1.5e17 by the
        # last chunk), and the comparison was between two blown-up states; at 0.1 reads stay <= 1
        return memory(state, keys=x[:, :, s:e], target=target[:, :, s:e], lr=0.1, gate=0.9,
                      query=x[:, :, s:e], out_grad=lambda p, t, a, b: grad(p, t))

    whole, _ = call(memory.initial_state(2), 0, 19, "state")
    first, state = call(memory.initial_state(2), 0, 12, "dual")  # whole chunks: dual
    rest, _ = call(state, 12, 19, "auto")  # a partial chunk: the state form
    torch.testing.assert_close(torch.cat([first, rest], dim=2), whole, rtol=1e-10, atol=1e-12)


def test_the_cms_spec_trains_the_same_in_either_form():
    """The built-in CMS at a small size: loss and every parameter's gradient of the two-pass step."""
    from small_models import loss_and_grads, small

    torch.manual_seed(0)
    model = small("cms").model().double()
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    memories = [m for m in model.modules() if isinstance(m, DeepMemory)]
    assert memories
    results = []
    for form in ("state", "dual"):
        for m in memories:
            m.s.form = form
        results.append(loss_and_grads(model, x, y))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l2, l1, rtol=1e-12, atol=0)
    for a, b in zip(g2, g1):
        if a is None:
            assert b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_self_generated_values_read_the_pending_weights():
    """Values M(v) at the chunk-start state (NL Eq. 84) go through the same weights object, so a
    target callable sees the dual form's weights exactly as the state form's."""
    torch.manual_seed(3)
    memory = DeepMemory(MemorySettings(heads=2, shape=MLPShape((6, 12, 6), "silu", True), period=3)).double()
    x = torch.randn(2, 2, 9, 6, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 9, 6, dtype=torch.float64, requires_grad=True)
    gate = torch.sigmoid(torch.randn(2, 2, 9, dtype=torch.float64))
    grad = objective_grad("l2", 1.0)
    results = []
    for form in ("state", "dual"):
        memory.s.form = form
        out, state = memory(memory.initial_state(2), keys=x, target=lambda W, s, e: memory.apply(W, v[:, :, s:e]),
                            lr=0.1, gate=gate, query=x * 1.0, out_grad=lambda p, t, s, e: grad(p, t))
        loss = out.pow(2).sum() + sum(w.pow(2).sum() for w in state["W"])
        results.append((out, torch.autograd.grad(loss, [x, v, *memory.parameters()])))
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o2, o1, rtol=1e-10, atol=1e-12)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
