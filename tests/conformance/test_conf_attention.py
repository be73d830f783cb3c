"""The softmax-attention box of the transformer spec against scaled_dot_product_attention, with
rotary embeddings computed independently here."""

import math

import pytest
import torch
import torch.nn.functional as F

import nestc


def _rope_ref(x: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-half form, written independently of nestc.runtime.layers.rope."""
    b, h, t, d = x.shape
    half = d // 2
    inv = torch.tensor([10000.0 ** (-i / half) for i in range(half)], dtype=torch.float64)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _split(x, heads):
    b, t, w = x.shape
    return x.view(b, t, heads, w // heads).transpose(1, 2)


@pytest.mark.parametrize("window", [0, 5])
def test_attention_box_matches_sdpa(window):
    overrides = {"n_layers": "1", "d_model": "32", "heads": "4"}
    compiled = nestc.compile("transformer", overrides)
    torch.manual_seed(0)
    box = compiled.model().layers[0].box_attn
    box.window = window
    x = torch.randn(2, 19, 32)
    out, _ = box(x, box.initial_state(2))
    q, k, v = (_split(w(x), 4) for w in (box.wq, box.wk, box.wv))
    q, k = _rope_ref(q), _rope_ref(k)
    if window:
        i = torch.arange(19)[:, None]
        j = torch.arange(19)[None, :]
        mask = (j <= i) & (j > i - window)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = ref.transpose(1, 2).reshape(2, 19, 32)
    assert (out - ref).abs().max().item() <= 1e-5


def test_persistent_tokens_are_seen_by_every_query():
    torch.manual_seed(0)
    compiled = nestc.compile("titans_mag", {"n_layers": "1", "d_model": "32", "heads": "2"})
    box = compiled.model().layers[0].box_swa
    x = torch.randn(1, 9, 32)
    out, _ = box(x, box.initial_state(1))
    q, k, v = (_split(w(x), 2) for w in (box.wq, box.wk, box.wv))
    q, k = _rope_ref(q), _rope_ref(k)
    scale = 1 / math.sqrt(q.shape[-1])
    ref = torch.empty_like(q)
    for t in range(9):  # an explicit softmax per query over [persistent | window]
        lo = max(0, t - box.window + 1)
        keys = torch.cat([box.persist_k.unsqueeze(0), k[:, :, lo:t + 1]], 2)
        vals = torch.cat([box.persist_v.unsqueeze(0), v[:, :, lo:t + 1]], 2)
        w = torch.softmax((q[:, :, t:t + 1] @ keys.transpose(-1, -2)) * scale, -1)
        ref[:, :, t:t + 1] = w @ vals
    assert (out - ref.transpose(1, 2).reshape(1, 9, 32)).abs().max().item() <= 1e-5
