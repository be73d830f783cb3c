"""Taking one of nestc's torch fixes (runtime/subgraph_donation.py, runtime/subgraph_aliases.py)
out for the length of a test, to show the bug it mends. Each such module has `restore()`, an
apply function and a `CACHE_TAG` (so code compiled without it is not read from a warm cache)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def fix_taken_out(module, apply):
    """`module`'s fix undone (its cache tag gone) inside the block; applied again after it."""
    module.restore()
    try:
        assert module.CACHE_TAG not in torch.compiler.config.cache_key_tag
        yield
    finally:
        assert apply()
