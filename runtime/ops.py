"""Small operations generated code uses between streams and boxes (imported there as `R`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .layers import merge_heads, split_heads  # noqa: F401  (re-exported for generated code)


def conv(module, x: Tensor, state: dict, key: str) -> Tensor:
    """Apply a short convolution, carrying its streaming state in `state[key]`."""
    y, state[key] = module(x, state.get(key))
    return y


def heads(x, n: int):
    """A block stream [B, T, W] seen per head: [B, H, T, W/H]; width 1 broadcasts to every head."""
    if not torch.is_tensor(x):
        return x
    if x.shape[-1] == 1 and n > 1:
        return x.unsqueeze(1)
    return split_heads(x, n)


def per_head(x, n: int):
    """A per-token scalar stream (width 1 or one per head) as [B, H, T]; constants pass through."""
    if not torch.is_tensor(x):
        return x
    if x.shape[-1] == 1:
        return x[..., 0].unsqueeze(1).expand(x.shape[0], n, x.shape[1])
    if x.shape[-1] == n:
        return x.transpose(1, 2)
    raise ValueError(f"expected a per-token scalar of width 1 or {n}, got {tuple(x.shape)}")


def minimum(a, b):
    if torch.is_tensor(a) and torch.is_tensor(b):
        return torch.minimum(a, b)
    if torch.is_tensor(a):
        return torch.clamp(a, max=b)
    if torch.is_tensor(b):
        return torch.clamp(b, max=a)
    return min(a, b)


def maximum(a, b):
    if torch.is_tensor(a) and torch.is_tensor(b):
        return torch.maximum(a, b)
    if torch.is_tensor(a):
        return torch.clamp(a, min=b)
    if torch.is_tensor(b):
        return torch.clamp(b, min=a)
    return max(a, b)


def huber(d: Tensor, delta) -> Tensor:
    """Element-wise Huber: d²/2 inside [-delta, delta], delta (|d| - delta/2) outside."""
    a = d.abs()
    return torch.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))


def segment_bounds(length: int, period: int, offset: int) -> list[tuple[int, int]]:
    """(start, end) of the pieces of a stream cut at a box's chunk boundaries."""
    from .memory import segments

    return [(s, e) for s, e, _ in segments(length, period, offset)]
