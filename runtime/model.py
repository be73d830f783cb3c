"""The language-model shell around the generated layers: embedding, layer stack, final norm, head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .context import Ctx
from .layers import INIT_STD, LayerNorm, RMSNorm


class LanguageModel(nn.Module):
    """tokens [B, T] -> logits [B, T, vocab], with a per-layer state for in-context memories."""

    def __init__(self, vocab: int, dim: int, layers: list[nn.Module], norm: str = "rmsnorm",
                 tie_embeddings: bool = True):
        super().__init__()
        self.vocab, self.dim = vocab, dim
        self.embed = nn.Embedding(vocab, dim)
        nn.init.normal_(self.embed.weight, std=INIT_STD)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(dim) if norm == "rmsnorm" else (LayerNorm(dim) if norm == "layernorm" else nn.Identity())
        self.tie_embeddings = tie_embeddings
        if not tie_embeddings:
            self.head = nn.Linear(dim, vocab, bias=False)
            nn.init.normal_(self.head.weight, std=INIT_STD)

    def initial_state(self, batch: int) -> list[dict]:
        return [layer.initial_state(batch) for layer in self.layers]

    def lss_sites(self) -> list[tuple[str, int]]:
        """(key, width) of every box output that learns from a local surprise signal."""
        sites = []
        for i, layer in enumerate(self.layers):
            for name, width in getattr(layer, "LSS_SITES", ()):
                sites.append((f"{i}.{name}", width))
        return sites

    def lss_moved_by_zero(self) -> list[tuple[str, str]]:
        """(key, why) of every lss box that a zero signal would still move off its initial state."""
        return [(f"{i}.{name}", why) for i, layer in enumerate(self.layers)
                for name, why in getattr(layer, "LSS_MOVED_BY_ZERO", ())]

    def lss_periods(self) -> dict[str, int]:
        """key -> chunk size in tokens of every lss box (when its signals are made causal)."""
        return {f"{i}.{name}": period for i, layer in enumerate(self.layers)
                for name, period in getattr(layer, "LSS_PERIODS", ())}

    def forward(self, tokens: Tensor, state: list[dict] | None = None, ctx: Ctx | None = None
                ) -> tuple[Tensor, list[dict]]:
        ctx = ctx or Ctx()
        state = state if state is not None else self.initial_state(tokens.shape[0])
        x = self.embed(tokens)
        new_state = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, state[i], ctx.at(i))
            new_state.append(s)
        x = self.norm(x)
        logits = x @ self.embed.weight.t() if self.tie_embeddings else self.head(x)
        return logits, new_state


def _at_least_fp32(x: Tensor) -> Tensor:
    """Half-precision logits go up to float32 for the loss; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def sequence_loss(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sequence mean next-token cross-entropy, summed over the batch.

    Each sequence's memories learn from their own sequence, so their local surprise signals are
    gradients of that sequence's mean loss, whatever the batch size. `mask` [T] (1 = counted)
    drops later positions and keeps the weight 1/T of the others: a prefix's loss then has the
    scale of the whole sequence's, which causal surprise signals rely on."""
    b, t, v = logits.shape
    ce = F.cross_entropy(_at_least_fp32(logits.reshape(b * t, v)), targets.reshape(b * t), reduction="none")
    ce = ce.view(b, t)
    if mask is not None:
        ce = ce * mask
    return ce.mean(1).sum()
