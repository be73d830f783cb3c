"""Skip writing vectorised tail kernels for loops whose tail is empty.

For every fused loop nest it vectorises, inductor's C++ backend writes a main kernel over the
whole vectors of the tiled loop and, with `cpp.enable_loop_tail_vec` on (the default), a second,
masked vector kernel for the tail (three of them for a 2-D tile: main/tail, tail/main,
tail/tail). The tail kernels are written even when the shapes are static and the tiled loop's size
is a multiple of the vector width, so the tail is empty; the loop emitter then drops their
loops, whose start equals their end (`cpp.no_redundant_loops`), and they never reach the C++
source. Writing them is pure Python work: a Titans MAC layer's training step tiles 511 loops,
475 of them with an empty tail, and writes 523 tail kernels next to 510 scalar and 463 main ones
(scratch count, torch 2.13.0+cpu).

`skip_empty_tails()` makes inductor read `cpp.enable_loop_tail_vec` as off while it writes one
loop nest whose every tiled loop has a statically empty tail, so it takes its other branch, which
writes no vector tail kernel (the scalar kernel it already wrote stands in, over an empty range).
Loops with a real tail or a symbolic size are untouched, and so are nests with a reduction (in
the other branch a reduction declares per-lane accumulators it never uses, so the source would
differ). The C++ source is the same byte for byte (tests/runtime/test_inductor_tails.py
compiles the same graphs both ways), only the time to write it changes. It is idempotent, undone
by `restore()`, and does nothing when this torch lacks the two methods it wraps.
"""

from __future__ import annotations

import functools

_PATCHED = "_nestc_empty_tails"


def skip_empty_tails() -> bool:
    """Wrap inductor's C++ loop tiling as described above; True when active."""
    hooks = _hooks()
    if hooks is None:
        return False
    config, LoopNest, Proxy = hooks
    if getattr(Proxy.codegen_functions, _PATCHED, False):
        return True
    original_tile, original_codegen = LoopNest.tile, Proxy.codegen_functions
    # one entry per loop nest being written: (the setting at its start, empty-tail flags of
    # the loops tiled so far); a stack in case a nest is ever written inside another
    nests: list[tuple[bool, list[bool]] | None] = []  # None: a nest left as inductor writes it

    @functools.wraps(original_tile)
    def tile(self, depth, factor):
        loop = original_tile(self, depth, factor)
        if nests and nests[-1] is not None:
            default, empty = nests[-1]
            empty.append(_tail_is_empty(loop))
            config.cpp.enable_loop_tail_vec = default and not all(empty)
        return loop

    @functools.wraps(original_codegen)
    def codegen_functions(self, fn_list, var_sizes_list, *args, **kwargs):
        # the setting a user or a config.patch chose, even inside an outer nest that changed it
        outer = next((n for n in nests if n is not None), None)
        default = outer[0] if outer else config.cpp.enable_loop_tail_vec
        before = config.cpp.enable_loop_tail_vec
        # a reduction's other branch declares per-lane accumulators it never uses, so its
        # source would differ: reductions keep inductor's own choice
        reduces = any(len(reduction) for _, reduction in var_sizes_list)
        nests.append(None if reduces else (default, []))
        try:
            return original_codegen(self, fn_list, var_sizes_list, *args, **kwargs)
        finally:
            nests.pop()
            config.cpp.enable_loop_tail_vec = before

    setattr(codegen_functions, _PATCHED, True)
    codegen_functions._nestc_originals = (original_tile, original_codegen)
    LoopNest.tile, Proxy.codegen_functions = tile, codegen_functions
    return True


def restore() -> None:
    """Put inductor's own methods back (the tests compile with and without the wrapper)."""
    hooks = _hooks()
    if hooks is None:
        return
    _, LoopNest, Proxy = hooks
    originals = getattr(Proxy.codegen_functions, "_nestc_originals", None)
    if originals is not None:
        LoopNest.tile, Proxy.codegen_functions = originals


def _tail_is_empty(loop) -> bool:
    """Whether a tiled loop's tail (size minus the tiled size) is statically zero."""
    import sympy

    tail = sympy.sympify(loop.size - loop.tiled_size)
    return bool(tail.is_Integer and tail == 0)  # a symbolic size may leave a tail: keep the kernel


def _hooks():
    try:
        from torch._inductor import config
        from torch._inductor.codegen import cpp
    except ImportError:
        return None
    LoopNest, Proxy = getattr(cpp, "LoopNest", None), getattr(cpp, "CppKernelProxy", None)
    if not callable(getattr(LoopNest, "tile", None)):
        return None
    if not callable(getattr(Proxy, "codegen_functions", None)):
        return None
    if not hasattr(config.cpp, "enable_loop_tail_vec"):
        return None
    return config, LoopNest, Proxy
