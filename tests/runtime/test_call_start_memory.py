"""`grad_state call_start`: every inner gradient of a call at the state the call began with. The
all-chunks-at-once form (`DeepMemory._parallel`) against the chunk loop of `DeepMemory.forward`
with the same gradient state, for plain GD (with and without retention), momentum, stop-gradient
writes, self-generated targets and MLP shapes the Titans conformance test does not cover. The
chunk loop itself is checked against a token-by-token reference in
tests/conformance/test_conf_titans.py."""

import pytest
import torch

from nestc.runtime.memory import DeepMemory, MemorySettings, MLPShape, objective_grad


def _run(memory, parallel, x, query, target, lr, gate, beta):
    memory._can_parallel = (lambda state, T: DeepMemory._can_parallel(memory, state, T)) if parallel \
        else (lambda state, T: False)
    grad = objective_grad("l2", 1.0)
    state = memory.initial_state(x.shape[0])
    return memory(state, keys=x, target=target, lr=lr, gate=gate, beta=beta, query=query,
                  out_grad=lambda p, t, s, e: grad(p, t))


@pytest.mark.parametrize("optimizer,gated", [("gd", False), ("gd", True), ("momentum", True)])
@pytest.mark.parametrize("dims,act,residual", [((6, 12, 6), "gelu", True), ((5, 7), "none", False),
                                               ((4, 6, 6, 4), "tanh", False)])
@pytest.mark.parametrize("stop", [False, True])
def test_parallel_form_equals_the_chunk_loop(optimizer, gated, dims, act, residual, stop):
    torch.manual_seed(0)
    settings = MemorySettings(heads=2, shape=MLPShape(dims, act, residual), period=3, optimizer=optimizer,
                              grad_state="call_start", grad="stop" if stop else "through")
    memory = DeepMemory(settings).double()
    B, H, T = 2, 2, 12
    x = torch.randn(B, H, T, dims[0], dtype=torch.float64, requires_grad=True)
    query = torch.randn(B, H, T, dims[0], dtype=torch.float64, requires_grad=True)
    target = torch.randn(B, H, T, dims[-1], dtype=torch.float64, requires_grad=True)
    lr = (0.2 * torch.rand(B, H, T, dtype=torch.float64)).requires_grad_()
    gate = torch.sigmoid(torch.randn(B, H, T, dtype=torch.float64) + 2).requires_grad_() if gated else None
    beta = torch.sigmoid(torch.randn(B, H, T, dtype=torch.float64)).requires_grad_() \
        if optimizer == "momentum" else None
    inputs = [x, query, target, lr, *memory.parameters()] + [g for g in (gate, beta) if g is not None]
    results = []
    for parallel in (True, False):
        out, state = _run(memory, parallel, x, query, target, lr, gate, beta)
        loss = out.pow(2).sum() + sum(w.pow(2).sum() for w in state["W"])
        results.append((out, state, torch.autograd.grad(loss, inputs, allow_unused=True)))
    (o1, s1, g1), (o2, s2, g2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-12)
    for key in ("W", "M") + (("S",) if optimizer == "momentum" else ()):
        for a, b in zip(s1[key], s2[key]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert (s1["offset"], s1["pos"]) == (s2["offset"], s2["pos"]) == (0, T)
    for a, b in zip(g1, g2):
        if a is None or b is None:  # an input read in the same products as a used one gets zeros
            assert all(g is None or g.abs().max() == 0 for g in (a, b))
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_self_generated_targets_are_generated_at_the_call_start():
    """A target callable (self-generated values, `values M(e)`) gets the call's starting weights
    for the whole call, in both forms."""
    torch.manual_seed(2)
    memory = DeepMemory(MemorySettings(heads=1, shape=MLPShape((4, 8, 4), "gelu", True), period=2,
                                       grad_state="call_start")).double()
    x = torch.randn(2, 1, 8, 4, dtype=torch.float64)
    seen = []

    def target(weights, s, e):
        seen.append(weights)
        return x[:, :, s:e].flip(-1)

    outs = []
    for parallel in (True, False):
        seen.clear()
        outs.append(_run(memory, parallel, x, x * 1.0, target, 0.1, None, None))
        w0 = memory.initial_state(2)["W"]
        assert seen and all(all(torch.equal(a, b) for a, b in zip(w, w0)) for w in seen)
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)


def test_a_partial_call_and_a_flush_take_the_chunk_loop():
    memory = DeepMemory(MemorySettings(heads=1, shape=MLPShape((4, 4), "identity"), period=4,
                                       grad_state="call_start"))
    state = memory.initial_state(1)
    assert memory._can_parallel(state, 8)
    assert not memory._can_parallel(state, 6)  # not whole chunks
    assert not memory._can_parallel(dict(state, offset=2), 8)  # not from a chunk boundary
    memory.s.optimizer = "dgd"
    assert not memory._can_parallel(state, 8)
