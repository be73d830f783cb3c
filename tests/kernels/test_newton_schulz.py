"""newton_schulz against torch.optim.Muon's own iteration, and the orthogonalization quality."""

from __future__ import annotations

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz as muon_newton_schulz

from kernel_testing import graph_breaks
from nestc.runtime.kernels import cubic_newton_schulz, newton_schulz, orthogonalize_svd

MUON_DEFAULTS = dict(ns_coefficients=(3.4445, -4.7750, 2.0315), ns_steps=5, eps=1e-7)
SHAPES = {"square": (64, 64), "tall": (96, 24), "wide": (24, 96), "thin": (3, 50), "row": (1, 7)}


def well_conditioned(m, n, low=1.0, high=10.0, seed=0):
    """U diag(s) Vᵀ with singular values spread over [low, high]."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    s = torch.linspace(low, high, r, dtype=torch.float64)
    return ((U * s) @ V.T).float()


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch_muon(shape):
    G = torch.randn(*SHAPES[shape], generator=torch.Generator().manual_seed(1))
    expected = muon_newton_schulz(G.clone(), **MUON_DEFAULTS)
    actual = newton_schulz(G)
    assert actual.dtype == expected.dtype == torch.bfloat16
    assert (actual.float() - expected.float()).abs().max().item() <= 1e-6


@pytest.mark.parametrize("shape", ["tall", "wide"])
def test_matches_a_muon_optimizer_step(shape):
    """End to end: with lr = 1, no momentum, no weight decay and a zero parameter, one Muon
    step writes -sqrt(max(1, rows/cols)) * NS(grad) into the parameter."""
    rows, cols = SHAPES[shape]
    grad = torch.randn(rows, cols, generator=torch.Generator().manual_seed(2))
    param = torch.nn.Parameter(torch.zeros(rows, cols))
    param.grad = grad.clone()
    torch.optim.Muon([param], lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False).step()
    scale = max(1.0, rows / cols) ** 0.5
    expected = -scale * newton_schulz(grad).float()
    assert (param.detach() - expected).abs().max().item() <= 1e-6


def test_does_not_modify_bf16_input():
    G = torch.randn(16, 8).bfloat16()
    before = G.clone()
    newton_schulz(G)
    assert torch.equal(G, before)


def test_batched_equals_one_by_one():
    G = torch.randn(2, 3, 40, 20, generator=torch.Generator().manual_seed(3))
    batched = newton_schulz(G)
    for index in [(0, 0), (1, 2)]:
        single = newton_schulz(G[index])
        # baddbmm may block the products differently from addmm: allow one bf16 ulp at 1.
        assert (batched[index].float() - single.float()).abs().max().item() <= 2**-7


@pytest.mark.parametrize("shape", ["square", "tall", "wide"])
def test_quintic_singular_values_band(shape):
    """Each singular value follows p(σ) = 3.4445σ - 4.775σ³ + 2.0315σ⁵ from σ/‖G‖_F. For
    σ/‖G‖_F >= 5e-3 (here >= 1/(10·√64) ≈ 1.6e-2), five exact steps land in [0.68, 1.16]
    (iterate p on a fine grid to see it). We test [0.6, 1.25]: the exact band plus room for
    bfloat16 rounding, and inside Muon's advertised ~[0.5, 1.5]."""
    G = well_conditioned(*SHAPES[shape])
    singular_values = torch.linalg.svdvals(newton_schulz(G).double())
    assert singular_values.min() >= 0.6 and singular_values.max() <= 1.25


@pytest.mark.parametrize("shape", ["square", "tall", "wide"])
def test_fp32_mode_points_towards_the_polar_factor(shape):
    G = well_conditioned(*SHAPES[shape])
    reference = orthogonalize_svd(G)
    assert reference.dtype == torch.float64
    for approx in (newton_schulz(G, dtype=None), cubic_newton_schulz(G, steps=30)):
        assert approx.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(
            approx.double().flatten(), reference.flatten(), dim=0
        )
        assert cosine > 0.9


def test_cubic_converges_to_the_polar_factor():
    """The cubic map has σ = 1 as an attracting fixed point (unlike the quintic one)."""
    G = well_conditioned(20, 12, low=1.0, high=3.0)
    X = cubic_newton_schulz(G.double(), steps=40)
    assert (X - orthogonalize_svd(G)).abs().max().item() < 1e-10


def test_svd_reference_is_orthogonal():
    Q = orthogonalize_svd(torch.randn(3, 10, 4))
    assert torch.allclose(Q.mT @ Q, torch.eye(4, dtype=torch.float64).expand(3, 4, 4), atol=1e-12)


def test_zero_matrix_maps_to_zero():
    assert torch.equal(newton_schulz(torch.zeros(5, 3)).float(), torch.zeros(5, 3))


@pytest.mark.parametrize("batched", [False, True])
def test_no_graph_breaks(batched):
    G = torch.randn(2, 6, 4) if batched else torch.randn(6, 4)
    assert graph_breaks(newton_schulz, G, dtype=None) == 0
    assert graph_breaks(cubic_newton_schulz, G, 3) == 0


def test_second_order_gradients():
    G = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda g: newton_schulz(g, dtype=None), (G,))
