"""runtime/subgraph_donation.py: a compiled region called for every chunk of a loop must give the
gradients eager gives. In torch 2.13 a region's backward could write its result into a gradient
buffer its caller reuses for the next chunk; the second test shows that without the fix (so the
first can fail). Plain torch: a region of four chunks, each returning an output that adds its
input (`x + y`), the case where inductor reused the incoming gradient's buffer."""

from __future__ import annotations

import pytest
import torch

from nestc.runtime import subgraph_donation
from torch_fixes import fix_taken_out, freshly_compiled  # tests/, beside conftest.py


def _chunk(w, x):
    k = x * 2
    y = k @ w
    return 0.9 * w + k.transpose(1, 2) @ torch.tanh(x), y, x + y


_region = torch.compiler.nested_compile_region(_chunk)


def _loop(chunk, w, x):
    ys, xs = [], []
    for i in range(4):
        w, y, xo = chunk(w, x[:, 4 * i:4 * (i + 1)])
        ys.append(y * 1.0)
        xs.append(xo * 1.0)
    return w, torch.cat(ys, 1), torch.cat(xs, 1)


def _gradients(fn):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, generator=g, requires_grad=True)
    w = torch.randn(2, 8, 8, generator=g, requires_grad=True)
    w_end, y, xo = fn(w, x)
    return torch.autograd.grad(y.square().sum() + xo.sum() + w_end.sum(), [x, w])


def _compiled_gradients():
    return freshly_compiled(_gradients, lambda w, x: _loop(_region, w, x))


@pytest.mark.slow
def test_a_region_called_for_every_chunk_gives_eager_gradients():
    assert subgraph_donation.keep_subgraph_inputs()  # on for the whole session (tests/conftest.py)
    eager = _gradients(lambda w, x: _loop(_chunk, w, x))
    for a, b in zip(_compiled_gradients(), eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)


@pytest.mark.slow
def test_without_the_fix_the_later_chunks_gradients_are_wrong():
    """torch 2.13's behaviour. A torch with the upstream fix fails this test: then the module can go."""
    eager = _gradients(lambda w, x: _loop(_chunk, w, x))
    with fix_taken_out(subgraph_donation, subgraph_donation.keep_subgraph_inputs):
        gx, _ = _compiled_gradients()
    error = (gx - eager[0]).abs().amax(dim=(0, 2))  # per token
    assert error[:4].max() < 1e-3  # the first chunk's
    assert error[4:].max() > 0.1 * eager[0].abs().max(), error  # the later chunks' are off


def test_the_fix_is_idempotent_and_tags_cache_keys_once():
    before = torch.compiler.config.cache_key_tag
    assert subgraph_donation.keep_subgraph_inputs() and subgraph_donation.keep_subgraph_inputs()
    tag = torch.compiler.config.cache_key_tag
    assert tag == before and tag.split("+").count(subgraph_donation.CACHE_TAG) == 1
