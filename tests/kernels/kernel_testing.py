"""Shared checks for the kernel tests: run a fast op and its naive reference on the same
inputs, then compare outputs and the gradients of a fixed random projection of them."""

from __future__ import annotations

from typing import Callable

import torch

# max |fast - naive| <= TOL * max |naive|: relative to the size of the whole result, so entries
# near zero do not make an elementwise relative test meaningless, and a result that is small
# overall (a gradient that passed many decays) is still checked to TOL of its size. Only an
# exactly-zero reference is compared absolutely.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def run_with_grads(fn: Callable, inputs: dict, **options) -> tuple[list, list]:
    """Outputs of ``fn(**inputs, **options)`` (None outputs dropped) and the gradients of
    ``sum_i <out_i, R_i>`` with respect to every input that requires grad, for fixed random
    ``R_i`` (seeded, so the naive and fast runs use the same ones)."""
    result = fn(**inputs, **options)
    outputs = [o for o in (result if isinstance(result, tuple) else (result,)) if o is not None]
    generator = torch.Generator().manual_seed(1234)
    loss = sum(
        (o * torch.randn(o.shape, generator=generator, dtype=o.dtype)).sum() for o in outputs
    )
    leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    # An input the result does not depend on (e.g. a_0 when h0 = 0) gets a zero gradient.
    grads = torch.autograd.grad(loss, leaves, materialize_grads=True) if leaves else []
    return outputs, list(grads)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    scale = scale if scale > 0 else 1.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs diff {err:.3g} > {tol:.1g} * {scale:.3g}"


def assert_fast_matches_naive(fast: Callable, naive: Callable, inputs: dict, **options) -> None:
    """Forward outputs and gradients w.r.t. every differentiable input agree."""
    dtype = next(t.dtype for t in inputs.values() if isinstance(t, torch.Tensor))
    tol = TOLERANCE[dtype]
    fast_out, fast_grads = run_with_grads(fast, inputs, **options)
    naive_out, naive_grads = run_with_grads(naive, inputs, **options)
    assert len(fast_out) == len(naive_out)
    for i, (a, b) in enumerate(zip(fast_out, naive_out)):
        assert_close(a, b, tol, f"output {i}")
    names = [n for n, t in inputs.items() if isinstance(t, torch.Tensor) and t.requires_grad]
    for name, a, b in zip(names, fast_grads, naive_grads):
        assert_close(a, b, tol, f"grad of {name}")


def graph_breaks(fn: Callable, *args, **kwargs) -> int:
    """Number of graph breaks when Dynamo traces ``fn`` (0 = fullgraph-compilable)."""
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args, **kwargs).graph_break_count
