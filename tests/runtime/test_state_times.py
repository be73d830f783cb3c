"""`_StateTimes` (runtime/memory.py): W x per token with W's gradient row-major like W, the form
compiled memories read their states with. Its numbers must be einsum's, to every order the
outer training or torch.func may take, and its W gradient must have the state's layout (the
point of it: inductor vectorises loops that read one layout)."""

import torch

from nestc.runtime.memory import _StateTimes


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)  # [B,H,N,in]
    w = torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)  # [B,H,out,in]
    return x, w


def test_forward_and_gradients_equal_einsum_and_w_gradient_is_row_major():
    x, w = _inputs()
    r = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    out = _StateTimes.apply(x, w)
    ref = torch.einsum("bhnd,bhed->bhne", x, w)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    gx, gw = torch.autograd.grad((out * r).sum(), [x, w])
    rx, rw = torch.autograd.grad((ref * r).sum(), [x, w])
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    assert gw.is_contiguous() and not rw.is_contiguous()  # einsum's is a transposed buffer


def test_second_order_gradients():
    x, w = _inputs(1)
    assert torch.autograd.gradgradcheck(_StateTimes.apply, (x, w))


def test_under_torch_func_grad():
    x, w = _inputs(2)
    f = lambda w_: _StateTimes.apply(x.detach(), w_).tanh().sum()  # noqa: E731
    ref = lambda w_: torch.einsum("bhnd,bhed->bhne", x.detach(), w_).tanh().sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(w.detach()), torch.func.grad(ref)(w.detach()))


def test_compiled_equals_eager():
    x, w = _inputs(3)
    r = torch.randn(2, 3, 5, 6, dtype=torch.float64)

    def loss(x, w):
        return (torch.nn.functional.gelu(_StateTimes.apply(x, w)) * r).sum()

    eager = torch.autograd.grad(loss(x, w), [x, w])
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x, w), [x, w])
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)


def test_under_autocast_gradients_match_einsums_in_the_inputs_dtype():
    """bf16 autocast (`--precision bf16`): the products run in bf16 as einsum's would, and the
    gradients come back float32 like the inputs, eager and compiled."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, 4, generator=g, requires_grad=True)
    w = torch.randn(2, 3, 6, 4, generator=g, requires_grad=True)

    def grads(product):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = product(x, w)
        assert out.dtype == torch.bfloat16
        return torch.autograd.grad(out.float().square().sum(), [x, w])

    ref = grads(lambda x, w: torch.einsum("bhnd,bhed->bhne", x, w))
    for fn in (_StateTimes.apply, torch.compile(lambda x, w: _StateTimes.apply(x, w), fullgraph=True)):
        for a, b in zip(grads(fn), ref):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
