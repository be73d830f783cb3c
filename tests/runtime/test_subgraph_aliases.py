"""runtime/subgraph_aliases.py: a region whose forward returns one of its inputs (a tensor its
backward saves) must give the gradients eager gives. In torch 2.13 inductor freed that input
after the call and reused its memory, overwriting the saved tensor; the second test shows that
without the fix (so the first can fail). Plain torch: a state carried through four calls of one
region, each call saving the state it was given, and a product after the loop that wants a
buffer of the state's size."""

from __future__ import annotations

import pytest
import torch

from nestc.runtime import subgraph_aliases
from torch_fixes import fix_taken_out, freshly_compiled  # tests/, beside conftest.py


def _step(w, x):
    y = x @ w
    return w - 0.1 * x.transpose(1, 2) @ torch.tanh(y), y


_region = torch.compiler.nested_compile_region(_step)


def _loop(step, w, x):
    ys = []
    for i in range(4):
        w, y = step(w, x[:, 4 * i:4 * (i + 1)])
        ys.append(y)
    v = torch.tanh(w) @ w  # a buffer of w's size, where inductor reused a saved state's
    return (torch.cat(ys, 1) ** 2).sum() + (v @ v).sum()


def _gradients(fn):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, generator=g, requires_grad=True)
    w = torch.randn(2, 8, 8, generator=g, requires_grad=True)
    return torch.autograd.grad(fn(w, x), [x, w])


def _compiled_gradients():
    return freshly_compiled(_gradients, lambda w, x: _loop(_region, w, x))


@pytest.mark.slow
def test_a_region_that_returns_its_input_gives_eager_gradients():
    assert subgraph_aliases.keep_aliased_inputs()  # on for the whole session (tests/conftest.py)
    eager = _gradients(lambda w, x: _loop(_step, w, x))
    for a, b in zip(_compiled_gradients(), eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_without_the_fix_the_gradients_are_wrong():
    """torch 2.13's behaviour. A torch that mends this itself fails this test: then the module can go."""
    eager = _gradients(lambda w, x: _loop(_step, w, x))
    with fix_taken_out(subgraph_aliases, subgraph_aliases.keep_aliased_inputs):
        gx, _ = _compiled_gradients()
    assert (gx - eager[0]).abs().max() > 0.1 * eager[0].abs().max()


def test_the_fix_is_idempotent_and_tags_cache_keys_once():
    before = torch.compiler.config.cache_key_tag
    assert subgraph_aliases.keep_aliased_inputs() and subgraph_aliases.keep_aliased_inputs()
    tag = torch.compiler.config.cache_key_tag
    assert tag == before and tag.split("+").count(subgraph_aliases.CACHE_TAG) == 1
