"""Taking one of nestc's torch fixes (runtime/subgraph_donation.py, runtime/subgraph_aliases.py)
out for the length of a test, to show the bug it mends. Each such module has `restore()`, an
apply function and a `CACHE_TAG` (so code compiled without it is not read from a warm cache).
And compiling a test's function afresh, as the tests of those fixes and of runtime/ops.py `scan`
do."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch._inductor.utils import fresh_cache


@contextmanager
def fix_taken_out(module, apply):
    """`module`'s fix undone (its cache tag gone) inside the block; applied again after it."""
    module.restore()
    try:
        assert module.CACHE_TAG not in torch.compiler.config.cache_key_tag
        yield
    finally:
        assert apply()


def freshly_compiled(gradients, fn):
    """`gradients(compiled fn)`, with fn compiled by inductor (fullgraph) from a reset dynamo and
    an empty inductor cache: the code under test is compiled now, not read back."""
    torch._dynamo.reset()
    with fresh_cache():
        return gradients(torch.compile(fn, backend="inductor", fullgraph=True))
