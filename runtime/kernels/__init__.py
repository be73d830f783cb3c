"""Runtime kernels of nestc: differentiable, compile-friendly PyTorch building blocks.

Every op comes as a fast form and a ``naive_*`` token-by-token reference (same signature)
that the tests compare it against, forward and backward.

- :mod:`.delta`: the gated delta rule (linear attention, GLA, DeltaNet, Gated DeltaNet,
  delta gradient descent), chunked.
- :mod:`.scan`: ``h_t = a_t * h_{t-1} + x_t`` as a parallel scan.
- :mod:`.newton_schulz`: Muon's orthogonalization and references.
- :mod:`.conv`: causal depthwise short convolution with streaming state.
- :mod:`.attention`: causal, sliding-window and prefix-memory softmax attention.
"""

from .attention import causal_attention, naive_causal_attention
from .conv import naive_short_conv, short_conv
from .delta import delta_rule, naive_delta_rule
from .newton_schulz import cubic_newton_schulz, newton_schulz, orthogonalize_svd
from .scan import linear_scan, naive_linear_scan

__all__ = [
    "delta_rule",
    "naive_delta_rule",
    "linear_scan",
    "naive_linear_scan",
    "newton_schulz",
    "cubic_newton_schulz",
    "orthogonalize_svd",
    "short_conv",
    "naive_short_conv",
    "causal_attention",
    "naive_causal_attention",
]
