r"""Approximate orthogonalization :math:`G = U \Sigma V^\top \mapsto U V^\top` (Muon / M3).

Muon's quintic Newton–Schulz iteration normalises :math:`X_0 = G / \lVert G \rVert_F` (so every
singular value is in (0, 1]) and applies, ``steps`` times,

.. math::

    A = X X^\top, \qquad X \leftarrow a X + (b A + c A^2) X ,

which maps each singular value through :math:`p(\sigma) = a\sigma + b\sigma^3 + c\sigma^5`.
With the default :math:`(a, b, c) = (3.4445, -4.7750, 2.0315)` the slope at 0 is large (small
singular values grow fast) at the price of not converging to exactly 1: after a few steps the
singular values oscillate in roughly [0.7, 1.2] instead (see
``tests/kernels/test_newton_schulz.py``).
The wide side is kept last (a transpose when rows > cols) so that :math:`A` is the smaller Gram
matrix.

:func:`newton_schulz` reproduces ``torch.optim.Muon``'s ``_zeropower_via_newtonschulz`` exactly
for 2-D input (same dtype cast, transpose rule, eps clamp of the Frobenius norm, and the same
``addmm`` calls, so the same roundings) and extends it to batches ``[..., m, n]`` with
``baddbmm``. :func:`cubic_newton_schulz` is the classical cubic iteration
:math:`X \leftarrow \tfrac12 X (3I - X^\top X)`, which converges to :math:`UV^\top` but slowly
for small singular values; :func:`orthogonalize_svd` is the exact float64 reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["newton_schulz", "cubic_newton_schulz", "orthogonalize_svd"]

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = torch.bfloat16,
) -> Tensor:
    """Muon's quintic Newton–Schulz orthogonalization of ``G [..., m, n]``.

    Args:
        G: a matrix or a batch of matrices (each orthogonalized on its own).
        steps: number of iterations.
        coefficients: ``(a, b, c)`` of ``p(σ) = aσ + bσ³ + cσ⁵``.
        eps: lower clamp of the Frobenius norm (an all-zero ``G`` maps to zeros).
        dtype: compute dtype (Muon uses bfloat16); ``None`` keeps ``G.dtype``.

    Returns:
        ``≈ U S' Vᵀ`` with ``S'`` near 1, in the compute dtype, shaped like ``G``.
        ``G`` is never modified (Muon's in-place division would write into a bf16 ``G``).
    """
    if G.dim() < 2:
        raise ValueError(f"newton_schulz needs a (batch of) matrices, got {tuple(G.shape)}")
    a, b, c = coefficients
    X = G if dtype is None else G.to(dtype)
    tall = G.shape[-2] > G.shape[-1]
    if tall:
        X = X.transpose(-2, -1)
    # Frobenius norm per matrix; spectral norm <= Frobenius norm, so all singular values <= 1.
    # (A 2-D matrix uses the whole-tensor norm, the very reduction Muon calls.)
    norm = X.norm() if X.dim() == 2 else X.norm(dim=(-2, -1), keepdim=True)
    X = X / norm.clamp(min=eps)
    if X.dim() == 2:
        # The exact kernels Muon calls, so the bf16 roundings agree bit for bit.
        for _ in range(steps):
            A = X @ X.T
            B = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, B, X, beta=a)
    else:
        batch_shape = X.shape[:-2]
        X = X.reshape(-1, *X.shape[-2:])
        for _ in range(steps):
            A = X @ X.transpose(-2, -1)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
        X = X.reshape(*batch_shape, *X.shape[-2:])
    if tall:
        X = X.transpose(-2, -1)
    return X


def cubic_newton_schulz(
    G: Tensor, steps: int, eps: float = 1e-7, dtype: torch.dtype | None = None
) -> Tensor:
    r"""Cubic Newton–Schulz: :math:`X \leftarrow \tfrac32 X - \tfrac12 X X^\top X`, ``steps`` times.

    Each singular value follows :math:`\sigma \mapsto \tfrac12\sigma(3 - \sigma^2)`, which
    converges to 1 for :math:`\sigma \in (0, \sqrt3)`, but only grows by ×1.5 per step when
    :math:`\sigma` is small. Same normalisation and transpose rule as :func:`newton_schulz`;
    ``dtype=None`` keeps ``G.dtype``.
    """
    X = G if dtype is None else G.to(dtype)
    tall = G.shape[-2] > G.shape[-1]
    if tall:
        X = X.transpose(-2, -1)
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        X = 1.5 * X - 0.5 * (X @ X.transpose(-2, -1)) @ X
    if tall:
        X = X.transpose(-2, -1)
    return X


def orthogonalize_svd(G: Tensor) -> Tensor:
    """Exact polar factor ``U Vᵀ`` of ``G [..., m, n]`` (thin SVD), in float64."""
    U, _, Vh = torch.linalg.svd(G.to(torch.float64), full_matrices=False)
    return U @ Vh
