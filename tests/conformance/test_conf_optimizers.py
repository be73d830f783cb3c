"""The optimizer specs, compiled, against torch.optim: 100 steps on a small MLP in fp32."""

import pytest
import torch

import nestc


def _mlp(bias: bool) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16, bias=bias), torch.nn.Tanh(),
                               torch.nn.Linear(16, 16, bias=bias), torch.nn.Tanh(),
                               torch.nn.Linear(16, 4, bias=bias))


def _max_param_diff(make_ref, spec: str, settings: dict, bias: bool = True, steps: int = 100,
                    per_tensor: bool = False, text: str | None = None) -> float:
    torch.manual_seed(1)
    a = _mlp(bias)
    b = _mlp(bias)
    b.load_state_dict(a.state_dict())
    ref = make_ref(a.parameters())
    (name, _group, cls, _defaults), = nestc.compile(spec, text=text).module.OPTIMIZERS
    ours = cls(list(b.parameters()), **settings)
    if per_tensor:  # what a compiled training step runs on the CPU (LevelOptimizer.compile_steps)
        ours.compile_steps(per_tensor=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=gen)
        y = torch.randn(32, 4, generator=gen)
        for model, opt in ((a, ref), (b, ours)):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


CASES = {
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.01), "sgd",
            dict(lr=0.05, weight_decay=0.01)),
    "momentum": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01), "momentum",
                 dict(lr=0.05, mu=0.9, weight_decay=0.01)),
    "adam": (lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.01),
             "adam", dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-7, weight_decay=0.01)),
    "adamw": (lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), "adamw",
              dict(lr=1e-2, weight_decay=0.1)),
}


