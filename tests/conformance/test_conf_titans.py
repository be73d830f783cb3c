"""Titans' long-term memory, compiled from specs/titans.nest, against references written here:

* chunk 1: the token-by-token rule of Titans Eqs. 9-14, gradients of the memory loss by autograd;
* chunk C: the paper's mini-batch semantics (Titans Eqs. 16-18): every gradient of a chunk is
  taken at the chunk-start state, while retention and momentum still run token by token;
* `grad_state call_start`: every gradient of a call at the state the call began with (as
  titans-pytorch's NeuralMemory takes them), the state still advancing and read chunk by chunk.
"""

import pytest
import torch

import nestc
from small_models import call_start


def mlp(ws, x, residual=True):
    """The memory: x + W2 gelu(W1 x) per head (ws[i]: [B, H, out, in])."""
    h = torch.nn.functional.gelu(torch.einsum("bhd,bhed->bhe", x, ws[0]))
    y = torch.einsum("bhd,bhed->bhe", h, ws[1])
    return y + x if residual else y


def titans_reference(w0, k, v, q, theta, alpha, eta, chunk, call_start=False):
    """Titans Eqs. 13-18 token by token: u_t = grad of |M(k_t) - v_t|² at the chunk-start state
    (at w0 with `call_start`), S_t = eta_t S_{t-1} - theta_t u_t, M_t = (1 - alpha_t) M_{t-1} + S_t,
    y_t = M_{chunk start}(q_t). Returns the reads, M and S at the end."""
    committed = list(w0)
    running = list(w0)
    S = [torch.zeros_like(w) for w in w0]
    ys = []
    for t in range(k.shape[2]):
        if t % chunk == 0:
            committed = list(running)
        ys.append(mlp(committed, q[:, :, t]))
        at = w0 if call_start else committed
        loss = ((mlp(at, k[:, :, t]) - v[:, :, t]) ** 2).sum()
        u = torch.autograd.grad(loss, at, create_graph=True)
        et, th, al = (z[:, :, t][..., None, None] for z in (eta, theta, alpha))
        S = [et * s - th * g for s, g in zip(S, u)]
        running = [(1 - al) * m + s for m, s in zip(running, S)]
    return torch.stack(ys, 2), running, S


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
    ref_out, ref_running, _ = titans_reference(w0, k, v, q, theta, alpha, eta, chunk)
    assert (out - ref_out).abs().max().item() <= 1e-10
    for a, c in zip(state["M"], ref_running):
        assert (a - c).abs().max().item() <= 1e-10
    # outer (meta-) gradients through the inner updates: initial state and data-dependent gates
    probe = [box.init_weights[0], box.init_weights[1]]
    g1 = torch.autograd.grad(out.square().sum() + sum(m.sum() for m in state["M"]), probe)
    g2 = torch.autograd.grad(ref_out.square().sum() + sum(m.sum() for m in ref_running), probe)
    for a, c in zip(g1, g2):
        assert (a - c).abs().max().item() <= 1e-9


@pytest.mark.parametrize("chunk,t", [(4, 16), (4, 13), (8, 32), (1, 6), (1, 20)])
def test_call_start_gradients_match_reference(chunk, t, tmp_path):
    """`grad_state call_start` against the token-by-token reference with gradients at w0: whole
    chunks take the all-chunks-at-once form (DeepMemory._parallel; its chunk-start states in
    closed form, or, for 20 chunks, by a loop over chunks), a call that ends mid-chunk (13) the
    chunk loop. Reads, M, S, and meta-gradients of the initial state
    and of the keys and gates."""
    torch.manual_seed(0)
    overrides = {"n_layers": "1", "d_model": "16", "heads": "2", "chunk": str(chunk)}
    box = call_start(tmp_path, overrides).model().layers[0].box_mem.double()
    assert box.s.grad_state == "call_start"
    b, h, d = 2, 2, 8
    leaf = lambda *s: torch.randn(*s, dtype=torch.float64).requires_grad_()  # noqa: E731
    k = torch.nn.functional.normalize(leaf(b, h, t, d), dim=-1)
    v, q = leaf(b, h, t, d), leaf(b, h, t, d)
    gates = leaf(3, b, h, t)
    theta, alpha, eta = 0.3 * torch.sigmoid(gates[0]), 0.1 * torch.sigmoid(gates[1]), torch.sigmoid(gates[2])
    state = box.initial_state(b)
    assert box._can_parallel(state, t) == (t % chunk == 0)
    out, state = box(state, keys=k, target=v, lr=theta, gate=1 - alpha, beta=eta, query=q,
                     out_grad=lambda p, tgt, s, e: 2.0 * (p - tgt))
    w0 = [w.unsqueeze(0).expand(b, *w.shape) for w in box.init_weights]
    ref_out, ref_m, ref_s = titans_reference(w0, k, v, q, theta, alpha, eta, chunk, call_start=True)
    assert (out - ref_out).abs().max().item() <= 1e-10
    for a, c in zip(state["M"] + state["S"], ref_m + ref_s):
        assert (a - c).abs().max().item() <= 1e-10
    probe = [box.init_weights[0], box.init_weights[1], k, gates]
    # (both graphs share the gates' sigmoids)
    g1 = torch.autograd.grad(out.square().sum() + sum(m.sum() for m in state["M"]), probe, retain_graph=True)
    g2 = torch.autograd.grad(ref_out.square().sum() + sum(m.sum() for m in ref_m), probe)
    for a, c in zip(g1, g2):
        assert (a - c).abs().max().item() <= 1e-9
    # and it is not the chunk-start rule: the two differ once a second chunk reads
    ref_chunk, _, _ = titans_reference(w0, k, v, q, theta, alpha, eta, chunk)
    assert (ref_chunk - ref_out)[:, :, 2 * chunk:].abs().max().item() > 1e-6
