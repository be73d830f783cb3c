"""Softmax attention: the non-parametric memory (NL Eq. 62), with streaming state.

One module covers the spec's attention boxes: global causal attention, a sliding window,
persistent memory tokens (learnable keys/values every query sees, Titans Eq. 19), and
segment-local attention with extra per-token context (Titans MAC, Eqs. 22-23). The state is a
key/value cache, so a stream fed in pieces gives what one long call gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels.attention import causal_attention
from .layers import INIT_STD, Linear, merge_heads, rope, split_heads


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, rope: bool = False, window: int = 0,
                 persistent: int = 0, segment: int = 0):
        super().__init__()
        self.dim, self.heads, self.d_head = dim, heads, dim // heads
        self.use_rope, self.window, self.segment = rope, window, segment
        self.wq, self.wk, self.wv = Linear(dim, dim), Linear(dim, dim), Linear(dim, dim)
        self.persistent = persistent
        if persistent:
            self.persist_k = nn.Parameter(torch.randn(heads, persistent, self.d_head) * INIT_STD)
            self.persist_v = nn.Parameter(torch.randn(heads, persistent, self.d_head) * INIT_STD)

    def initial_state(self, batch: int) -> dict:
        empty = self.wq.weight.new_zeros(batch, self.heads, 0, self.d_head)  # on the model's device
        return {"k": empty, "v": empty, "pk": empty, "pv": empty, "pos": 0}

    def _project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = (split_heads(w(x), self.heads) for w in (self.wq, self.wk, self.wv))
        if self.use_rope:
            q, k = rope(q, positions), rope(k, positions)
        return q, k, v

    def forward(self, x: Tensor, state: dict, prefix: Tensor | None = None) -> tuple[Tensor, dict]:
        b, t, _ = x.shape
        pos0 = state["pos"]
        positions = torch.arange(pos0, pos0 + t, device=x.device)
        q, k, v = self._project(x, positions)
        if self.segment:
            return self._segmented(q, k, v, prefix, positions, state)
        if prefix is not None:
            raise ValueError("attention with prefix tokens needs `segment` (Titans MAC)")
        pk = self.persist_k.expand(b, -1, -1, -1) if self.persistent else None
        pv = self.persist_v.expand(b, -1, -1, -1) if self.persistent else None
        past = state["k"].shape[2]
        if past == 0:  # a fresh sequence: the kernel's causal (windowed) attention
            y = causal_attention(q, k, v, window=self.window or None, prefix_k=pk, prefix_v=pv)
            hist_k, hist_v = k, v
        else:  # continue a stream: queries at positions past.. over the cached keys
            hist_k = torch.cat([state["k"].to(k.dtype), k], dim=2)
            hist_v = torch.cat([state["v"].to(v.dtype), v], dim=2)
            qi = torch.arange(t, device=x.device)[:, None] + past
            ki = torch.arange(hist_k.shape[2], device=x.device)[None, :]
            ok = ki <= qi
            if self.window:
                ok = ok & (ki > qi - self.window)
            keys, vals = hist_k, hist_v
            if pk is not None:
                keys, vals = torch.cat([pk, keys], dim=2), torch.cat([pv, vals], dim=2)
                ok = torch.cat([torch.ones(t, self.persistent, dtype=torch.bool, device=x.device), ok], 1)
            y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=ok)
        if self.window:  # a window needs only its last window-1 keys to continue
            keep = self.window - 1
            hist_k, hist_v = hist_k[:, :, max(0, hist_k.shape[2] - keep):], hist_v[:, :, max(0, hist_v.shape[2] - keep):]
        return merge_heads(y), dict(state, k=hist_k, v=hist_v, pos=pos0 + t)

    def _segmented(self, q, k, v, prefix, positions, state):
        """Attention inside segments of `segment` tokens (aligned to absolute positions) over
        [persistent | prefix tokens | segment tokens]. Prefix token j (e.g. the long-term
        memory's reading of token j, Titans Eq. 21) is visible to query i iff j <= i, so no
        token sees a later one."""
        b, h, t, d = q.shape
        if prefix is not None:
            pk_tok = split_heads(self.wk(prefix), self.heads)
            pv_tok = split_heads(self.wv(prefix), self.heads)
            if self.use_rope:
                pk_tok = rope(pk_tok, positions)
        else:
            pk_tok = pv_tok = None
        # continue the current (partial) segment of the stream
        k_all = torch.cat([state["k"].to(k.dtype), k], 2)
        v_all = torch.cat([state["v"].to(v.dtype), v], 2)
        if pk_tok is not None:
            pk_all = torch.cat([state["pk"].to(k.dtype), pk_tok], 2)
            pv_all = torch.cat([state["pv"].to(v.dtype), pv_tok], 2)
        past = state["k"].shape[2]  # tokens of the current segment seen in earlier calls
        outs = []
        start = 0
        seg = self.segment
        offset = past
        while start < t:
            end = min(t, start + seg - offset)
            lo, hi = start + past - offset, end + past  # this segment's keys within k_all
            kk, vv = k_all[:, :, lo:hi], v_all[:, :, lo:hi]
            n_q, n_k = end - start, hi - lo
            qi = torch.arange(n_q, device=q.device)[:, None] + offset
            ki = torch.arange(n_k, device=q.device)[None, :]
            causal = ki <= qi
            parts_k, parts_v, parts_m = [], [], []
            if self.persistent:
                parts_k.append(self.persist_k.expand(b, -1, -1, -1))
                parts_v.append(self.persist_v.expand(b, -1, -1, -1))
                parts_m.append(torch.ones(n_q, self.persistent, dtype=torch.bool, device=q.device))
            if pk_tok is not None:
                parts_k.append(pk_all[:, :, lo:hi])
                parts_v.append(pv_all[:, :, lo:hi])
                parts_m.append(causal)
            parts_k.append(kk)
            parts_v.append(vv)
            parts_m.append(causal)
            y = F.scaled_dot_product_attention(q[:, :, start:end], torch.cat(parts_k, 2),
                                               torch.cat(parts_v, 2), attn_mask=torch.cat(parts_m, 1))
            outs.append(y)
            offset = (offset + end - start) % seg
            start = end
        y = torch.cat(outs, 2)
        keep = (past + t) % seg  # keys of the segment still open at the end of this call
        new = dict(state, pos=state["pos"] + t,
                   k=k_all[:, :, k_all.shape[2] - keep:], v=v_all[:, :, v_all.shape[2] - keep:])
        if pk_tok is not None:
            new["pk"], new["pv"] = pk_all[:, :, pk_all.shape[2] - keep:], pv_all[:, :, pv_all.shape[2] - keep:]
        return merge_heads(y), new
