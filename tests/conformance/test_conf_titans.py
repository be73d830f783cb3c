"""Titans' long-term memory, compiled from specs/titans.nest, against references written here:

* chunk 1: the token-by-token rule of Titans Eqs. 9-14, gradients of the memory loss by autograd;
* chunk C: the paper's mini-batch semantics (Titans Eqs. 16-18): every gradient of a chunk is
  taken at the chunk-start state, while retention and momentum still run token by token.
"""

import pytest
import torch

import nestc


def mlp(ws, x, residual=True):
    """The memory: x + W2 gelu(W1 x) per head (ws[i]: [B, H, out, in])."""
    h = torch.nn.functional.gelu(torch.einsum("bhd,bhed->bhe", x, ws[0]))
    y = torch.einsum("bhd,bhed->bhe", h, ws[1])
    return y + x if residual else y


def titans_reference(w0, k, v, q, theta, alpha, eta, chunk):
    """Titans Eqs. 13-18 token by token: u_t = grad of |M(k_t) - v_t|² at the chunk-start state,
    S_t = eta_t S_{t-1} - theta_t u_t, M_t = (1 - alpha_t) M_{t-1} + S_t, y_t = M_{chunk start}(q_t)."""
    committed = list(w0)
    running = list(w0)
    S = [torch.zeros_like(w) for w in w0]
    ys = []
    for t in range(k.shape[2]):
        if t % chunk == 0:
            committed = list(running)
        ys.append(mlp(committed, q[:, :, t]))
        loss = ((mlp(committed, k[:, :, t]) - v[:, :, t]) ** 2).sum()
        u = torch.autograd.grad(loss, committed, create_graph=True)
        et, th, al = (z[:, :, t][..., None, None] for z in (eta, theta, alpha))
        S = [et * s - th * g for s, g in zip(S, u)]
        running = [(1 - al) * m + s for m, s in zip(running, S)]
    return torch.stack(ys, 2), running


@pytest.mark.parametrize("chunk,t", [(1, 9), (4, 13), (8, 16)])
def test_titans_memory_matches_reference(chunk, t):
    torch.manual_seed(0)
    overrides = {"n_layers": "1", "d_model": "16", "heads": "2", "chunk": str(chunk)}
    box = nestc.compile("titans", overrides).model().layers[0].box_lmm.double()
    b, h, d = 2, 2, 8
    leaf = lambda *s: torch.randn(*s, dtype=torch.float64).requires_grad_()  # noqa: E731
    k = torch.nn.functional.normalize(leaf(b, h, t, d), dim=-1)
    v, q = leaf(b, h, t, d), leaf(b, h, t, d)
    theta = 0.3 * torch.sigmoid(leaf(b, h, t))
    alpha = 0.1 * torch.sigmoid(leaf(b, h, t))
    eta = torch.sigmoid(leaf(b, h, t))
    state = box.initial_state(b)
    out, state = box(state, keys=k, target=v, lr=theta, gate=1 - alpha, beta=eta, query=q,
                     out_grad=lambda p, tgt, s, e: 2.0 * (p - tgt))
    w0 = [w.unsqueeze(0).expand(b, *w.shape) for w in box.init_weights]
    ref_out, ref_running = titans_reference(w0, k, v, q, theta, alpha, eta, chunk)
    assert (out - ref_out).abs().max().item() <= 1e-10
    for a, c in zip(state["M"], ref_running):
        assert (a - c).abs().max().item() <= 1e-10
    # outer (meta-) gradients through the inner updates: initial state and data-dependent gates
    probe = [box.init_weights[0], box.init_weights[1]]
    g1 = torch.autograd.grad(out.square().sum() + sum(m.sum() for m in state["M"]), probe)
    g2 = torch.autograd.grad(ref_out.square().sum() + sum(m.sum() for m in ref_running), probe)
    for a, c in zip(g1, g2):
        assert (a - c).abs().max().item() <= 1e-9
