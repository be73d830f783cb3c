"""Linear attention, DeltaNet and Gated DeltaNet: the compiled spec's chunked memory against a
token-by-token recurrence written here, forward and gradients."""

import pytest
import torch

import nestc

SMALL = {"n_layers": "1", "d_model": "32", "heads": "2"}


def recurrence(spec, q, k, v, lr, gate):
    """The box's equation, one token at a time. S [B, H, dv, dk]; read after the update."""
    b, h, t, d = k.shape
    S = torch.zeros(b, h, v.shape[-1], d, dtype=k.dtype)
    outs = []
    for i in range(t):
        kt, vt, qt = k[:, :, i], v[:, :, i], q[:, :, i]
        if spec == "linear_attention":  # -<S k, v>, step 1: S + v kᵀ
            S = S + vt[..., :, None] * kt[..., None, :]
        else:
            beta = lr[:, :, i][..., None, None]
            a = gate[:, :, i][..., None, None] if spec == "gated_deltanet" else 1.0
            Sg = a * S  # Gated DeltaNet: the delta step starts from the gated state
            err = torch.einsum("bhvk,bhk->bhv", Sg, kt) - vt
            S = Sg - beta * err[..., :, None] * kt[..., None, :]
        outs.append(torch.einsum("bhvk,bhk->bhv", S, qt))
    return torch.stack(outs, 2), S


@pytest.mark.parametrize("spec", ["linear_attention", "deltanet", "gated_deltanet"])
@pytest.mark.parametrize("t", [5, 37])
def test_chunked_compiled_memory_matches_recurrence(spec, t):
    torch.manual_seed(0)
    box = nestc.compile(spec, SMALL).model().layers[0].box_mem
    b, h, d = 2, 2, 16
    leaf = lambda *s: torch.randn(*s, dtype=torch.float64).requires_grad_()  # noqa: E731
    q, k, v = leaf(b, h, t, d), leaf(b, h, t, d), leaf(b, h, t, d)
    lr_raw, gate_raw = leaf(b, h, t), leaf(b, h, t)
    box = box.double()

    def ours(q, k, v, lr_raw, gate_raw):
        kn = torch.nn.functional.normalize(k, dim=-1)
        lr = torch.sigmoid(lr_raw) if spec != "linear_attention" else 1.0
        gate = torch.sigmoid(gate_raw + 2) if spec == "gated_deltanet" else None
        out, st = box(box.initial_state(b), query=q, keys=kn, values=v, lr=lr, gate=gate)
        return out, st["S"]

    def ref(q, k, v, lr_raw, gate_raw):
        return recurrence(spec, q, torch.nn.functional.normalize(k, dim=-1), v,
                          torch.sigmoid(lr_raw), torch.sigmoid(gate_raw + 2))

    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    (o1, s1), (o2, s2) = compiled(q, k, v, lr_raw, gate_raw), ref(q, k, v, lr_raw, gate_raw)
    assert (o1 - o2).abs().max().item() <= 1e-9
    assert (s1 - s2).abs().max().item() <= 1e-9
    inputs = (q, k, v, lr_raw, gate_raw)
    g1 = torch.autograd.grad((o1 * o1.detach().sign()).sum() + s1.sum(), inputs, allow_unused=True)
    g2 = torch.autograd.grad((o2 * o2.detach().sign()).sum() + s2.sum(), inputs, allow_unused=True)
    for a, c in zip(g1, g2):
        if a is None or c is None:
            assert a is None or a.abs().max() == 0
            continue
        assert (a - c).abs().max().item() <= 1e-8
