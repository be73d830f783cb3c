"""runtime/inductor_caches.py: wider caches for inductor's vector-stride helpers must change how
often they recompute, never what they return or what code inductor writes."""

from __future__ import annotations

import pytest
import sympy
import torch

from inductor_helpers import assert_linear_stride_agrees, recorded_strides
from nestc.runtime.inductor_caches import linear_stride, set_cache_size, torch_stride_at_vec_range, widen
from small_models import compiled_step_code, generated_code

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
    wrapped = torch_stride_at_vec_range()
    assert widen(entries=4096)
    assert sizevars.stride_at_vec_range.cache_info().maxsize == 4096
    assert sizevars.simplify_index_in_vec_range.cache_info().maxsize == 4096
    assert torch_stride_at_vec_range() is wrapped  # torch's function under the shortcut, not rewrapped
    assert not getattr(wrapped, "_nestc_shortcut", False)
    assert cpp.stride_at_vec_range is sizevars.stride_at_vec_range  # the name cpp.py calls
    first = sizevars.stride_at_vec_range
    assert widen(entries=4096) and sizevars.stride_at_vec_range is first  # nothing re-wrapped


def test_widened_helpers_return_what_the_uncached_functions_return():
    widen()
    for var, index in _index_expressions():
        for vec in (None, 8, 16):
            expect = torch_stride_at_vec_range()(index, var, vec)
            assert sizevars.stride_at_vec_range(index, var, vec) == expect
            assert sizevars.stride_at_vec_range(index, var, vec) == expect  # a cache hit


def test_inductor_writes_the_same_code_with_one_entry_caches_and_wide_ones():
    """One-entry caches recompute nearly every call; wide ones almost never. Same kernels."""

    def heads_and_chunks(x, w):  # repeat, head split and chunk views: FloorDiv/Mod indexing
        h = x.reshape(2, 16, 4, 8).permute(0, 2, 1, 3).repeat(1, 4, 1, 1)
        z = torch.nn.functional.silu(h @ w) * h.sum(-1, keepdim=True)
        return z.reshape(2, 4, 4, 16, 8).sum(1).transpose(1, 2).reshape(2, 16, 32)

    x, w = torch.randn(2, 16, 32), torch.randn(8, 8)
    try:
        assert set_cache_size(1)
        tiny = generated_code(torch.compile(heads_and_chunks, fullgraph=True, dynamic=False), x, w)
        asked = sizevars.stride_at_vec_range.cache_info()
        assert set_cache_size(1 << 16)
        wide = generated_code(torch.compile(heads_and_chunks, fullgraph=True, dynamic=False), x, w)
    finally:
        widen()
    assert "cpp_fused" in tiny  # inductor did write C++ kernels
    assert asked.misses > 1  # ... and asked the helper about several index expressions
    assert tiny == wide


def test_linear_stride_reads_plain_strided_indexing_and_leaves_the_rest_to_torch():
    from torch.utils._sympy.functions import FloorDiv, ModularIndexing

    x0, x1, x2 = (sympy.Symbol(f"x{i}", integer=True, nonnegative=True) for i in range(3))
    assert linear_stride(256 * x0 + 4 * x1 + 7, x1) == 4
    assert linear_stride(256 * x0 + FloorDiv(x2, 64) + 3 * x1, x1) == 3  # a var-free floor division
    assert linear_stride(256 * x0 + 4 * x1, x2) == 0  # does not depend on it
    assert linear_stride(x0 * x1 + x1, x1) is None  # a symbolic coefficient
    assert linear_stride(x1 + FloorDiv(x1, 16), x1) is None
    assert linear_stride(64 * ModularIndexing(x2, 1, 64) + x2, x2) is None
    for index, var in [(256 * x0 + 4 * x1 + 7, x1), (256 * x0 + FloorDiv(x2, 64) + 3 * x1, x1)]:
        for vec in (None, 16):
            mine, torchs = linear_stride(index, var), torch_stride_at_vec_range()(index, var, vec)
            assert mine == torchs and type(mine) is type(torchs)


@pytest.mark.slow
@pytest.mark.parametrize("name,seq_len", [("hope", 8), ("cms", 16)])
def test_linear_stride_agrees_with_torch_on_every_expression_a_built_in_step_asks_about(name, seq_len):
    """Titans MAC's step: tests/runtime/test_inductor_setup.py (with its code unchanged)."""
    assert_linear_stride_agrees(recorded_strides(lambda: compiled_step_code(name, seq_len)))
