"""No tensor is made on the CPU behind a model's back: every built-in model, moved to the meta
device, runs its two-pass training loss, the backward, and a streaming call that carries its
state, with no CPU tensor meeting a meta one (torch refuses that mix, as CUDA does). A stray
`torch.zeros(...)` without a device is how Titans MAC first broke on a GPU; this finds such a
tensor on a machine without one. (tests/gpu runs the real thing where there is a GPU.)"""

from __future__ import annotations

import pytest
import torch

from nestc.runtime.context import Ctx
from nestc.runtime.train import make_loss_fns, signals

from small_models import MODEL_SPECS, small

META = torch.device("meta")


@pytest.mark.parametrize("name", MODEL_SPECS)
def test_a_model_on_another_device_makes_no_cpu_tensors(name):
    model = small(name).model().to(META)
    x = torch.zeros(2, 32, dtype=torch.long, device=META)
    fns = make_loss_fns(model)
    loss = fns.main(x, x, signals(model, fns, x, x))
    loss.backward()
    assert loss.device == META
    assert all(p.grad is None or p.grad.device == META for p in model.parameters())
    # streaming: a second call continues from the first call's state (caches, memories)
    lss = {k: torch.zeros(2, 13, w, device=META) for k, w in model.lss_sites()}
    with torch.no_grad():
        _, state = model(x[:, :13], ctx=Ctx(lss=lss))
        logits, _ = model(x[:, 13:26], state, Ctx(lss=lss))
    assert logits.device == META
