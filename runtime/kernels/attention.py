r"""Causal softmax attention with an optional sliding window and persistent (prefix) memory.

.. math::

    o_t = \sum_{s \in \mathcal{A}(t)}
          \operatorname{softmax}_s\big(\text{scale}\; q_t \cdot k_s\big)\, v_s,

where the allowed keys :math:`\mathcal{A}(t)` are the ``P`` persistent key/value tokens (shared
by every query, as in Titans' persistent memory) plus the sequence tokens
:math:`\max(0, t - \text{window} + 1) \le s \le t` (all :math:`s \le t` without a window).
``scale`` defaults to :math:`1/\sqrt{D}`.

Layout: ``q, k, v [B, H, T, D]``; ``prefix_k, prefix_v [H, P, D]`` (or anything that
broadcasts to ``[B, H, P, D]``).

Higher-order gradients: on CPU, ``scaled_dot_product_attention`` dispatches to a fused
(flash) kernel whose backward cannot itself be differentiated, and whether a second
derivative will be taken is unknown at forward time. ``higher_order=True`` selects SDPA's
math backend (plain matmul + softmax, differentiable to any order, but 3–4.5x slower on CPU
at T = 1024); meta-learning through attention must pass it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["causal_attention", "naive_causal_attention"]


def causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None = None,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
    scale: float | None = None,
    higher_order: bool = False,
) -> Tensor:
    """Causal, optionally windowed and prefixed, attention via ``scaled_dot_product_attention``.

    ``higher_order=True`` makes the result twice (or more) differentiable (see the module
    docstring). Returns ``o [B, H, T, D]``.
    """
    if (prefix_k is None) != (prefix_v is None):
        raise ValueError("prefix_k and prefix_v must be given together")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if higher_order:
        with sdpa_kernel(SDPBackend.MATH):
            return _attention(q, k, v, window, prefix_k, prefix_v, scale)
    return _attention(q, k, v, window, prefix_k, prefix_v, scale)


def _attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    prefix_k: Tensor | None,
    prefix_v: Tensor | None,
    scale: float | None,
) -> Tensor:
    """SDPA with the mask that ``window`` and the prefix call for (none when neither)."""
    if window is None and prefix_k is None:
        # The plain case: let SDPA build the causal mask (and pick a fused kernel).
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    batch, heads, length, _ = q.shape
    allowed = _sequence_mask(length, window, q.device)  # [T, T]
    if prefix_k is not None:
        n_prefix = prefix_k.shape[-2]
        prefix_k = prefix_k.expand(batch, heads, n_prefix, prefix_k.shape[-1])
        prefix_v = prefix_v.expand(batch, heads, n_prefix, prefix_v.shape[-1])
        k = torch.cat([prefix_k, k], dim=2)
        v = torch.cat([prefix_v, v], dim=2)
        # Every query sees every persistent token.
        always = torch.ones(length, n_prefix, dtype=torch.bool, device=q.device)
        allowed = torch.cat([always, allowed], dim=1)  # [T, P + T]
    # A boolean mask: True = may attend. Each row keeps at least its own token, so no row
    # is fully masked (which would give NaN).
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


def _sequence_mask(length: int, window: int | None, device: torch.device) -> Tensor:
    """``[T, T]`` boolean: query t may see token s iff ``t - window < s <= t``."""
    t = torch.arange(length, device=device)[:, None]
    s = torch.arange(length, device=device)[None, :]
    allowed = s <= t
    if window is not None:
        allowed = allowed & (s > t - window)
    return allowed


def naive_causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None = None,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
    scale: float | None = None,
    higher_order: bool = False,
) -> Tensor:
    """Query-by-query reference for :func:`causal_attention` with an explicit softmax
    (always differentiable to any order; ``higher_order`` is accepted and ignored)."""
    batch, heads, length, dim = q.shape
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    outputs = []
    for t, q_t in enumerate(q.unbind(2)):  # unbind: one stacked gradient, not one per query
        first = 0 if window is None else max(0, t - window + 1)
        keys, values = k[:, :, first : t + 1], v[:, :, first : t + 1]
        if prefix_k is not None:
            n_prefix = prefix_k.shape[-2]
            keys = torch.cat([prefix_k.expand(batch, heads, n_prefix, dim), keys], dim=2)
            prefix_values = prefix_v.expand(batch, heads, n_prefix, v.shape[-1])
            values = torch.cat([prefix_values, values], dim=2)
        scores = (keys @ q_t[..., None])[..., 0] * scale  # [B, H, S]
        weights = (scores - scores.amax(dim=-1, keepdim=True)).exp()
        weights = weights / weights.sum(dim=-1, keepdim=True)
        outputs.append((weights[..., None] * values).sum(dim=2))
    return torch.stack(outputs, dim=2)
