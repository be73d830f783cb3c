"""Learned layers that generated code uses for the outer (pre-training) level: projections, norms,
feed-forward layers, short convolutions, branch aggregation, rotary embeddings.

Every layer that mixes time (the short convolution) takes and returns a streaming state, so a
sequence fed in pieces gives exactly what one long call gives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels.conv import short_conv

INIT_STD = 0.02


class Linear(nn.Linear):
    """A linear projection, initialised N(0, 0.02) (bias zero)."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False):
        super().__init__(d_in, d_out, bias=bias)
        nn.init.normal_(self.weight, std=INIT_STD)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LayerNorm(nn.LayerNorm):
    pass


class SwiGLU(nn.Module):
    """SwiGLU feed-forward: W_out (silu(W_gate x) * W_up x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = Linear(dim, hidden)
        self.up = Linear(dim, hidden)
        self.down = Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


ACTIVATIONS = {
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


class MLP(nn.Module):
    """A learned 2-layer MLP: width -> hidden -> out."""

    def __init__(self, dim: int, hidden: int, out: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, out)
        self.act = ACTIVATIONS[act]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ShortConv(nn.Module):
    """Causal depthwise convolution over time (a "short conv", window W), starting as the identity.

    forward(x, state) -> (y, state): state holds the last W-1 inputs, so feeding a sequence in
    pieces equals one call on the whole sequence.
    """

    def __init__(self, dim: int, window: int):
        super().__init__()
        self.window = window
        # [dim, window] as short_conv expects, stored tap-major (strides (1, dim)): each tap's
        # weights are then a contiguous row. Read as columns of a row-major weight (stride W),
        # they made inductor's C++ backend leave the fused conv-and-activation loops scalar (it
        # stops vectorising a loop nest once 12% of its operations are strided loads). The shape,
        # the state dict and checkpoints are unchanged; load_state_dict copies into this layout.
        weight = torch.zeros(window, dim).t()
        weight[:, -1] = 1.0  # identity at initialisation: the current token only
        self.weight = nn.Parameter(weight)

    def initial_state(self, batch: int) -> Tensor:
        """No history yet: W-1 zero inputs."""
        return self.weight.new_zeros(batch, self.window - 1, self.weight.shape[0])

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return short_conv(x, self.weight, None, state)


class Combine(nn.Module):
    """Aggregate parallel branches (NL Eq. 74): learned softmax weights, a sum or a mean."""

    def __init__(self, n: int, mode: str = "weighted"):
        super().__init__()
        self.mode = mode
        self.logits = nn.Parameter(torch.zeros(n)) if mode == "weighted" else None

    def forward(self, *branches: Tensor) -> Tensor:
        stacked = torch.stack(branches, 0)
        if self.mode == "sum":
            return stacked.sum(0)
        if self.mode == "mean":
            return stacked.mean(0)
        w = torch.softmax(self.logits, 0)
        return torch.einsum("n,n...->...", w, stacked)


def l2norm(x: Tensor, groups: int = 1, eps: float = 1e-6) -> Tensor:
    """Divide by the L2 norm over the last axis, in `groups` equal groups (e.g. per head)."""
    if groups == 1:
        return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)
    shape = x.shape
    g = x.reshape(*shape[:-1], groups, shape[-1] // groups)
    g = g * torch.rsqrt(g.pow(2).sum(-1, keepdim=True) + eps)
    return g.reshape(shape)


def reduce_groups(x: Tensor, groups: int, how: str) -> Tensor:
    """Sum or mean over the last axis in `groups` equal groups: width -> groups."""
    shape = x.shape
    g = x.reshape(*shape[:-1], groups, shape[-1] // groups)
    return g.sum(-1) if how == "sum" else g.mean(-1)


def rope(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of x [B, H, T, D] at integer positions [T]."""
    d = x.shape[-1]
    half = d // 2
    # angles in float32 at least (bf16 positions past 256 would round), in float64 for a float64
    # model: float32 tables made compiled and eager float64 attention differ by an ulp of
    # float32 (~1e-7), the sin/cos of inductor's vector library against ATen's
    table = torch.float64 if x.dtype == torch.float64 else torch.float32
    freqs = base ** (-torch.arange(0, half, dtype=table, device=x.device) / half)
    angles = positions.to(table)[:, None] * freqs[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half: 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    if d % 2:
        rotated = torch.cat([rotated, x[..., -1:]], dim=-1)
    return rotated


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, T, H*d] -> [B, H, T, d]."""
    b, t, w = x.shape
    return x.reshape(b, t, heads, w // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, T, d] -> [B, T, H*d]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def per_head(x: Tensor | float, heads: int, batch: int, length: int) -> Tensor | float:
    """A per-token scalar stream seen per head: width 1 or `heads` -> [B, H, T]; constants pass."""
    if not torch.is_tensor(x):
        return x
    if x.dim() == 3:
        if x.shape[-1] == 1:
            return x[..., 0].unsqueeze(1).expand(batch, heads, length)
        if x.shape[-1] == heads:
            return x.transpose(1, 2)
    raise ValueError(f"expected a per-token scalar of width 1 or {heads}, got shape {tuple(x.shape)}")


def causal_mask_bias(t_q: int, t_k: int, offset: int, window: int | None, device) -> Tensor:
    """Additive mask for queries at positions offset..offset+t_q-1 over keys 0..t_k-1."""
    q = torch.arange(t_q, device=device)[:, None] + offset
    k = torch.arange(t_k, device=device)[None, :]
    ok = k <= q
    if window:
        ok = ok & (k > q - window)
    return torch.where(ok, 0.0, -math.inf)
