"""Every function and operator the language lets an optimizer box use, in a user-written
optimizer spec: `nestc check` and `nestc compile` agree on it, and the optimizer it compiles to
(eager, compiled over all parameters, compiled per parameter) steps as the same rule written in
plain torch here.

Found by a random optimizer-spec fuzzer: `relu`, `silu`, `gelu`, `softplus`, `where`, `huber`,
comparisons and `%` passed `nestc check` (the functions table lists them for optimizer boxes)
and `nestc compile` then refused them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import nestc
from nestc.cli import app
from nestc.diagnostics import NestError
from nestc.functions import FUNCTIONS

# the rule's expression in the spec (g: the gradient, M: the box's state) -> the same in torch
RULES = {
    "silu": ("silu(g)", lambda g, m: F.silu(g)),
    "gelu": ("gelu(g)", lambda g, m: F.gelu(g)),
    "relu": ("0.5 * M + relu(g)", lambda g, m: 0.5 * m + torch.relu(g)),
    "sigmoid": ("sigmoid(g) - 0.5", lambda g, m: torch.sigmoid(g) - 0.5),
    "tanh": ("tanh(g)", lambda g, m: torch.tanh(g)),
    "softplus": ("softplus(g) - softplus(-g)", lambda g, m: F.softplus(g) - F.softplus(-g)),
    "exp": ("g * exp(-abs(M))", lambda g, m: g * torch.exp(-m.abs())),
    "log": ("g * log(1 + abs(M))", lambda g, m: g * torch.log(1 + m.abs())),
    "sqrt": ("g / (sqrt(abs(M)) + 1)", lambda g, m: g / (m.abs().sqrt() + 1)),
    "abs": ("abs(g) * sign(g) + M", lambda g, m: g.abs() * g.sign() + m),
    "sign": ("0.9 * M + sign(g)", lambda g, m: 0.9 * m + g.sign()),
    "min": ("min(g, 0.1)", lambda g, m: g.clamp(max=0.1)),
    "max": ("max(0.9 * M, abs(g))", lambda g, m: torch.maximum(0.9 * m, g.abs())),
    "clamp": ("clamp(g, -0.2, 0.1)", lambda g, m: g.clamp(-0.2, 0.1)),
    "lerp": ("lerp(M, g, 0.3)", lambda g, m: m + 0.3 * (g - m)),
    "where": ("where(g > 0, g, 0.5 * M)", lambda g, m: torch.where(g > 0, g, 0.5 * m)),
    "stop_grad": ("stop_grad(g)", lambda g, m: g),
    # an objective's function in a rule is element by element (an `objective` sums it)
    "l2": ("M + 0.1 * l2(M, g)", lambda g, m: m + 0.1 * (m - g) ** 2),
    "dot": ("M + dot(M, g)", lambda g, m: m + m * g),
    "lp": ("0.1 * lp(M, g, 1.5)", lambda g, m: 0.1 * (m - g).abs() ** 1.5),
    "huber": ("0.5 * M + huber(M, g, 0.05)",
              lambda g, m: 0.5 * m + torch.where((m - g).abs() <= 0.05, 0.5 * (m - g) ** 2,
                                                 0.05 * ((m - g).abs() - 0.025))),
    # operators
    "%": ("g % 0.05", lambda g, m: torch.remainder(g, 0.05)),
    "<": ("M + (g < 0) * g", lambda g, m: m + (g < 0) * g),
    "<=": ("where(g <= M, g, M)", lambda g, m: torch.where(g <= m, g, m)),
    ">=": ("where(g >= 0.1, g, -g)", lambda g, m: torch.where(g >= 0.1, g, -g)),
    "==": ("g * (sign(g) == sign(M))", lambda g, m: g * (g.sign() == m.sign())),
    "!=": ("g * (sign(g) != sign(M))", lambda g, m: g * (g.sign() != m.sign())),
}
# what an optimizer box cannot use, refused by `nestc check` with a message naming the reason
REFUSED = {
    "sum": "reduces a stream or a per-head vector",
    "mean": "reduces a stream or a per-head vector",
    "norm": "takes a stream or a per-head vector",
    "softmax": "takes a stream or a per-head vector",
}
# tested where their own optimizers are (Muon, M3 in tests/conformance)
ELSEWHERE = {"grad", "newton_schulz", "rows", "cols"}


def spec(rule: str) -> str:
    return f'''spec userfn "a rule using one function"
param lr = 0.01
box A : memory {{
    state   like(W)
    context g = grad(W)
    update  {rule}
    every   1 step
}}
box W : weights {{
    update W - lr * A
}}
'''


def test_every_function_an_optimizer_box_may_use_is_covered():
    allowed = {name for name, fn in FUNCTIONS.items() if "opt" in fn.scopes}
    assert allowed == set(RULES) - {"%", "<", "<=", ">=", "==", "!="} | set(REFUSED) | ELSEWHERE


@pytest.mark.parametrize("name", sorted(RULES) + sorted(REFUSED))
def test_check_and_compile_agree(tmp_path, name):
    rule = RULES[name][0] if name in RULES else f"M + {name}(g)"
    path = tmp_path / "userfn.nest"
    path.write_text(spec(rule))
    checked = CliRunner().invoke(app, ["check", str(path)])
    try:
        nestc.compile(path)
        compiled = None
    except NestError as e:
        compiled = str(e)
    if name in RULES:
        assert checked.exit_code == 0, checked.output
        assert compiled is None
    else:
        assert checked.exit_code == 2 and REFUSED[name] in checked.output
        assert compiled is not None and REFUSED[name] in compiled


OPERATOR_NAMES = {"%": "mod", "<": "lt", "<=": "le", ">=": "ge", "==": "eq", "!=": "ne"}


def all_rules_spec() -> str:
    """Every rule of RULES as a box of one optimizer (one compile per mode, not one per rule),
    the weights stepping by their sum."""
    boxes = {OPERATOR_NAMES.get(name, name): rule for name, (rule, _) in RULES.items()}
    text = 'spec userfns "every rule at once"\nparam lr = 0.01\n'
    for box, rule in boxes.items():
        text += (f"box b_{box} : memory {{\n    state   like(W)\n    context g = grad(W)\n"
                 f"    update  {rule}\n    every   1 step\n}}\n")
    return text + "box W : weights {\n    update W - lr * (" + " + ".join(f"b_{b}" for b in boxes) + ")\n}\n"


def _stepped(text: str, shapes: list, steps: int, mode: str):
    """The optimizer of spec `text` (eager, compiled, or compiled per parameter) run `steps` steps
    on float64 parameters of `shapes` with gradients drawn from a fixed seed: (the starting
    parameters, each step's gradients, the parameters, the optimizer)."""
    (_, _, cls, defaults), = nestc.compile("userfns.nest", text=text).module.OPTIMIZERS
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads_seq = [[0.3 * torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)]
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = cls(params, **defaults)
    if mode != "eager":
        torch._dynamo.reset()
        opt.compile_steps(per_tensor=mode == "per_tensor")
    for grads in grads_seq:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return start, grads_seq, params, opt


@pytest.mark.parametrize("mode", ["eager", "compiled", "per_tensor"])
def test_the_compiled_optimizer_steps_as_the_rules_in_torch(mode):
    start, grads_seq, params, opt = _stepped(all_rules_spec(), [(5, 3), (7,), (2, 3, 2)], 4, mode)
    expected = [p.clone() for p in start]
    for name, (_, fn) in RULES.items():  # each box's state, and its part of the weights' steps
        box = "b_" + OPERATOR_NAMES.get(name, name)
        for i, p in enumerate(params):
            state = torch.zeros_like(p)
            for grads in grads_seq:
                state = fn(grads[i], state)
                expected[i] = expected[i] - 0.01 * state
            torch.testing.assert_close(opt.state[p][box], state, rtol=1e-12, atol=1e-14, msg=lambda m: f"{box}: {m}")
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-13)


