"""An MLP memory's closed-form inner gradients (`mlp_layer_grads`), eager and under torch.compile,
against autograd on the same MLP written here with torch's own activations: forward (prediction,
layer inputs, output errors) and backward (outer gradients through the inner gradients, as a
meta-gradient flows). Inductor decomposes the activations and their closed-form derivatives,
so the compiled run is checked on its own."""

import pytest
import torch

from nestc.runtime.memory import MLPShape, mlp_layer_grads

ACTS = {"gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu, "tanh": torch.tanh}


def reference(act, weights, x, target):
    """Per layer (input a, output error delta) of the per-token loss |mlp(x) - target|², by
    autograd through an MLP written with torch's activation; residual, two layers."""
    z1 = torch.einsum("bhnd,bhed->bhne", x, weights[0])
    a1 = ACTS[act](z1)
    z2 = torch.einsum("bhnd,bhed->bhne", a1, weights[1])
    pred = z2 + x
    loss = ((pred - target) ** 2).sum()  # tokens are independent: d loss / d z_t is token t's
    d1, d2 = torch.autograd.grad(loss, [z1, z2], create_graph=True)
    return pred, [(x, d1), (a1, d2)]


def inner(act, weights, x, target):
    shape = MLPShape(dims=(8, 16, 8), act=act, residual=True)
    pred, layers, _ = mlp_layer_grads(shape, weights, x, lambda p: 2.0 * (p - target))
    return pred, layers


def outer(fn, act, weights, x, target, probe):
    """A scalar of everything the inner step yields, and its gradients w.r.t. the weights and
    the inputs (what the outer backward of a memory computes)."""
    pred, layers = fn(act, weights, x, target)
    total = (pred * probe[0]).sum()
    for (a, d), pa, pd in zip(layers, probe[1::2], probe[2::2]):
        total = total + (a * pa).sum() + (d * pd).sum()
    grads = torch.autograd.grad(total, [*weights, x, target])
    return pred, layers, grads


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    b, h, n = 2, 2, 5
    weights = [(0.5 * rnd(b, h, 16, 8)).requires_grad_(), (0.5 * rnd(b, h, 8, 16)).requires_grad_()]
    x, target = rnd(b, h, n, 8).requires_grad_(), rnd(b, h, n, 8).requires_grad_()
    probe = [rnd(b, h, n, 8), rnd(b, h, n, 8), rnd(b, h, n, 16), rnd(b, h, n, 16), rnd(b, h, n, 8)]
    return weights, x, target, probe


def _close(got, want, tol):
    pred, layers, grads = got
    rpred, rlayers, rgrads = want
    assert (pred - rpred).abs().max().item() <= tol
    for (a, d), (ra, rd) in zip(layers, rlayers):
        assert (a - ra).abs().max().item() <= tol
        assert (d - rd).abs().max().item() <= tol
    for g, rg in zip(grads, rgrads):
        assert (g - rg).abs().max().item() <= tol * max(1.0, rg.abs().max().item())


@pytest.mark.parametrize("act", sorted(ACTS))
def test_inner_gradients_eager(act):
    weights, x, target, probe = _case()
    _close(outer(inner, act, weights, x, target, probe),
           outer(reference, act, weights, x, target, probe), 1e-5)


@pytest.mark.parametrize("act", ["gelu", "silu"])
def test_inner_gradients_compiled(act):
    torch._dynamo.reset()
    weights, x, target, probe = _case(1)

    @torch.compile(fullgraph=True, dynamic=False)
    def compiled(weights, x, target):
        return inner(act, weights, x, target)

    got = outer(lambda _act, w, xx, t: compiled(w, xx, t), act, weights, x, target, probe)
    _close(got, outer(reference, act, weights, x, target, probe), 1e-5)
