"""linear_scan (blocked parallel scan) against naive_linear_scan (step by step)."""

from __future__ import annotations

import pytest
import torch

from kernel_testing import assert_close, assert_fast_matches_naive, graph_breaks
from nestc.runtime.kernels import linear_scan, naive_linear_scan

# name: (x shape, a shape, time dim, chunk)
CASES = {
    "elementwise, T ragged": ((2, 37, 5), (2, 37, 5), -2, 8),
    "T smaller than chunk": ((2, 5, 3), (2, 5, 3), 1, 64),
    "two levels of blocks": ((2, 150, 3), (2, 150, 3), -2, 4),
    "chunk 2": ((1, 9, 2), (1, 9, 2), -2, 2),
    "one gate per token": ((2, 37, 5), (2, 37, 1), -2, 8),
    "per-token scalars [B,H,T]": ((2, 3, 41), (2, 3, 41), -1, 16),
    "[B,H,T,D], gate per head and token": ((2, 3, 20, 4), (2, 3, 20, 1), -2, 8),
    "a shared over batch": ((3, 12, 4), (12, 4), -2, 4),
    "a constant in time": ((3, 12, 4), (1, 4), -2, 4),
    "T = 1": ((2, 1, 3), (2, 1, 3), -2, 4),
}


def make_inputs(x_shape, a_shape, dim, dtype, zero_fraction=0.2, with_h0=True, seed=0):
    """Gates in [0, 1] with exact zeros (resets) sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(a_shape, generator=g, dtype=dtype)
    a = torch.where(torch.rand(a_shape, generator=g, dtype=dtype) < zero_fraction, 0.0, a)
    h0_shape = list(x_shape)
    del h0_shape[dim % len(x_shape)]
    x = torch.randn(x_shape, generator=g, dtype=dtype)
    h0 = torch.randn(h0_shape, generator=g, dtype=dtype).requires_grad_() if with_h0 else None
    return {"a": a.requires_grad_(), "x": x.requires_grad_(), "h0": h0}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "h0=0"])
@pytest.mark.parametrize("case", CASES)
def test_matches_naive(case, with_h0, dtype):
    x_shape, a_shape, dim, chunk = CASES[case]
    inputs = make_inputs(x_shape, a_shape, dim, dtype, with_h0=with_h0)
    assert_fast_matches_naive(linear_scan, naive_linear_scan, inputs, dim=dim, chunk=chunk)


def test_gradient_at_zero_gates_is_exact():
    """d h_t / d a_r at a_r = 0 is (prod_{r<u<=t} a_u) h_{r-1} != 0; a log-space scan that
    masks zeros would lose it. Checked against the loop and against finite differences."""
    inputs = make_inputs((1, 12, 2), (1, 12, 2), -2, torch.float64, zero_fraction=0.5)
    assert (inputs["a"] == 0).any()
    assert_fast_matches_naive(linear_scan, naive_linear_scan, inputs, chunk=4)
    a, x, h0 = (inputs[n].detach() for n in ("a", "x", "h0"))
    assert torch.autograd.gradcheck(
        lambda a_: linear_scan(a_, x, h0, chunk=4)[0], (a.clone().requires_grad_(),)
    )


def test_negative_and_large_coefficients():
    """Nothing assumes a in [0, 1]: signs and growth are carried by plain products."""
    g = torch.Generator().manual_seed(3)
    inputs = {
        "a": (2.2 * torch.rand(2, 40, 3, generator=g, dtype=torch.float64) - 1.1).requires_grad_(),
        "x": torch.randn(2, 40, 3, generator=g, dtype=torch.float64, requires_grad=True),
    }
    assert_fast_matches_naive(linear_scan, naive_linear_scan, inputs, chunk=8)


def test_tiny_gates_long_sequence_fp32():
    """Products of gates near 0 underflow to 0 (correctly) instead of producing inf/nan."""
    a = torch.full((1, 2000, 2), 1e-20)
    a[:, ::7] = 1.0
    x = torch.randn(1, 2000, 2)
    h, last = linear_scan(a, x)
    h_ref, last_ref = naive_linear_scan(a, x)
    assert_close(h, h_ref, 1e-5, "h")
    assert_close(last, last_ref, 1e-5, "last")


def test_last_state_and_streaming():
    inputs = make_inputs((2, 30, 3), (2, 30, 3), -2, torch.float64)
    a, x, h0 = inputs["a"], inputs["x"], inputs["h0"]
    h, last = linear_scan(a, x, h0, chunk=4)
    assert torch.equal(last, h[:, -1])
    h1, last1 = linear_scan(a[:, :13], x[:, :13], h0, chunk=4)
    h2, last2 = linear_scan(a[:, 13:], x[:, 13:], last1, chunk=4)
    assert_close(torch.cat([h1, h2], dim=1), h, 1e-12, "h")
    assert_close(last2, last, 1e-12, "last")


def test_rejects_non_broadcastable_a():
    with pytest.raises(ValueError):
        linear_scan(torch.rand(2, 5, 4), torch.randn(2, 5, 3))


def test_no_graph_breaks():
    inputs = make_inputs((2, 10, 3), (2, 10, 1), -2, torch.float32)
    assert graph_breaks(linear_scan, **inputs, chunk=4) == 0


def test_second_order_gradients():
    inputs = make_inputs((2, 7, 2), (2, 7, 2), -2, torch.float64)
    assert torch.autograd.gradgradcheck(
        lambda a, x, h0: linear_scan(a, x, h0, chunk=2), (inputs["a"], inputs["x"], inputs["h0"])
    )
