"""Local surprise signals with scope "causal": each chunk of an lss box learns from the loss up to
the end of that chunk only, so changing a later target changes nothing before it -- the held-out
evaluation relies on this. The reference is the definition itself: one probe pass per prefix."""

import torch

import nestc
from nestc.runtime.context import Ctx
from nestc.runtime.train import make_loss_fns, signals

SMALL = {"n_layers": "2", "d_model": "32", "heads": "2", "c_fast": "4"}


def _model(spec="cms"):
    torch.manual_seed(0)
    model = nestc.compile(spec, SMALL).model()
    return model, make_loss_fns(model)


def test_a_later_target_reaches_no_earlier_chunk():
    model, fns = _model()
    x = torch.randint(0, 256, (2, 12))
    y = torch.randint(0, 256, (2, 12))
    y2 = y.clone()
    y2[:, 10] = (y2[:, 10] + 1) % 256  # a target in the last chunk (tokens 8-11)
    a = signals(model, fns, x, y, scope="causal")
    b = signals(model, fns, x, y2, scope="causal")
    for k in a:
        assert torch.equal(a[k][:, :8], b[k][:, :8]), k
        assert not torch.equal(a[k][:, 8:], b[k][:, 8:]), k
    # and the real pass reads nothing of it before the last chunk
    la, _ = model(x, ctx=Ctx(lss=a))
    lb, _ = model(x, ctx=Ctx(lss=b))
    assert torch.equal(la[:, :9], lb[:, :9])  # the update after chunk 2 is the same


def test_each_chunk_gets_the_gradient_of_the_loss_up_to_its_end():
    model, fns = _model()
    x = torch.randint(0, 256, (1, 10))  # chunks [0,4) [4,8) [8,10)
    y = torch.randint(0, 256, (1, 10))
    causal = signals(model, fns, x, y, scope="causal")
    for lo, hi in ((0, 4), (4, 8), (8, 10)):
        # the prefix's own mean loss weighs each token 1/hi; the causal signal keeps the whole
        # sequence's weight 1/10, so that it has the scale the model trains with
        prefix = signals(model, fns, x[:, :hi], y[:, :hi], scope="sequence")
        for k in causal:
            ref = prefix[k][:, lo:hi] * hi / 10
            torch.testing.assert_close(causal[k][:, lo:hi], ref, **_tol(ref))
    whole = signals(model, fns, x, y, scope="sequence")
    for k in causal:  # the last chunk's loss so far is the whole sequence's
        torch.testing.assert_close(causal[k][:, 8:], whole[k][:, 8:], **_tol(whole[k][:, 8:]))


def _tol(ref: torch.Tensor) -> dict:
    """float32 tolerances relative to the signal's size: the signals are about 3e-3 to 1e-2, so
    torch's default atol of 1e-5 let 0.1-0.3% errors pass (measured: |diff| <= 3e-7 * max |ref|)."""
    scale = ref.abs().max().item()
    assert scale > 0
    return dict(rtol=1.3e-6, atol=1e-5 * scale)


def test_chunk_sizes_are_known_for_every_lss_box():
    model, _ = _model("hope")
    assert model.lss_periods() == {k: 4 for k, _ in model.lss_sites()}


def test_full_length_masked_probes_equal_prefix_probes():
    """Compiled passes keep one input shape: the probe for the loss up to `end` runs on the whole
    sequence with the later positions masked out of the loss (runtime/train.py `signals`). On a
    causal model that is the same signal as a pass over the prefix alone."""
    import dataclasses

    for spec in ("cms", "hope"):
        model, fns = _model(spec)
        model.double()
        x = torch.randint(0, 256, (2, 14))  # ragged: the last chunk is partial
        y = torch.randint(0, 256, (2, 14))
        prefix = signals(model, fns, x, y, scope="causal")
        masked = signals(model, dataclasses.replace(fns, compiled=True), x, y, scope="causal")
        assert prefix and prefix.keys() == masked.keys()
        for k in prefix:
            assert prefix[k].abs().max() > 0
            torch.testing.assert_close(masked[k], prefix[k], rtol=0, atol=1e-12)


def test_without_cross_position_paths_both_scopes_give_the_same_signal():
    """In a one-layer CMS model a level's output at token s reaches only token s's loss (the
    chain is per token and nothing mixes positions after it), so no later target can leak and
    the causal signal must equal the whole-sequence one, scale included."""
    torch.manual_seed(0)
    model = nestc.compile("cms", {**SMALL, "n_layers": "1"}).model().double()
    fns = make_loss_fns(model)
    x = torch.randint(0, 256, (2, 13))
    y = torch.randint(0, 256, (2, 13))
    causal = signals(model, fns, x, y, scope="causal")
    whole = signals(model, fns, x, y, scope="sequence")
    assert causal and causal.keys() == whole.keys()
    for k in causal:
        assert whole[k].abs().max() > 0
        torch.testing.assert_close(causal[k], whole[k], rtol=1e-12, atol=1e-15)
