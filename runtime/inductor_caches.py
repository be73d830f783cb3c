"""Wider memo caches for two index helpers of torch.compile's C++ code generator.

Inductor's CPU backend asks, for every load and store of every kernel it writes, what stride an
index expression has along the loop variable it may vectorise (`stride_at_vec_range`, with
`simplify_index_in_vec_range` under it). Both are pure functions of sympy expressions and are
memoised by torch with `functools.lru_cache()` at its default size of 128 entries. A Hope layer's
graph asks about roughly 700 distinct expressions, about 105,000 times, in an order that cycles
through all of them, so nearly every call misses a 128-entry cache and runs `sympy.simplify` again:
46 s of the 200 s it took to compile one self-modifying Titans block (scratch measurement with a
timing wrapper, torch 2.13.0+cpu).

`widen()` re-wraps the same two functions in caches large enough to hold every expression a graph
asks about. The functions, their arguments and their results are unchanged, so the generated
code is byte for byte the same (tests/runtime/test_inductor_caches.py checks both); only the
misses go away. It is applied wherever nestc calls torch.compile, is idempotent, and does nothing
when a torch version does not have these helpers.
"""

from __future__ import annotations

import functools

CACHE_ENTRIES = 1 << 16  # enough for every expression of the largest built-in graph, several times


def widen(entries: int = CACHE_ENTRIES) -> bool:
    """Give inductor's vector-stride helpers `entries`-sized caches; True when they have them."""
    helpers = _helpers()
    if helpers is None:
        return False
    if all(_size(fn) >= entries for fn in helpers[:2]):
        return True
    return set_cache_size(entries)


def set_cache_size(entries: int) -> bool:
    """Re-wrap both helpers in `entries`-sized caches, larger or smaller than now (the tests use
    tiny ones to show the size never changes the generated code); False without the helpers."""
    helpers = _helpers()
    if helpers is None:
        return False
    stride, simplify, sizevars, cpp = helpers
    # simplify_index_in_vec_range recurses through its module-level name, and cpp.py imported
    # stride_at_vec_range by name: rebind the names the callers look up.
    sizevars.simplify_index_in_vec_range = functools.lru_cache(maxsize=entries)(simplify.__wrapped__)
    resized = functools.lru_cache(maxsize=entries)(stride.__wrapped__)
    sizevars.stride_at_vec_range = resized
    if getattr(cpp, "stride_at_vec_range", None) is stride:
        cpp.stride_at_vec_range = resized
    return True


def _helpers():
    """(stride_at_vec_range, simplify_index_in_vec_range, their module, cpp codegen) or None."""
    try:
        from torch._inductor import sizevars
        from torch._inductor.codegen import cpp
    except ImportError:  # a torch without inductor's C++ backend: nothing to tune
        return None
    stride = getattr(sizevars, "stride_at_vec_range", None)
    simplify = getattr(sizevars, "simplify_index_in_vec_range", None)
    if not (_is_lru(stride) and _is_lru(simplify)):
        return None
    return stride, simplify, sizevars, cpp


def _is_lru(fn) -> bool:
    return callable(getattr(fn, "cache_info", None)) and hasattr(fn, "__wrapped__")


def _size(fn) -> int:
    size = fn.cache_info().maxsize
    return 1 << 62 if size is None else size
