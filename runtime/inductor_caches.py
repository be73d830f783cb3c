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

The misses that remain still cost: a Titans MAC layer's training step asks about 678 distinct
expressions, 4.8 s of `sympy.simplify` in all (scratch timing, torch 2.13.0+cpu). 650 of them
(4.3 s) are sums in which the loop variable appears only in terms `c * var` with an integer c, the
other terms not depending on it at all: plain strided indexing. Their stride is the sum of those
c whatever `simplify` does to the rest, so `linear_stride` reads it off the terms, and the helper
calls torch's own function for every other expression. The result is the same sympy Integer
(tests/runtime/test_inductor_caches.py holds the two equal on every expression real compiles ask
about, and the generated code equal with and without the shortcut).
"""

from __future__ import annotations

import functools

import sympy

CACHE_ENTRIES = 1 << 16  # enough for every expression of the largest built-in graph, several times


def widen(entries: int = CACHE_ENTRIES) -> bool:
    """Give inductor's vector-stride helpers `entries`-sized caches and the linear shortcut; True
    when they have them."""
    helpers = _helpers()
    if helpers is None:
        return False
    if all(_size(fn) >= entries for fn in helpers[:2]) and _has_shortcut(helpers[0]):
        return True
    return set_cache_size(entries)


def set_cache_size(entries: int, shortcut: bool = True) -> bool:
    """Re-wrap both helpers in `entries`-sized caches, larger or smaller than now (the tests use
    tiny ones to show the size never changes the generated code), the stride helper with the
    linear shortcut unless `shortcut` is False; False without the helpers."""
    helpers = _helpers()
    if helpers is None:
        return False
    stride, simplify, sizevars, cpp = helpers
    original = torch_stride_at_vec_range(stride)
    # simplify_index_in_vec_range recurses through its module-level name, and cpp.py imported
    # stride_at_vec_range by name: rebind the names the callers look up.
    sizevars.simplify_index_in_vec_range = functools.lru_cache(maxsize=entries)(simplify.__wrapped__)
    resized = functools.lru_cache(maxsize=entries)(_with_shortcut(original) if shortcut else original)
    sizevars.stride_at_vec_range = resized
    if getattr(cpp, "stride_at_vec_range", None) is stride:
        cpp.stride_at_vec_range = resized
    return True


def linear_stride(index: sympy.Expr, var: sympy.Symbol) -> sympy.Integer | None:
    """The stride of `index` along `var` when `var` appears only in terms `c * var` (integer c)
    of a sum whose other terms do not depend on it; None for any other expression. Zero when
    `index` does not depend on `var` at all, as torch's helper returns."""
    if not index.has(var):
        return sympy.S.Zero
    stride = 0
    for term in sympy.Add.make_args(index):
        if not term.has(var):
            continue
        coeff, rest = term.as_coeff_Mul()
        if rest != var or not coeff.is_Integer:
            return None  # var inside a product, a floor division, a modulus...: torch decides
        stride += int(coeff)
    return sympy.Integer(stride)


def _with_shortcut(original):
    @functools.wraps(original)
    def stride_at_vec_range(index, var, vec_length=None):
        stride = linear_stride(index, var)
        return original(index, var, vec_length) if stride is None else stride

    stride_at_vec_range._nestc_shortcut = True
    return stride_at_vec_range


def _has_shortcut(stride) -> bool:
    return getattr(stride.__wrapped__, "_nestc_shortcut", False)


def torch_stride_at_vec_range(stride=None):
    """Torch's own, uncached stride helper, under whichever wrappers this module put on it."""
    if stride is None:
        from torch._inductor import sizevars

        stride = sizevars.stride_at_vec_range
    fn = stride.__wrapped__  # under the lru cache
    while getattr(fn, "_nestc_shortcut", False):
        fn = fn.__wrapped__
    return fn


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
