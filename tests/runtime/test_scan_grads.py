"""runtime/ops.py `scan`: a compiled scan must give eager's gradients when a carry's gradient
arrives as a broadcast. In torch 2.13, inductor compiles the scan's backward loop for the layout
of the first incoming carry gradient; the gradient of `final.sum()` taken in the same graph has
stride 0, and every later iteration's carry gradient was written in that layout too. The second
test shows torch's own scan doing so (so the first can fail). Plain torch: a carry that each
step adds a token to and returns as its output, with a loss that squares the outputs and sums
the final carry."""

from __future__ import annotations

import pytest
import torch
from torch._higher_order_ops.scan import scan as torch_scan

from nestc.runtime import ops
from torch_fixes import freshly_compiled  # tests/, beside conftest.py


def _step(w, x):
    return w + x, w.clone()


def _loss(scan, w, xs):
    final, outs = scan(_step, w, xs)
    return outs.pow(2).sum() + final.sum()


def _gradients(fn):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 5, generator=g, requires_grad=True)
    xs = torch.randn(4, 3, 5, generator=g, requires_grad=True)
    return torch.autograd.grad(fn(w, xs), [w, xs])


def _compiled_gradients(scan):
    return freshly_compiled(_gradients, lambda w, xs: _loss(scan, w, xs))


@pytest.mark.slow
def test_a_scan_whose_final_carry_is_summed_gives_eager_gradients():
    eager = _gradients(lambda w, xs: _loss(torch_scan, w, xs))
    for a, b in zip(_compiled_gradients(ops.scan), eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_scan_alone_gets_them_wrong():
    """torch 2.13's behaviour. A torch that mends this itself fails this test: then the wrapper's
    copies can go."""
    eager = _gradients(lambda w, xs: _loss(torch_scan, w, xs))
    gw, gx = _compiled_gradients(torch_scan)
    assert (gw - eager[0]).abs().max() > 0.1 * eager[0].abs().max()
