"""Hope's main memory (specs/hope.nest, box `memory`) against delta gradient descent written here,
token by token, from NL Eqs. 88-90 and the choices documented in docs/paper-compliance.md §7:

* the memory is a 2-layer residual MLP, M(x) = x + W2 silu(W1 x) per head (Eq. 89);
* every token's target is self-generated, v̂_t = M(v_t), and every gradient is taken at the
  state committed at the end of the previous chunk (Eq. 90 and its prose);
* each weight matrix W_l decays along its own input a_l (`dgd_keys = "layer"`) or only W1 along
  k (`"first"`): W_l <- W_l (alpha_t I - b_t a aᵀ) - c_t G_l, where G_l is the gradient of
  |M(k_t) - v̂_t|² with respect to W_l at the chunk-start state, and (b, c) is eta/(1 + eta |a|²)
  ("exact", Eq. 56 solved by Sherman-Morrison), eta ("paper", Eq. 88 as printed), or (1, eta)
  ("neurips").

The reference uses autograd for G_l and a plain loop over tokens, nothing from nestc's runtime.
"""

import pytest
import torch

import nestc


def mlp(ws, x):
    """x + W2 silu(W1 x) per head; ws[i]: [B, H, out, in], x: [B, H, d]."""
    hidden = torch.nn.functional.silu(torch.einsum("bhd,bhed->bhe", x, ws[0]))
    return x + torch.einsum("bhd,bhed->bhe", hidden, ws[1])


def dgd_reference(w0, k, v, q, eta, alpha, chunk, step, keys):
    committed = list(w0)
    running = list(w0)
    outs = []
    for t in range(k.shape[2]):
        if t % chunk == 0:
            committed = list(running)
        outs.append(mlp(committed, q[:, :, t]))
        x = k[:, :, t]
        target = mlp(committed, v[:, :, t])  # v̂_t = M(v_t) at the chunk-start state
        # a copy of the committed weights, so the inner gradient treats the target as data (the
        # outer graph still reaches the target through `committed`)
        at = [w.clone() for w in committed]
        loss = ((mlp(at, x) - target) ** 2).sum()
        grads = torch.autograd.grad(loss, at, create_graph=True)
        inputs = [x, torch.nn.functional.silu(torch.einsum("bhd,bhed->bhe", x, committed[0]))]
        e, a_ = eta[:, :, t], alpha[:, :, t]
        new = []
        for layer, (w, g, a) in enumerate(zip(running, grads, inputs)):
            if step == "exact":
                b = c = e / (1 + e * (a * a).sum(-1))
            elif step == "paper":
                b = c = e
            else:  # neurips
                b, c = torch.ones_like(e), e
            decayed = a_[..., None, None] * w
            if keys == "layer" or layer == 0:  # W (alpha I - b a aᵀ)
                decayed = decayed - b[..., None, None] * torch.einsum("bhed,bhd,bhf->bhef", w, a, a)
            new.append(decayed - c[..., None, None] * g)
        running = new
    return torch.stack(outs, 2), running


@pytest.mark.parametrize("chunk,t,step,keys", [
    (1, 7, "exact", "layer"),
    (4, 13, "exact", "layer"),
    (3, 10, "paper", "layer"),
    (4, 9, "neurips", "layer"),
    (2, 9, "exact", "first"),
])
def test_hope_memory_is_dgd_at_the_chunk_start_state(chunk, t, step, keys):
    torch.manual_seed(0)
    overrides = {"n_layers": "1", "d_model": "16", "heads": "2", "c_memory": str(chunk), "c_other": "1",
                 "dgd_step": f'"{step}"', "dgd_keys": f'"{keys}"'}
    box = nestc.compile("hope", overrides).model().layers[0].self_modifying_titans.box_memory.double()
    assert (box.s.optimizer, box.s.dgd_step, box.s.dgd_decay_keys, box.s.period) == ("dgd", step, keys, chunk)
    b, h, d = 2, 2, 8
    leaf = lambda *s: torch.randn(*s, dtype=torch.float64).requires_grad_()  # noqa: E731
    k = torch.nn.functional.normalize(leaf(b, h, t, d), dim=-1)
    v = torch.nn.functional.normalize(leaf(b, h, t, d), dim=-1)
    q = leaf(b, h, t, d)
    eta = torch.sigmoid(leaf(b, h, t))
    alpha = torch.sigmoid(leaf(b, h, t) + 2.0)
    with torch.no_grad():  # a non-trivial second layer (the residual init starts it near zero)
        box.init_weights[1].normal_(0, 0.3)

    out, state = box(box.initial_state(b), keys=k, target=lambda W, s, e: box.apply(W, v[:, :, s:e]),
                     lr=eta, gate=alpha, query=q, out_grad=lambda p, tgt, s, e: 2.0 * (p - tgt))
    w0 = [w.unsqueeze(0).expand(b, *w.shape) for w in box.init_weights]
    ref_out, ref_state = dgd_reference(w0, k, v, q, eta, alpha, chunk, step, keys)

    assert (out - ref_out).abs().max().item() <= 1e-10
    for mine, ref in zip(state["M"], ref_state):
        assert mine.shape == ref.shape
        assert (mine - ref).abs().max().item() <= 1e-10
    # the state changed: the test is not comparing two copies of the initial weights
    assert (state["M"][1] - w0[1]).abs().max().item() > 1e-3
    # outer (meta-) gradients through the inner updates and the self-generated targets
    probes = [*box.init_weights, eta, alpha]
    objective = lambda o, m: o.square().sum() + sum((w * w).sum() for w in m)  # noqa: E731
    mine = torch.autograd.grad(objective(out, state["M"]), probes, allow_unused=True)
    ref = torch.autograd.grad(objective(ref_out, ref_state), probes, allow_unused=True)
    for a, c in zip(mine, ref):
        assert (a - c).abs().max().item() <= 1e-9
