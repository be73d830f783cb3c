"""Every built-in model runs under bfloat16 autocast (the usual mixed precision: products in
bf16, everything else as it was): the two-pass loss and its backward run, every gradient and
every learned memory state stays float32, and the gradients stay within bf16 rounding of the float32
ones. DeltaNet's triangular solve used to fail here (the CPU has no bf16 solve)."""

from __future__ import annotations

import pytest
import torch

from nestc.runtime.context import Ctx

from small_models import MODEL_SPECS, loss_and_grads, small


def memory_tensors(tree, inside=False):
    """The tensors of learned memory states (a memory's weights `W`/`M`, a matrix memory's `S`,
    their momentum); attention's key/value caches and convolution histories hold activations,
    which autocast may keep in bf16 as any mixed-precision model does."""
    if torch.is_tensor(tree):
        if inside:
            yield tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from memory_tensors(v, inside or k in ("W", "M", "S"))
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from memory_tensors(v, inside)


@pytest.mark.parametrize("name", MODEL_SPECS)
def test_bf16_autocast_keeps_float32_state_and_close_gradients(name):
    torch.manual_seed(0)
    model = small(name).model()
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, 256, (2, 32), generator=g) for _ in range(2))
    _, ref = loss_and_grads(model, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(model, x, y)
        lss = {k: torch.zeros(2, 32, w) for k, w in model.lss_sites()}
        with torch.no_grad():
            _, state = model(x, ctx=Ctx(lss=lss))
    assert torch.isfinite(loss)
    memories = list(memory_tensors(state))
    assert all(t.dtype == torch.float32 for t in memories), {t.dtype for t in memories}
    pairs = [(a, b) for a, b in zip(grads, ref) if b is not None]
    assert all(a is not None and a.dtype == torch.float32 for a, _ in pairs)
    err = sum(float((a.double() - b.double()).norm()) ** 2 for a, b in pairs) ** 0.5
    scale = sum(float(b.double().norm()) ** 2 for _, b in pairs) ** 0.5
    # measured at most 1e-2 over the built-ins; bf16 rounds at 2^-9 (about 2e-3) per product
    assert err / scale < 3e-2, err / scale
