"""runtime/autograd_cache.py: AOTAutograd's cache must keep a graph that reads a memory's state
through `_StateTimes` (an autograd.Function), and a process that finds it there must compute what
the first one did, forward and backward. Without the setting torch bypasses its cache for such a
graph, which the second test shows (so the first can fail)."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters
from torch._inductor.utils import fresh_cache

from nestc.runtime import autograd_cache
from nestc.runtime.memory import _StateTimes


def _read_and_loss(x, w, r):
    # a compiled memory's read of its state, then something element-wise after it
    return (torch.nn.functional.gelu(_StateTimes.apply(x, w)) * r).sum()


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 16, generator=g, requires_grad=True)   # [B, H, N, in]
    w = torch.randn(2, 3, 32, 16, generator=g, requires_grad=True)  # [B, H, out, in]
    r = torch.randn(2, 3, 8, 32, generator=g)
    return x, w, r


def _compile_and_run():
    """A fresh dynamo (so the function is traced and compiled again), run forward and backward;
    returns (loss, its gradients, AOTAutograd's cache counters of this compile)."""
    torch._dynamo.reset()
    before = dict(counters["aot_autograd"])
    x, w, r = _inputs()
    loss = torch.compile(_read_and_loss, fullgraph=True)(x, w, r)
    grads = torch.autograd.grad(loss, [x, w])
    after = counters["aot_autograd"]
    events = {k: after[k] - before.get(k, 0) for k in after
              if k.startswith("autograd_cache") and after[k] != before.get(k, 0)}
    return loss.detach(), grads, events


def test_a_graph_with_state_times_is_cached_and_a_hit_computes_the_same():
    assert autograd_cache.allow_custom_functions()  # on for the whole session (tests/conftest.py)
    with fresh_cache():
        loss, grads, first = _compile_and_run()
        assert first.get("autograd_cache_miss") == 1 and first.get("autograd_cache_saved") == 1, first
        loss_again, grads_again, second = _compile_and_run()
    assert second == {"autograd_cache_hit": 1}, second
    assert torch.equal(loss, loss_again)
    for a, b in zip(grads, grads_again):
        assert torch.equal(a, b)
    x, w, r = _inputs()  # and both are eager's
    eager = torch.autograd.grad(_read_and_loss(x, w, r), [x, w])
    for a, b in zip(grads, eager):
        torch.testing.assert_close(a, b)


def test_without_the_setting_torch_bypasses_its_cache_for_such_a_graph():
    autograd_cache.restore()
    try:
        assert not torch._functorch.config.autograd_cache_allow_custom_autograd_functions
        with fresh_cache():
            _, _, first = _compile_and_run()
            _, _, second = _compile_and_run()
    finally:
        assert autograd_cache.allow_custom_functions()
    assert first.get("autograd_cache_bypass") == 1 and "autograd_cache_saved" not in first, first
    assert "autograd_cache_hit" not in second, second