@pytest.mark.parametrize("per_tensor", [False, True], ids=["eager", "compiled_per_tensor"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_spec_matches_torch_optim(case, per_tensor):
    make_ref, spec, settings = CASES[case]
    assert _max_param_diff(make_ref, spec, settings, per_tensor=per_tensor) <= 1e-6


def test_nesterov_momentum_matches_torch_optim():
    # nesterov is structural (an `if` decided at compile time), so it is set with --set
    torch.manual_seed(1)
    a, b = _mlp(True), _mlp(True)
    b.load_state_dict(a.state_dict())
    ref = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    (_, _, cls, _), = nestc.compile("momentum", {"nesterov": "true"}).module.OPTIMIZERS
    ours = cls(list(b.parameters()), lr=0.05, mu=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 4, generator=gen)
        for model, opt in ((a, ref), (b, ours)):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) <= 1e-6


def test_muon_spec_matches_torch_optim_muon():
    diff = _max_param_diff(lambda p: torch.optim.Muon(p, lr=1e-2, weight_decay=0.1), "muon",
                           dict(lr=1e-2, weight_decay=0.1), bias=False)
    assert diff <= 1e-5


def test_a_changed_learning_rate_is_used():
    """Hyperparameters live in the param groups, so schedules work as with torch.optim."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.ones(3))
    (_, _, cls, _), = nestc.compile("sgd").module.OPTIMIZERS
    opt = cls([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.1 - 0.5))


def test_m3_newton_schulz_polynomial_is_a_choice():
    """M3's `ns` param picks the polynomial its O1/O2 boxes orthogonalise with: the cubic of NL
    Eq. 44 gives a different (and still orthogonalising) update than Muon's quintic."""
    from nestc.runtime.kernels.newton_schulz import cubic_newton_schulz

    torch.manual_seed(0)
    results = {}
    for ns in ("muon", "cubic"):
        (_, _, cls, _), = nestc.compile("m3", {"ns": f'"{ns}"'}).module.OPTIMIZERS
        p = torch.nn.Parameter(torch.randn(8, 6))
        opt = cls([p])
        p.grad = torch.randn_like(p, generator=torch.Generator().manual_seed(1))
        opt.step()
        results[ns] = opt.state[p]
    m1 = results["cubic"]["M1"]
    torch.testing.assert_close(results["cubic"]["O1"], cubic_newton_schulz(m1, 5).to(m1.dtype))
    assert not torch.allclose(results["cubic"]["O1"], results["muon"]["O1"])


# Optimizers no built-in spec describes, written here as a user would, each one memory over the
# gradients and a weights rule: RMSprop and AdaGrad against torch.optim, Lion against its rule
# written out below (torch has none).
NOVEL = {
    "rmsprop": """spec rmsprop "RMSprop: a decaying mean of squared gradients"
param lr    = 1e-2
param alpha = 0.99
param eps   = 1e-8
box v : memory {
    state     like(W)
    context   g = grad(W)
    lr        1 - alpha
    objective 0.5 * l2(M, g * g)
    every     1 step
}
box W : weights {
    update W - lr * grad(W) / (sqrt(v) + eps)
}
""",
    "adagrad": """spec adagrad "AdaGrad: the sum of squared gradients, a Hebbian memory of g * g"
param lr  = 1e-2
param eps = 1e-10
box s : memory {
    state     like(W)
    context   g = grad(W)
    objective -dot(M, g * g)
    every     1 step
}
box W : weights {
    update W - lr * grad(W) / (sqrt(s) + eps)
}
""",
    "lion": """spec lion "Lion: the sign of an interpolation of the momentum and the gradient"
param lr           = 1e-3
param beta1        = 0.9
param beta2        = 0.99
param weight_decay = 0.0
box m : memory {
    state     like(W)
    context   g = grad(W)
    lr        1 - beta2
    objective 0.5 * l2(M, g)
    every     1 step
}
# W reads m after this step's update, so the step before it is (m - (1 - beta2) g) / beta2
box W : weights {
    update W * (1 - lr * weight_decay) - lr * sign(beta1 / beta2 * (m - (1 - beta2) * grad(W)) + (1 - beta1) * grad(W))
}
""",
}


class WrittenOutLion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, Algorithm 2): c = b1 m + (1 - b1) g; W <- W (1 - lr wd) - lr sign(c);
    m <- b2 m + (1 - b2) g."""

    def __init__(self, params, lr, beta1, beta2, weight_decay):
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, b1, b2, wd = (group[k] for k in ("lr", "beta1", "beta2", "weight_decay"))
            for p in group["params"]:
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                p.mul_(1 - lr * wd).sub_(lr * torch.sign(b1 * m + (1 - b1) * p.grad))
                m.mul_(b2).add_((1 - b2) * p.grad)


NOVEL_CASES = {
    "rmsprop": (lambda p: torch.optim.RMSprop(p, lr=1e-2, alpha=0.9, eps=1e-6), dict(lr=1e-2, alpha=0.9, eps=1e-6)),
    "adagrad": (lambda p: torch.optim.Adagrad(p, lr=1e-2, eps=1e-10), dict(lr=1e-2, eps=1e-10)),
    "lion": (lambda p: WrittenOutLion(p, lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.1),
             dict(lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.1)),
}


@pytest.mark.parametrize("per_tensor", [False, True], ids=["eager", "compiled_per_tensor"])
@pytest.mark.parametrize("case", sorted(NOVEL_CASES))
def test_a_novel_optimizer_spec_matches_its_reference(case, per_tensor):
    make_ref, settings = NOVEL_CASES[case]
    diff = _max_param_diff(make_ref, f"{case}.nest", settings, per_tensor=per_tensor, text=NOVEL[case])
    assert diff <= 1e-6


def test_the_novel_optimizer_comparison_can_fail():
    """Lion's comparison passes at 0.0 difference (a sign step rounds nothing): a different beta1
    in the spec's settings must show up, or the comparison proves nothing."""
    make_ref, settings = NOVEL_CASES["lion"]
    assert _max_param_diff(make_ref, "lion.nest", dict(settings, beta1=0.5), text=NOVEL["lion"]) > 1e-4
