"""Streaming equals one long call: for every built-in model, a sequence fed in uneven pieces
(shorter and longer than every chunk and attention window) with the state carried gives the
logits and the final state of one call over the whole sequence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nestc
from nestc.runtime.context import Ctx

from train_helpers import flat, model_specs, settings_for, single_thread  # noqa: F401

PIECES = (5, 1, 17)  # then the rest; the small settings use chunks of 4-16 and a window of 8
LENGTH = 40


@pytest.mark.parametrize("spec", model_specs())
def test_streaming_in_pieces_equals_one_call(spec):
    torch.manual_seed(0)
    _assert_streams(nestc.compile(spec, settings_for(spec)).model())


@pytest.mark.parametrize("every", [1, 3])
def test_general_rule_boxes_stream_in_pieces(every):
    """examples/adam_memory.nest's Adam memory runs token by token (the general rule, each token
    one call of `_token_step`): its moments, step count, committed state and segment offsets
    carry across pieces, also when it commits every 3 tokens (pieces end mid-segment)."""
    example = Path(__file__).resolve().parents[2] / "examples" / "adam_memory.nest"
    text = example.read_text().replace("every     1 tokens", f"every     {every} tokens")
    assert f"every     {every} tokens" in text
    torch.manual_seed(0)
    _assert_streams(nestc.compile("adam_memory.nest", text=text).model())


def _assert_streams(model):
    model.eval()
    b = 2
    x = torch.randint(0, 256, (b, LENGTH), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    lss = {k: torch.randn(b, LENGTH, w, generator=g) * 0.05 for k, w in model.lss_sites()}
    with torch.no_grad():
        whole, whole_state = model(x, ctx=Ctx(lss=lss))
        state = model.initial_state(b)
        outs, start = [], 0
        for n in (*PIECES, LENGTH - sum(PIECES)):
            piece = {k: v[:, start:start + n] for k, v in lss.items()}
            out, state = model(x[:, start:start + n], state, Ctx(lss=piece))
            outs.append(out)
            start += n
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-5, atol=1e-5)

    a, c = flat(whole_state), flat(state)
    assert a.keys() == c.keys()
    for path in a:
        if torch.is_tensor(a[path]):
            assert a[path].shape == c[path].shape, path
            torch.testing.assert_close(c[path], a[path], rtol=1e-5, atol=1e-5, msg=path)
        else:
            assert a[path] == c[path], path


def test_every_builtin_model_is_covered():
    """The loop above sees the model specs (and only those)."""
    names = model_specs()
    assert {"transformer", "titans", "hope", "cms"} <= set(names)
    assert not {"adamw", "m3", "muon"} & set(names)