INNER_STEPS = '''spec inner_steps "three gradient steps on the box's objective at each of its updates"
param lr = 0.01
box A : memory {
    state     like(W)
    context   g = grad(W)
    lr        0.3
    objective OBJECTIVE
    retention 0.9 * M
    steps     3
    every     2 steps
}
box W : weights {
    update W - lr * A
}
'''


@pytest.mark.parametrize("mode", ["eager", "compiled", "per_tensor"])
@pytest.mark.parametrize("objective", ["0.5 * l2(M, g)", "huber(M, g, 0.05)"])
def test_steps_n_makes_n_gradient_steps_from_the_state_each_left(objective, mode):
    """`steps 3` on an optimizer box: at each of its updates (every 2 steps here), three steps
    M <- 0.9 M - 0.3 dL/dM(M), each at the state the one before left. It was refused (no lowering
    ran inner steps but Newton-Schulz's)."""
    start, grads_seq, params, _ = _stepped(INNER_STEPS.replace("OBJECTIVE", objective), [(5, 3), (7,)], 5, mode)

    def d_objective(m, g):  # d/dM of the objective, written out
        d = m - g
        return d if objective.startswith("0.5") else torch.where(d.abs() <= 0.05, d, 0.05 * d.sign())

    expected = [p.clone() for p in start]
    states = [torch.zeros_like(p) for p in start]
    for step, grads in enumerate(grads_seq, start=1):
        for i, g in enumerate(grads):
            if step % 2 == 0:
                for _ in range(3):
                    states[i] = 0.9 * states[i] - 0.3 * d_objective(states[i], g)
            expected[i] = expected[i] - 0.01 * states[i]
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-14)


def test_steps_n_stays_refused_for_an_update_rule():
    """A box with an update rule has no gradient step to repeat (an in-context memory's refusal
    is a golden diagnostic in tests/language)."""
    rule = INNER_STEPS.replace("    lr        0.3\n    objective OBJECTIVE\n", "    update    0.9 * M + g\n")
    with pytest.raises(NestError, match="`steps 3` .* is not implemented"):
        nestc.compile("rule_steps.nest", text=rule)


@pytest.mark.parametrize("name", ["sigmoid", "silu", "gelu", "softplus", "relu", "tanh"])
def test_scalar_forms_agree_with_torch_even_where_exp_overflows(name):
    """An optimizer's rule applies its functions to per-parameter numbers too (rows(W), a
    hyperparameter): those take Python's math, which must give torch's values, at ±800 too
    (math.exp(800) raises OverflowError)."""
    from nestc.runtime import optim as O

    torch_fn = {"sigmoid": torch.sigmoid, "silu": F.silu, "gelu": F.gelu, "softplus": F.softplus,
                "relu": torch.relu, "tanh": torch.tanh}[name]
    for x in (-800.0, -3.0, -1e-3, 0.0, 2.5, 800.0):
        want = torch_fn(torch.tensor(x, dtype=torch.float64)).item()
        assert getattr(O, name)(x) == pytest.approx(want, rel=1e-12, abs=1e-300)
        assert getattr(O, name)([x])[0] == pytest.approx(want, rel=1e-12, abs=1e-300)
