"""short_conv (shifted, weighted slices) against naive_short_conv (sliding window loop)."""

from __future__ import annotations

import pytest
import torch

from kernel_testing import assert_close, assert_fast_matches_naive, graph_breaks
from nestc.runtime.kernels import naive_short_conv, short_conv

# (B, T, C, W)
SHAPES = {
    "typical": (2, 13, 6, 4),
    "T shorter than the window": (2, 2, 3, 4),
    "width 1": (2, 5, 3, 1),
    "width 2": (1, 7, 4, 2),
}


def make_inputs(B, T, C, W, dtype, with_bias=True, with_state=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype, requires_grad=True)

    return {
        "x": rand(B, T, C),
        "weight": rand(C, W),
        "bias": rand(C) if with_bias else None,
        "state": rand(B, W - 1, C) if with_state else None,
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no state"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_naive(shape, with_bias, with_state, dtype):
    inputs = make_inputs(*SHAPES[shape], dtype, with_bias, with_state)
    assert_fast_matches_naive(short_conv, naive_short_conv, inputs)


def test_tap_order():
    """The last tap multiplies the current input, the first one the oldest."""
    x = torch.arange(1.0, 6.0).view(1, 5, 1)
    y, state = short_conv(x, torch.tensor([[1.0, 0.0, 0.0]]))
    assert y.flatten().tolist() == [0.0, 0.0, 1.0, 2.0, 3.0]
    y, _ = short_conv(x, torch.tensor([[0.0, 0.0, 1.0]]))
    assert y.flatten().tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert state.flatten().tolist() == [4.0, 5.0]


@pytest.mark.parametrize("split", [1, 2, 7])
@pytest.mark.parametrize("width", [1, 4])
def test_streaming_in_pieces_equals_one_call(split, width):
    inputs = make_inputs(2, 9, 3, width, torch.float64)
    x, weight, bias, state = (inputs[n] for n in ("x", "weight", "bias", "state"))
    y_all, state_all = short_conv(x, weight, bias, state)
    y1, s1 = short_conv(x[:, :split], weight, bias, state)
    y2, s2 = short_conv(x[:, split:], weight, bias, s1)
    assert_close(torch.cat([y1, y2], dim=1), y_all, 1e-12, "y")
    assert_close(s2, state_all, 1e-12, "state")


def test_no_graph_breaks():
    inputs = make_inputs(2, 10, 3, 4, torch.float32)
    assert graph_breaks(short_conv, **inputs) == 0


def test_second_order_gradients():
    inputs = make_inputs(1, 4, 1, 3, torch.float64)
    assert torch.autograd.gradgradcheck(short_conv, tuple(inputs.values()))
