"""causal_attention (SDPA + mask) against naive_causal_attention (explicit softmax per query)."""

from __future__ import annotations

import pytest
import torch

from kernel_testing import assert_close, assert_fast_matches_naive, graph_breaks
from nestc.runtime.kernels import causal_attention, naive_causal_attention

# name: (window, number of prefix tokens, scale)
VARIANTS = {
    "causal": (None, 0, None),
    "window 3": (3, 0, None),
    "window 1": (1, 0, None),
    "prefix 2": (None, 2, None),
    "window 4 + prefix 3, scale": (4, 3, 0.3),
}


def make_inputs(B, H, T, D, n_prefix, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype, requires_grad=True)

    return {
        "q": rand(B, H, T, D),
        "k": rand(B, H, T, D),
        "v": rand(B, H, T, D),
        "prefix_k": rand(H, n_prefix, D) if n_prefix else None,
        "prefix_v": rand(H, n_prefix, D) if n_prefix else None,
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T", [1, 11])
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_naive(variant, T, dtype):
    window, n_prefix, scale = VARIANTS[variant]
    inputs = make_inputs(2, 3, T, 4, n_prefix, dtype)
    assert_fast_matches_naive(
        causal_attention, naive_causal_attention, inputs, window=window, scale=scale
    )


def test_window_one_returns_values():
    inputs = make_inputs(1, 2, 6, 4, 0, torch.float64)
    o = causal_attention(inputs["q"], inputs["k"], inputs["v"], window=1)
    assert_close(o, inputs["v"], 1e-12, "o")


def test_window_as_long_as_the_sequence_is_plain_causal():
    inputs = make_inputs(1, 2, 6, 4, 0, torch.float64)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    assert_close(causal_attention(q, k, v, window=6), causal_attention(q, k, v), 1e-12, "o")


def test_prefix_with_batch_dimension_broadcasts_the_same():
    inputs = make_inputs(2, 3, 5, 4, 2, torch.float64)
    o = causal_attention(**inputs)
    batched = dict(inputs, prefix_k=inputs["prefix_k"].expand(2, 3, 2, 4),
                   prefix_v=inputs["prefix_v"].expand(2, 3, 2, 4))
    assert_close(causal_attention(**batched), o, 1e-12, "o")


def test_prefix_needs_both_halves():
    inputs = make_inputs(1, 1, 3, 4, 2, torch.float32)
    with pytest.raises(ValueError):
        causal_attention(inputs["q"], inputs["k"], inputs["v"], prefix_k=inputs["prefix_k"])


@pytest.mark.parametrize("variant", ["causal", "window 4 + prefix 3, scale"])
def test_second_order_gradients_with_higher_order(variant):
    """The fused CPU kernel has no double backward; higher_order=True must provide one."""
    window, n_prefix, scale = VARIANTS[variant]
    inputs = make_inputs(1, 1, 5, 2, n_prefix, torch.float64)
    names = [n for n, t in inputs.items() if t is not None]
    def attention(*tensors):
        return causal_attention(
            **dict(zip(names, tensors)), window=window, scale=scale, higher_order=True
        )

    assert torch.autograd.gradgradcheck(attention, tuple(inputs[n] for n in names))


def test_higher_order_gives_the_same_result():
    inputs = make_inputs(2, 3, 9, 4, 2, torch.float64)
    o_fast = causal_attention(**inputs, window=3)
    o_math = causal_attention(**inputs, window=3, higher_order=True)
    assert_close(o_math, o_fast, 1e-12, "o")


@pytest.mark.parametrize("variant", ["causal", "window 4 + prefix 3, scale"])
def test_no_graph_breaks(variant):
    window, n_prefix, scale = VARIANTS[variant]
    inputs = make_inputs(1, 2, 8, 4, n_prefix, torch.float32)
    for higher_order in (False, True):
        options = dict(window=window, scale=scale, higher_order=higher_order)
        assert graph_breaks(causal_attention, **inputs, **options) == 0


# ---------------------------------------------------------------------------- rotary embeddings

def _rope_by_hand(x, positions, base=10000.0):
    """Rotary embedding written out in float64: pair i of each vector (elements i and i + D/2)
    turned by the angle position * base^(-i / (D/2))."""
    half = x.shape[-1] // 2
    i = torch.arange(half, dtype=torch.float64)
    angle = positions.double()[:, None] * base ** (-i / half)
    c, s = torch.cos(angle), torch.sin(angle)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


def test_rope_of_a_float64_model_is_float64_eager_and_compiled():
    """Its angle tables were float32 whatever the model's precision: a float64 model's positions
    past a few hundred were off by ~1e-5, and compiled attention differed from eager by ~1e-7
    (inductor's vector sin/cos against ATen's, an ulp of float32 apart)."""
    from nestc.runtime.layers import rope

    x = torch.randn(2, 3, 600, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(400, 1000)
    eager = rope(x, positions)
    torch._dynamo.reset()
    compiled = torch.compile(rope, fullgraph=True)(x, positions)
    torch.testing.assert_close(eager, _rope_by_hand(x, positions), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)


def test_rope_of_a_float32_model_keeps_float32_tables():
    from nestc.runtime.layers import rope

    x = torch.randn(1, 1, 300, 8, generator=torch.Generator().manual_seed(1))
    positions = torch.arange(300)
    out = rope(x, positions)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _rope_by_hand(x.double(), positions).float(), rtol=1e-4, atol=1e-4)
