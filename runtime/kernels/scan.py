r"""First-order linear recurrences with elementwise coefficients.

.. math::

    h_t = a_t \odot h_{t-1} + x_t, \qquad h_{-1} = h_0 \text{ (zeros by default)},

along one time axis (``dim``; default ``-2``, the ``T`` of ``[B, T, C]`` and
``[B, H, T, D]``; pass ``dim=-1`` for per-token scalar sequences ``[B, H, T]``).
``a`` broadcasts against ``x`` (e.g. one decay per token shared by all features,
``a: [B, T, 1]`` with ``x: [B, T, C]``).

Why not ``exp(cumsum(log a))``? Gates in ``[0, 1]`` may be exactly 0 (a reset), where
``log a = -inf`` turns the ratio of cumulative products into ``-inf - (-inf) = nan``, and
its derivative ``1/a`` is infinite; masking the zeros away would silently zero the true
gradient ``d h_t / d a_r = (prod_{r<u<=t} a_u) h_{r-1}``. Dividing cumulative products
has the same problem and also loses precision when they underflow.

This module uses none of it: the recurrence is the associative operator

.. math::

    (A_1, X_1) \circ (A_2, X_2) = (A_2 A_1,\; A_2 X_1 + X_2)

(apply segment 1, then segment 2), evaluated as a blocked parallel prefix scan: within
blocks of ``chunk`` steps a Hillis–Steele scan combines each position with the one
``d = 1, 2, 4, ...`` steps back (``log2(chunk)`` multiply-adds over the whole tensor); the
block totals form a sequence ``chunk`` times shorter, scanned the same way (recursively), and
the state entering each block is fed back. Only products and sums of the same numbers as the
sequential loop appear (in a different association order), so the result is exact up to
rounding for any real ``a`` (zeros, negatives), products that underflow go to 0 as they
should, and autograd differentiates plain multiplications.

Work is ``O(T log2(chunk))`` elementwise operations over ``log_chunk(T)`` levels; small blocks
(the default 4) keep it close to the loop's ``O(T)``. Internally time is the leading axis, so
every operation runs over contiguous feature vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linear_scan", "naive_linear_scan"]


def linear_scan(
    a: Tensor, x: Tensor, h0: Tensor | None = None, dim: int = -2, chunk: int = 4
) -> tuple[Tensor, Tensor]:
    """All states of ``h_t = a_t * h_{t-1} + x_t`` along ``dim``, by a blocked parallel scan.

    Args:
        a: coefficients, broadcastable to ``x`` (any real values; typically gates in [0, 1]).
        x: inputs; ``x.shape[dim]`` is the number of steps ``T``.
        h0: state before the first step, shaped like ``x`` without the time axis
            (broadcastable); ``None`` means zeros.
        dim: the time axis of ``x`` (``a`` is aligned to ``x`` from the right, as in
            broadcasting, so the same ``dim`` applies to it).
        chunk: block length of the within-block scan, ``>= 2`` (a speed knob, not a
            semantic one).

    Returns:
        ``(h, h_last)``: every state, shaped like ``x``, and the last one, ``h.select(dim, -1)``.
    """
    if chunk < 2:
        raise ValueError(f"chunk must be >= 2 (blocks of 1 would never shrink), got {chunk}")
    a, x, time_dim = _time_first(a, x, dim)
    if h0 is not None:
        # Fold the initial state into the first input: h_0 = a_0 h0 + x_0.
        first = torch.addcmul(x[:1], a[:1], h0.unsqueeze(0))
        x = torch.cat([first, x[1:]], dim=0)
    h = _blocked_scan(a, x, chunk).movedim(0, time_dim)
    return h, h.select(time_dim, -1)


def _time_first(a: Tensor, x: Tensor, dim: int) -> tuple[Tensor, Tensor, int]:
    """Align ``a`` with ``x`` and move the time axis first. ``a`` keeps its broadcast (smaller)
    shape in every other axis, which saves work when one gate is shared by many features."""
    time_dim = dim % x.dim()
    fits = a.dim() <= x.dim() and all(
        n in (1, m) for n, m in zip(reversed(a.shape), reversed(x.shape))
    )
    if not fits:
        raise ValueError(f"a {tuple(a.shape)} must broadcast to x {tuple(x.shape)}")
    a = a.reshape((1,) * (x.dim() - a.dim()) + tuple(a.shape))
    if a.shape[time_dim] != x.shape[time_dim]:
        # One coefficient for all steps still needs one entry per step for the products.
        sizes = list(a.shape)
        sizes[time_dim] = x.shape[time_dim]
        a = a.expand(sizes)
    return a.movedim(time_dim, 0), x.movedim(time_dim, 0), time_dim


def _blocked_scan(a: Tensor, x: Tensor, chunk: int) -> Tensor:
    """Inclusive scan along axis 0 (``h0 = 0``): within blocks, then across them."""
    length = x.shape[0]
    if length <= chunk:
        return _hillis_steele(a.unsqueeze(0), x.unsqueeze(0))[1].squeeze(0)
    n_blocks = -(-length // chunk)
    pad = n_blocks * chunk - length
    if pad:
        # Padding steps are identities (a = 1, x = 0); they come last and are cut off.
        a = torch.cat([a, a.new_ones((pad,) + a.shape[1:])])
        x = torch.cat([x, x.new_zeros((pad,) + x.shape[1:])])
    a = a.unflatten(0, (n_blocks, chunk))
    x = x.unflatten(0, (n_blocks, chunk))
    through, local = _hillis_steele(a, x)  # products and states from each block's start
    # State at the end of each block: a scan of the block totals (shorter, so recurse).
    ends = _blocked_scan(through[:, -1], local[:, -1], chunk)
    entering = torch.cat([torch.zeros_like(ends[:1]), ends[:-1]])  # 0 for the first block
    h = torch.addcmul(local, through, entering.unsqueeze(1))
    return h.flatten(0, 1)[:length]


def _hillis_steele(a: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of the pairs ``(a_t, x_t)`` along axis 1 of ``[blocks, steps, ...]``.

    Returns ``(prod_{s<=t} a_s, h_t with h_{-1} = 0)`` per block. After the step with offset
    ``d``, position ``t`` summarises the ``2d`` steps ending at ``t`` (all of them, near the
    start).
    """
    length = x.shape[1]
    offset = 1
    while offset < length:
        # The first `offset` positions have nothing that far back and stay as they are
        # (keeping them by cat is one memory pass cheaper than shifting in an identity).
        combined = torch.addcmul(x[:, offset:], a[:, offset:], x[:, :-offset])
        x = torch.cat([x[:, :offset], combined], dim=1)
        a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    return a, x


def naive_linear_scan(
    a: Tensor, x: Tensor, h0: Tensor | None = None, dim: int = -2, chunk: int = 4
) -> tuple[Tensor, Tensor]:
    """Step-by-step reference for :func:`linear_scan` (same signature; ``chunk`` is ignored)."""
    time_dim = dim % x.dim()
    a = a.reshape((1,) * (x.dim() - a.dim()) + tuple(a.shape))
    # unbind, not indexing: its backward stacks the step gradients once instead of
    # materialising a full-size zero gradient per step.
    steps = x.unbind(time_dim)
    gates = a.unbind(time_dim) if a.shape[time_dim] > 1 else [a.select(time_dim, 0)] * len(steps)
    h = torch.zeros_like(steps[0]) if h0 is None else h0
    states = []
    for a_t, x_t in zip(gates, steps):
        h = a_t * h + x_t
        states.append(h)
    return torch.stack(states, dim=time_dim), h
