"""In-context memories in a batch and at the end of a short sequence.

* Every sequence of a batch has its own memories: its output is what it gives alone, and no
  other sequence of the batch can change it (also the local surprise signals of a training step).
* A sequence shorter than a memory's chunk still teaches the memory when the call is flushed;
  without a flush the partial chunk is pending, and invisible until its chunk completes.
"""

from __future__ import annotations

import pytest
import torch

import nestc
from nestc.runtime.context import Ctx
from nestc.runtime.train import make_loss_fns, signals

from train_helpers import HOPE, TITANS, memory_states, single_thread  # noqa: F401

SPECS = {"titans": TITANS, "hope": HOPE}


def small_model(name: str):
    torch.manual_seed(0)
    model = nestc.compile(name, SPECS[name]).model()
    model.eval()
    return model


def lss_for(model, batch: int, length: int, seed: int = 1, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """Local surprise signals for the model's lss boxes (random, per sequence; or zeros)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, length, w, generator=g) * scale for k, w in model.lss_sites()}


def rows(signals_: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i:i + 1] for k, v in signals_.items()}


@pytest.mark.parametrize("scale", [0.0, 0.1], ids=["zero-lss", "random-lss"])
@pytest.mark.parametrize("name", list(SPECS))
def test_each_sequence_of_a_batch_has_its_own_memories(name, scale):
    model = small_model(name)
    b, t = 3, 21  # not a multiple of any chunk: partial chunks at the end too
    x = torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(2))
    lss = lss_for(model, b, t, scale=scale)
    with torch.no_grad():
        together, state = model(x, ctx=Ctx(lss=lss))
        for i in range(b):
            alone, alone_state = model(x[i:i + 1], ctx=Ctx(lss=rows(lss, i)))
            torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-5, atol=1e-5)
            # each sequence's memory state is the one it reaches alone
            mems, mems_alone = memory_states(state), memory_states(alone_state)
            assert mems and mems.keys() == mems_alone.keys()
            for path, m in mems.items():
                for w, w1 in zip(m["M"], mems_alone[path]["M"]):
                    torch.testing.assert_close(w[i:i + 1], w1, rtol=1e-5, atol=1e-5)

        # another sequence's tokens (and signals) cannot change sequence 0's output
        x2 = x.clone()
        x2[1] = torch.randint(0, 256, (t,), generator=torch.Generator().manual_seed(3))
        lss2 = {k: v.clone() for k, v in lss.items()}
        for v in lss2.values():
            v[1] = torch.randn(v[1].shape)
        changed, _ = model(x2, ctx=Ctx(lss=lss2))
    torch.testing.assert_close(changed[0], together[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(changed[2], together[2], rtol=1e-6, atol=1e-6)
    assert (changed[1] - together[1]).abs().max() > 1e-3  # the changed sequence did change


def test_local_surprise_signals_are_per_sequence():
    """The first pass of a training step gives each sequence the gradient of its *own* mean
    loss: a sequence's signal does not depend on the batch it is in."""
    model = small_model("hope")
    model.train()
    fns = make_loss_fns(model)
    x = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(4))
    y = torch.roll(x, -1, 1)
    batch = signals(model, fns, x, y)
    assert batch and all(v.abs().sum() > 0 for v in batch.values())
    for i in range(3):
        alone = signals(model, fns, x[i:i + 1], y[i:i + 1])
        for k in batch:
            torch.testing.assert_close(batch[k][i:i + 1], alone[k], rtol=1e-5, atol=1e-7)




@pytest.mark.parametrize("name", ["titans", "hope"])
def test_a_flushed_short_sequence_updates_its_memories(name):
    model = small_model(name)
    chunks = {"titans": [4], "hope": [4, 8]}[name]
    short = min(chunks) - 1  # shorter than every chunk of the model
    x = torch.randint(0, 256, (1, short), generator=torch.Generator().manual_seed(5))
    nxt = torch.randint(0, 256, (1, 2), generator=torch.Generator().manual_seed(6))
    lss = lss_for(model, 1, short)
    lss_next = lss_for(model, 1, 2, seed=7)
    initial = memory_states(model.initial_state(1))
    with torch.no_grad():
        _, flushed = model(x, ctx=Ctx(lss=lss, flush=True))
        _, pending = model(x, ctx=Ctx(lss=lss))
        after_flush, _ = model(nxt, flushed, Ctx(lss=lss_next))
        after_pending, _ = model(nxt, pending, Ctx(lss=lss_next))
        fresh, _ = model(nxt, ctx=Ctx(lss=lss_next))
        whole, _ = model(torch.cat([x, nxt], 1),
                         ctx=Ctx(lss={k: torch.cat([lss[k], lss_next[k]], 1) for k in lss}))

    mems_f, mems_p = memory_states(flushed), memory_states(pending)
    assert mems_f.keys() == initial.keys() and len(initial) >= len(chunks)
    for path in initial:
        w0 = initial[path]["W"]
        # flushed: the partial chunk is committed -- new weights, nothing pending
        f = mems_f[path]
        assert f["offset"] == 0
        assert all((a - b).abs().max() > 0 for a, b in zip(f["W"], w0)), path
        assert all(torch.equal(a, b) for a, b in zip(f["W"], f["M"])), path
        # not flushed: the weights read are still the initial ones; the update is pending
        p = mems_p[path]
        assert p["offset"] == short
        assert all(torch.equal(a, b) for a, b in zip(p["W"], w0)), path
        assert any((a - b).abs().max() > 0 for a, b in zip(p["M"], w0)), path

    # the next call reads the updated memories ...
    assert (after_flush - fresh).abs().max() > 1e-4
    assert (after_flush - after_pending).abs().max() > 1e-4
    # ... while a pending chunk stays invisible: exactly as one call over both pieces
    torch.testing.assert_close(after_pending, whole[:, short:], rtol=1e-5, atol=1e-5)
