r"""Causal depthwise short convolution with a streaming state.

For every channel ``c`` with a window of ``W`` taps,

.. math::

    y_t = \sum_{j=0}^{W-1} w_{c,j}\, x_{t-(W-1)+j} \;(+\, \text{bias}_c),

so tap ``W-1`` multiplies the current input and tap 0 the oldest. The ``W-1`` inputs before
the first one come from ``state`` (zeros when ``None``), and the returned state holds the last
``W-1`` inputs, so running on ``[x1, x2]`` piece by piece, passing the state along, equals one
call on their concatenation.

Layout: ``x [B, T, C]``, ``weight [C, W]``, ``bias [C]``, state ``[B, W-1, C]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["short_conv", "naive_short_conv"]


def short_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Causal depthwise convolution of ``x [B, T, C]`` with ``weight [C, W]``.

    Returns ``(y [B, T, C], new_state [B, W-1, C])``.
    """
    batch, length, channels = x.shape
    width = weight.shape[-1]
    if state is None:
        state = x.new_zeros(batch, width - 1, channels)
    # History first, then the new inputs: position t + j of `padded` is x_{t-(W-1)+j}.
    padded = torch.cat([state, x], dim=1)  # [B, W-1+T, C]
    # The sum above as W shifted, weighted slices rather than a depthwise F.conv1d: for windows
    # of a few taps the pointwise form is faster in eager (forward + backward 3.7 vs 5.2 ms at
    # B 4, T 512, C 256: benchmarks/kernels.py --op short_conv), and under torch.compile inductor
    # fuses it into its neighbours, where conv1d stays an opaque oneDNN call with a slow backward.
    y = padded[:, :length] * weight[:, 0]
    for j in range(1, width):
        y = y + padded[:, j : j + length] * weight[:, j]
    if bias is not None:
        y = y + bias
    new_state = padded[:, padded.shape[1] - (width - 1) :]
    return y, new_state


def naive_short_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token reference for :func:`short_conv`: a sliding window over the history."""
    batch, length, channels = x.shape
    width = weight.shape[-1]
    window = [x.new_zeros(batch, channels) for _ in range(width - 1)]
    if state is not None:
        window = list(state.unbind(1))
    outputs = []
    for x_t in x.unbind(1):
        window = window + [x_t]  # oldest first, the current input last
        y_t = sum(weight[:, j] * window[j] for j in range(width))
        if bias is not None:
            y_t = y_t + bias
        outputs.append(y_t)
        window = window[1:]
    new_state = torch.stack(window, dim=1) if width > 1 else x.new_zeros(batch, 0, channels)
    return torch.stack(outputs, dim=1), new_state
