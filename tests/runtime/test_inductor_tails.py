"""runtime/inductor_tails.py: skipping vector tail kernels of loops whose tail is empty must
change how many kernels inductor writes, never the C++ it emits."""

from __future__ import annotations

import pytest
import torch

from nestc.runtime import inductor_tails
from small_models import generated_code

cpp = pytest.importorskip("torch._inductor.codegen.cpp")
config = pytest.importorskip("torch._inductor.config")


def sigmoid_gate(x, y):  # one 1-D tiled pointwise loop, 256 wide: an empty tail
    return torch.sigmoid(x) * y + 1


def transpose_add(x, y):  # a 2-D tile (transposed read), 64 x 256: empty tails both ways
    return x.t().contiguous() + y.t()


def narrow_tanh(x, y):  # 250 wide: a real tail, which keeps its vector kernel
    return torch.tanh(x[:, :250]) * y[:, :250]


def softmax_rows(x, y):  # reductions keep inductor's own choice
    return torch.softmax(x @ y.t(), -1) * 2


GRAPHS = [sigmoid_gate, transpose_add, narrow_tanh, softmax_rows]


def _written(fn, *args):
    """(generated code, the kernels inductor wrote for it as (class, argument count))."""
    written = []
    original = cpp.KernelGroup.new_kernel

    def new_kernel(self, cls, *a):
        written.append((cls.__name__, len(a)))
        return original(self, cls, *a)

    cpp.KernelGroup.new_kernel = new_kernel
    try:
        code = generated_code(torch.compile(fn, fullgraph=True, dynamic=False), *args)
    finally:
        cpp.KernelGroup.new_kernel = original
    return code, written


def _both_ways(fn, *args):
    """`_written` without the wrapper, then with it (as the session has it afterwards)."""
    inductor_tails.restore()
    try:
        plain = _written(fn, *args)
    finally:
        assert inductor_tails.skip_empty_tails()
    return plain, _written(fn, *args)


@pytest.mark.parametrize("fn", GRAPHS, ids=lambda f: f.__name__)
def test_the_same_code_with_and_without_the_wrapper(fn):
    x, y = torch.randn(64, 256), torch.randn(64, 256)
    (plain, _), (skipped, _) = _both_ways(fn, x, y)
    assert "cpp_fused" in plain and skipped == plain


def test_empty_tails_write_no_tail_kernel_and_real_tails_keep_theirs():
    x, y = torch.randn(64, 256), torch.randn(64, 256)
    tails = lambda kernels: [k for k in kernels if k in (("CppVecKernel", 3), ("CppTile2DKernel", 4))]
    for fn in GRAPHS:
        (_, plain), (_, skipped) = _both_ways(fn, x, y)
        assert tails(plain), fn.__name__  # inductor writes tail kernels here by default
        if fn is narrow_tanh:
            assert skipped == plain
        elif fn is softmax_rows:  # its reductions keep their (empty) tail kernels
            assert tails(skipped) and len(skipped) <= len(plain)
        else:
            assert not tails(skipped) and len(skipped) < len(plain), fn.__name__


def test_a_setting_chosen_by_the_user_is_kept_and_restored():
    assert inductor_tails.skip_empty_tails()
    x, y = torch.randn(64, 256), torch.randn(64, 256)
    with config.patch({"cpp.enable_loop_tail_vec": False}):
        _, off = _written(narrow_tanh, x, y)  # a real tail, yet no vector tail kernel: the user's off
        assert config.cpp.enable_loop_tail_vec is False
    assert ("CppVecKernel", 3) not in off
    _written(sigmoid_gate, x, y)
    assert config.cpp.enable_loop_tail_vec is True  # back to the default after the nests


def test_idempotent_and_restorable():
    assert inductor_tails.skip_empty_tails()
    wrapped = cpp.CppKernelProxy.codegen_functions
    assert inductor_tails.skip_empty_tails() and cpp.CppKernelProxy.codegen_functions is wrapped
    inductor_tails.restore()
    assert not getattr(cpp.CppKernelProxy.codegen_functions, inductor_tails._PATCHED, False)
    assert inductor_tails.skip_empty_tails()


# A built-in's whole compiled step, with and without the wrapper: tests/runtime/test_inductor_setup.py
