"""`weighted_sum` (runtime/memory.py): the sum of a chunk's weighted rank-one gradients,
sum_s w_s d_s a_sᵀ, that every GD and momentum state update of a deep memory makes. Its numbers
must be the sum written out token by token, to every order of gradient the outer training and
torch.func take, eager and compiled alike."""

import torch

from nestc.runtime.memory import weighted_sum


def _inputs(batch=(2, 3), n=5, out=6, d_in=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(*batch, n, generator=g, dtype=torch.float64, requires_grad=True)
    d = torch.randn(*batch, n, out, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn(*batch, n, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    return w, d, a


def _token_by_token(w, d, a):
    total = torch.zeros(*d.shape[:-2], d.shape[-1], a.shape[-1], dtype=d.dtype)
    for s in range(d.shape[-2]):
        total = total + w[..., s, None, None] * d[..., s, :, None] * a[..., s, None, :]
    return total


def test_equals_the_sum_written_out_token_by_token_forward_and_backward():
    for batch in ((2, 3), (4,)):  # [B, H, n, .] as in _advance; [B, H*N, C, .] as in _parallel
        w, d, a = _inputs(batch)
        r = torch.randn(*batch, 6, 4, dtype=torch.float64)
        out, ref = weighted_sum(w, d, a), _token_by_token(w, d, a)
        torch.testing.assert_close(out, ref)
        got = torch.autograd.grad((out * r).sum(), [w, d, a])
        want = torch.autograd.grad((ref * r).sum(), [w, d, a])
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y)


def test_first_and_second_order_gradients():
    w, d, a = _inputs(seed=1)
    assert torch.autograd.gradcheck(weighted_sum, (w, d, a))
    assert torch.autograd.gradgradcheck(weighted_sum, (w, d, a))


def test_under_torch_func_grad():
    w, d, a = _inputs(seed=2)
    f = lambda d_: weighted_sum(w.detach(), d_, a.detach()).tanh().sum()  # noqa: E731
    ref = lambda d_: _token_by_token(w.detach(), d_, a.detach()).tanh().sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(d.detach()), torch.func.grad(ref)(d.detach()))


def test_compiled_equals_eager_forward_and_gradients():
    g = torch.Generator().manual_seed(3)
    w = torch.rand(2, 4, 16, generator=g, requires_grad=True)
    d = torch.randn(2, 4, 16, 32, generator=g, requires_grad=True)
    a = torch.randn(2, 4, 16, 8, generator=g, requires_grad=True)
    m = torch.randn(2, 4, 32, 8, generator=g)

    def update(w, d, a):  # as a momentum update uses it: a decayed state minus the sum
        return 0.9 * m - weighted_sum(w, torch.nn.functional.gelu(d), a)

    torch._dynamo.reset()
    compiled = torch.compile(update, fullgraph=True, dynamic=False)
    out, ref = compiled(w, d, a), update(w, d, a)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(out.square().sum(), [w, d, a])
    want = torch.autograd.grad(ref.square().sum(), [w, d, a])
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4)
