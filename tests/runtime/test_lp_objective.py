"""The lp objective's runtime forms (`ops.abs_pow`, |d|^p, and `ops.lp_grad`, its gradient
p sign(d) |d|^(p-1)) against the plain formulas, and at exactly zero residuals, where for p < 2
the plain formulas' second derivatives are 0 · ∞ = NaN: an outer gradient through an inner update
(a meta-gradient) reads them, so one zero residual turned a whole model's gradients NaN."""

import pytest
import torch

from nestc.runtime.ops import abs_pow, lp_grad

P_VALUES = [1.0, 1.5, 3.0, 2.5]


def plain_value(d, p):
    return d.abs() ** p


def plain_grad(d, p):
    return p * torch.sign(d) * d.abs() ** (p - 1)


def residuals(zeros: bool) -> torch.Tensor:
    torch.manual_seed(0)
    d = torch.randn(64, dtype=torch.float64)
    if zeros:
        d[::4] = 0.0
    return d


def derivatives(fn, d, order: int):
    """fn(d), then its derivatives up to `order` (each the gradient of the one before, weighted
    by a fixed w and summed): what a meta-gradient through fn reads. |d|^p (abs_pow) is
    differentiated twice by the general rule's meta-gradient (torch.func takes the inner
    gradient, the outer one goes through it); its gradient (lp_grad) once, by the chunked rules'."""
    d = d.clone().requires_grad_()
    w = torch.linspace(-1, 1, d.numel(), dtype=d.dtype)
    out, y = [fn(d.detach())], fn(d).sum()
    for i in range(order):
        (g,) = torch.autograd.grad(y, d, create_graph=i + 1 < order)
        out.append(g.detach())
        y = (g * w).sum()
    return out


FORMS = [(abs_pow, plain_value, 2), (lp_grad, plain_grad, 1)]


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("fn,plain,order", FORMS, ids=["abs_pow", "lp_grad"])
def test_lp_forms_equal_the_plain_formulas_away_from_zero(fn, plain, order, p):
    d = residuals(zeros=False)
    for ours, theirs in zip(derivatives(lambda x: fn(x, p), d, order), derivatives(lambda x: plain(x, p), d, order)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("fn,plain,order", FORMS, ids=["abs_pow", "lp_grad"])
def test_lp_forms_are_finite_at_zero_residuals(fn, plain, order, p):
    d = residuals(zeros=True)
    zero = d == 0
    ours = derivatives(lambda x: fn(x, p), d, order)
    ref = derivatives(lambda x: plain(x, p), d, order)
    assert all(torch.isfinite(x).all() for x in ours)
    # away from the zeros, the plain formulas' values and derivatives, untouched
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a[~zero], b[~zero], rtol=1e-12, atol=1e-12)
    assert (ours[0][zero] == 0).all()
    if p < 2:  # the singular derivative: nothing flows from an exactly zero residual
        assert (ours[-1][zero] == 0).all()
        if p > 1:  # what the plain formula gives there, so that this test can tell the two apart
            assert not torch.isfinite(ref[-1][zero]).any()
    else:  # nothing singular at p >= 2: the plain formulas' values, zeros included
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_lp_forms_take_a_tensor_exponent():
    """p may be a stream (any expression): each element is singular or not by its own p."""
    d = residuals(zeros=True)
    p = torch.where(torch.arange(d.numel()) % 2 == 0, 1.5, 3.0).to(d.dtype)
    mixed = derivatives(lambda x: lp_grad(x, p), d, 1)
    assert all(torch.isfinite(x).all() for x in mixed)
    for q in (1.5, 3.0):
        mask = p == q
        for a, b in zip(mixed, derivatives(lambda x: lp_grad(x, q), d, 1)):
            torch.testing.assert_close(a[mask], b[mask], rtol=1e-12, atol=1e-12)


def test_lp_forms_under_torch_func_as_the_general_rule_takes_them():
    """The general rule differentiates a box's objective with torch.func (runtime/memory.py
    GeneralMemory): the inner gradient of sum(|pred - v|^1.5) with zero residuals, and the outer
    gradient through it, are finite and equal to lp_grad's."""
    d0 = residuals(zeros=True)
    v = torch.zeros_like(d0)
    pred = d0.clone().requires_grad_()
    inner = torch.func.grad(lambda q: abs_pow(q - v, 1.5).sum())(pred)
    torch.testing.assert_close(inner, lp_grad(pred - v, 1.5), rtol=1e-12, atol=1e-12)
    (outer,) = torch.autograd.grad((inner * torch.linspace(-1, 1, d0.numel(), dtype=d0.dtype)).sum(), pred)
    assert torch.isfinite(outer).all()
