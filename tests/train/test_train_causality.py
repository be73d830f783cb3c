"""Every built-in model is causal: the logits at positions before t do not depend on the tokens
at t and after, through any path (attention windows, MAC's memory tokens, convolutions, memory
updates committed at chunk ends, CMS levels, and the local surprise signals of held-out
evaluation, which are causal by construction).

The check runs in float64, so that a leak as small as the rounding of float32 would still show.
The "sequence" signal scope, which is documented to leak (docs/paper-compliance.md §7 #8), is
the negative control: the same check must see it.
"""

from __future__ import annotations

import pytest
import torch

import nestc
from nestc.runtime.context import Ctx
from nestc.runtime.train import make_loss_fns, signals

from train_helpers import model_specs, settings_for, single_thread  # noqa: F401


def logits_for(model, x: torch.Tensor, scope: str | None) -> torch.Tensor:
    y = torch.roll(x, -1, 1)
    lss = signals(model, make_loss_fns(model), x, y, scope=scope) if scope else {}
    with torch.no_grad():
        out, _ = model(x, ctx=Ctx(lss=lss))
    return out


def changed_after(x: torch.Tensor, t: int, seed: int) -> torch.Tensor:
    x2 = x.clone()
    x2[:, t:] = torch.randint(0, 256, x2[:, t:].shape, generator=torch.Generator().manual_seed(seed))
    return x2


@pytest.mark.parametrize("name", model_specs())
def test_logits_before_t_ignore_the_tokens_from_t_on(name):
    torch.manual_seed(0)
    model = nestc.compile(name, settings_for(name)).model().double()
    model.eval()
    x = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(1))
    scope = "causal" if model.lss_sites() else None
    base = logits_for(model, x, scope)
    for t in (1, 6, 13, 22):  # inside and at the edges of chunks of 4 and 8, and windows of 8
        other = logits_for(model, changed_after(x, t, seed=t), scope)
        assert (other[:, :t] - base[:, :t]).abs().max().item() <= 1e-12, f"{name}: position < {t} saw the future"
        assert (other[:, t:] - base[:, t:]).abs().max().item() > 1e-6  # the change reached the later ones


def test_the_check_sees_the_documented_leak_of_whole_sequence_signals():
    torch.manual_seed(0)
    model = nestc.compile("hope", {**settings_for("hope"), "n_layers": "2"}).model().double()
    model.eval()
    x = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(1))
    t = 13
    base = logits_for(model, x, "sequence")
    other = logits_for(model, changed_after(x, t, seed=t), "sequence")
    assert (other[:, :t] - base[:, :t]).abs().max().item() > 1e-12
