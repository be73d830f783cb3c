"""delta_rule (chunked) against naive_delta_rule (token by token), forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from kernel_testing import assert_close, assert_fast_matches_naive, graph_breaks
from nestc.runtime.kernels import delta_rule, naive_delta_rule
from nestc.runtime.kernels.delta import delta_rule_step

# (B, H, T, Dk, Dv, chunk)
SHAPES = {
    "T multiple of chunk": (2, 2, 24, 8, 8, 8),
    "T ragged": (2, 2, 37, 8, 6, 16),
    "T smaller than chunk": (1, 2, 5, 4, 4, 16),
    "chunk 1": (2, 1, 9, 4, 3, 1),
    # 2 * chunk <= Dk: the transition stays factored (a deep memory's hidden layer, Hope)
    "short chunks, wide keys": (2, 2, 22, 16, 8, 4),
}
# Which optional inputs are given: (b, log_g).
VARIANTS = {
    "linear attention": (False, False),
    "gated linear attention": (False, True),
    "DeltaNet": (True, False),
    "gated DeltaNet": (True, True),
}


def make_inputs(B, H, T, Dk, Dv, dtype, use_b=True, use_g=True, use_state=True, decay=1.0, seed=0):
    """Keys are unit vectors and b in (0, 1), the regime (contractive transitions) these
    models run in; log_g in [-decay, 0]."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    inputs = {
        "q": rand(B, H, T, Dk),
        "k": F.normalize(rand(B, H, T, Dk), dim=-1),
        "v": rand(B, H, T, Dv),
        "b": torch.rand(B, H, T, generator=g, dtype=dtype) if use_b else None,
        "log_g": -decay * torch.rand(B, H, T, generator=g, dtype=dtype) if use_g else None,
        "initial_state": rand(B, H, Dv, Dk) if use_state else None,
    }
    return {n: (t.requires_grad_() if t is not None else None) for n, t in inputs.items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("use_state", [False, True], ids=["S0=0", "S0"])
@pytest.mark.parametrize("inclusive", [True, False], ids=["inclusive", "exclusive"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_naive(shape, variant, inclusive, use_state, dtype):
    B, H, T, Dk, Dv, chunk = SHAPES[shape]
    use_b, use_g = VARIANTS[variant]
    inputs = make_inputs(B, H, T, Dk, Dv, dtype, use_b, use_g, use_state)
    assert_fast_matches_naive(
        delta_rule, naive_delta_rule, inputs, chunk=chunk, inclusive=inclusive
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_state_only_when_q_is_none(dtype):
    inputs = make_inputs(2, 2, 21, 4, 5, dtype)
    inputs["q"] = None
    assert_fast_matches_naive(delta_rule, naive_delta_rule, inputs, chunk=8)
    # The gradient that reaches initial_state has passed 21 gates (log_g in [-1, 0]): its largest
    # entry is about 6e-5 (fp32) / 9e-6 (fp64), so it is only checked because assert_close's
    # tolerance is relative to the reference's size (measured: 3e-7 fp32, 1e-15 fp64).
    o, state = delta_rule(**inputs, chunk=8)
    assert o is None and state.shape == (2, 2, 5, 4)


def test_strong_decay_stays_finite():
    """Cumulative log-gates of -30 per token reach -1900 within a chunk in fp32: only
    differences <= 0 are ever exponentiated, so values and gradients stay finite."""
    inputs = make_inputs(1, 2, 70, 8, 8, torch.float32, decay=30.0)
    assert_fast_matches_naive(delta_rule, naive_delta_rule, inputs, chunk=64)


def test_b_none_equals_b_zero():
    """The cheap b = None path (no solve) is the b = 0 case of the general path."""
    inputs = make_inputs(2, 2, 19, 4, 4, torch.float64, use_b=False)
    o_cheap, s_cheap = delta_rule(**inputs, chunk=8)
    inputs["b"] = torch.zeros(2, 2, 19, dtype=torch.float64)
    o_full, s_full = delta_rule(**inputs, chunk=8)
    assert_close(o_cheap, o_full, 1e-12, "o")
    assert_close(s_cheap, s_full, 1e-12, "state")


def test_streaming_two_pieces_equals_one_call():
    inputs = make_inputs(1, 2, 30, 4, 4, torch.float64)
    o_all, s_all = delta_rule(**inputs, chunk=8)

    def piece(lo, hi):
        return {n: inputs[n][:, :, lo:hi] for n in ("q", "k", "v", "b", "log_g")}

    o1, s1 = delta_rule(**piece(0, 11), initial_state=inputs["initial_state"], chunk=8)
    o2, s2 = delta_rule(**piece(11, 30), initial_state=s1, chunk=8)
    assert_close(torch.cat([o1, o2], dim=2), o_all, 1e-12, "o")
    assert_close(s2, s_all, 1e-12, "state")


def test_broadcast_scalars():
    """One b / log_g per head (shape [1, H, 1]) broadcasts over batch and time."""
    inputs = make_inputs(2, 3, 10, 4, 4, torch.float64)
    inputs["b"] = torch.rand(1, 3, 1, dtype=torch.float64, requires_grad=True)
    inputs["log_g"] = -torch.rand(1, 3, 1, dtype=torch.float64).requires_grad_()
    assert_fast_matches_naive(delta_rule, naive_delta_rule, inputs, chunk=4)


@settings(max_examples=20, deadline=None)
@given(
    T=st.integers(1, 24),
    chunk=st.integers(1, 10),
    inclusive=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_length_and_chunk(T, chunk, inclusive, seed):
    """The result does not depend on where the chunk boundaries fall (forward, fp64)."""
    inputs = make_inputs(1, 1, T, 3, 2, torch.float64, seed=seed)
    with torch.no_grad():
        o, s = delta_rule(**inputs, chunk=chunk, inclusive=inclusive)
        o_ref, s_ref = naive_delta_rule(**inputs, inclusive=inclusive)
    assert_close(o, o_ref, 1e-9, "o")
    assert_close(s, s_ref, 1e-9, "state")


@pytest.mark.parametrize("variant", ["gated DeltaNet", "linear attention"])
def test_no_graph_breaks(variant):
    use_b, use_g = VARIANTS[variant]
    inputs = make_inputs(1, 2, 10, 4, 4, torch.float32, use_b, use_g)
    assert graph_breaks(delta_rule, **inputs, chunk=4) == 0


def test_second_order_gradients():
    """Meta-learning differentiates through the kernel's backward (gradgradcheck, fp64)."""
    inputs = make_inputs(1, 1, 4, 2, 2, torch.float64)
    names = list(inputs)
    assert torch.autograd.gradgradcheck(
        lambda *t: delta_rule(**dict(zip(names, t)), chunk=2), tuple(inputs.values())
    )


def _step_with_reads(k, v, b, log_g, initial_state):
    """delta_rule_step as a deep memory calls it: the reads S_0 k_t computed from the state itself,
    so the gradient reaches S_0 through them as well as through the carried term."""
    reads = torch.einsum("bhtk,bhvk->bhtv", k, initial_state)
    return delta_rule_step(k, v, b, log_g, initial_state, reads)


def _naive_state(k, v, b, log_g, initial_state):
    return naive_delta_rule(None, k, v, b=b, log_g=log_g, initial_state=initial_state)[1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("use_g", [False, True], ids=["no decay", "decay"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 16, 24), (1, 2, 1, 4, 4), (2, 1, 5, 64, 8)],
                         ids=["8 tokens", "1 token", "wide keys"])
def test_one_chunk_step_with_given_reads_matches_naive(shape, use_g, dtype):
    """delta_rule_step (M S_0 from the caller's reads, one solve) against the token-by-token
    recurrence: the state after the chunk and the gradients of k, v, b, log_g and S_0."""
    B, H, T, Dk, Dv = shape
    inputs = make_inputs(B, H, T, Dk, Dv, dtype, use_g=use_g, decay=0.5)
    inputs.pop("q")
    assert_fast_matches_naive(_step_with_reads, _naive_state, inputs)


def test_one_chunk_step_second_order_gradients():
    inputs = make_inputs(1, 1, 3, 2, 2, torch.float64)
    inputs.pop("q")
    names = list(inputs)
    assert torch.autograd.gradgradcheck(lambda *t: _step_with_reads(**dict(zip(names, t))),
                                        tuple(inputs.values()))


@pytest.mark.parametrize("use_g", [False, True], ids=["no decay", "decay"])
def test_one_chunk_step_returns_the_state_in_its_own_layout(use_g):
    """A deep memory carries this state from chunk to chunk, and loop mode "call" makes every
    carried state contiguous, so a state returned as a transposed view would be copied (and
    transposed) once per chunk: the new state comes back contiguous like the one it came from,
    in the forward and in the gradient it sends back to S_0."""
    inputs = make_inputs(2, 3, 8, 16, 24, torch.float32, use_g=use_g, decay=0.5)
    inputs.pop("q")
    state = _step_with_reads(**inputs)
    assert state.shape == inputs["initial_state"].shape and state.is_contiguous()
    state.sum().backward()
    assert inputs["initial_state"].grad.is_contiguous()
