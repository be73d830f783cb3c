"""runtime/inductor_caches.py: wider caches for inductor's vector-stride helpers must change how
often they recompute, never what they return or what code inductor writes."""

from __future__ import annotations

import pytest
import sympy
import torch

from nestc.runtime.inductor_caches import set_cache_size, widen

sizevars = pytest.importorskip("torch._inductor.sizevars")
cpp = pytest.importorskip("torch._inductor.codegen.cpp")


def _index_expressions():
    from torch.utils._sympy.functions import FloorDiv, ModularIndexing

    d0, d1, d2 = (sympy.Symbol(f"d{i}", integer=True, nonnegative=True) for i in range(3))
    # shapes of the expressions a Hope layer's kernels index with (flattened heads, chunk views)
    return [(d0, 64 * d0 + 8 * d1 + d2), (d2, 64 * d0 + 8 * d1 + d2),
            (d2, 8192 * d0 + 64 * d1 + 512 * FloorDiv(d2, 64) + ModularIndexing(d2, 1, 64) + 4096),
            (d2, 2048 * d0 + 256 * d1 + 64 * ModularIndexing(d2, 1, 4)),
            (d1, 128 * FloorDiv(d1, 16) + ModularIndexing(d1, 1, 16)), (d0, sympy.Integer(7))]


def test_widen_gives_large_caches_over_the_same_functions_and_is_idempotent():
    assert set_cache_size(128)  # torch's own default
    wrapped = sizevars.stride_at_vec_range.__wrapped__
    assert widen(entries=4096)
    assert sizevars.stride_at_vec_range.cache_info().maxsize == 4096
    assert sizevars.simplify_index_in_vec_range.cache_info().maxsize == 4096
    assert sizevars.stride_at_vec_range.__wrapped__ is wrapped
    assert cpp.stride_at_vec_range is sizevars.stride_at_vec_range  # the name cpp.py calls
    first = sizevars.stride_at_vec_range
    assert widen(entries=4096) and sizevars.stride_at_vec_range is first  # nothing re-wrapped


def test_widened_helpers_return_what_the_uncached_functions_return():
    widen()
    for var, index in _index_expressions():
        for vec in (None, 8, 16):
            expect = sizevars.stride_at_vec_range.__wrapped__(index, var, vec)
            assert sizevars.stride_at_vec_range(index, var, vec) == expect
            assert sizevars.stride_at_vec_range(index, var, vec) == expect  # a cache hit


def _generated_code(fn, *args) -> str:
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    with config.patch(fx_graph_cache=False):
        _, codes = run_and_get_code(torch.compile(fn, fullgraph=True, dynamic=False), *args)
    # the header names the graph by a per-process counter; the rest is the generated code
    return "\n".join(line for code in codes for line in code.splitlines() if not line.startswith("# AOT ID"))


def test_inductor_writes_the_same_code_with_one_entry_caches_and_wide_ones():
    """One-entry caches recompute nearly every call; wide ones almost never. Same kernels."""

    def heads_and_chunks(x, w):  # repeat, head split and chunk views: FloorDiv/Mod indexing
        h = x.reshape(2, 16, 4, 8).permute(0, 2, 1, 3).repeat(1, 4, 1, 1)
        z = torch.nn.functional.silu(h @ w) * h.sum(-1, keepdim=True)
        return z.reshape(2, 4, 4, 16, 8).sum(1).transpose(1, 2).reshape(2, 16, 32)

    x, w = torch.randn(2, 16, 32), torch.randn(8, 8)
    try:
        assert set_cache_size(1)
        tiny = _generated_code(heads_and_chunks, x, w)
        asked = sizevars.stride_at_vec_range.cache_info()
        assert set_cache_size(1 << 16)
        wide = _generated_code(heads_and_chunks, x, w)
    finally:
        widen()
    assert "cpp_fused" in tiny  # inductor did write C++ kernels
    assert asked.misses > 1  # ... and asked the helper about several index expressions
    assert tiny == wide
