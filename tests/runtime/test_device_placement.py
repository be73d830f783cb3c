"""No tensor is made on the CPU behind a model's back: every built-in model, moved to the meta
device, runs its two-pass training loss, the backward, and a streaming call that carries its
state, with no CPU tensor meeting a meta one (torch refuses that mix, as CUDA does). A stray
`torch.zeros(...)` without a device is how Titans MAC first broke on a GPU; this finds such a
tensor on a machine without one. (tests/gpu runs the real thing where there is a GPU.)"""

from __future__ import annotations

import pytest
import torch

import nestc
from nestc.loader import builtin_names
from nestc.runtime.context import Ctx
from nestc.runtime.train import make_loss_fns, signals

SMALL = {"n_layers": "1", "d_model": "32", "heads": "2"}
SHRINK = {"titans": {"chunk": "4"}, "titans_mac": {"chunk": "4"},
          "titans_mag": {"chunk": "4", "window": "6"}, "titans_mal": {"chunk": "4", "window": "6"},
          "hope": {"c_fast": "2", "c_mid": "4", "c_slow": "8", "c_memory": "8", "c_other": "4"}}
for cms_like in ("cms", "cms_nested", "cms_independent", "hope_attention"):
    SHRINK[cms_like] = {"c_fast": "2", "c_mid": "4", "c_slow": "8"}
MODELS = sorted(n for n in builtin_names() if nestc.compile(n).program.layers)
META = torch.device("meta")


@pytest.mark.parametrize("name", MODELS)
def test_a_model_on_another_device_makes_no_cpu_tensors(name):
    model = nestc.compile(name, {**SMALL, **SHRINK.get(name, {})}).model().to(META)
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
