"""An optimizer spec -> a torch.optim.Optimizer subclass with foreach-style updates.

Each box's state is a list of tensors, one per parameter. A step updates the boxes in the
order their current-state dependencies require (momenta before the weights that read them).
A box that updates every N steps sums the increments its rule gives at its committed state and
applies the sum at the boundary (NL Eq. 71; M3's slow momentum, Algorithm 1 line 3). Each
distinct set of boxes due at a step is its own method, so a compiled step never recompiles as
the schedule advances; hyperparameters arrive as 0-d tensors, so schedules that change the
learning rate do not recompile either.
"""

from __future__ import annotations

import math
import re
from functools import cached_property, reduce

import networkx as nx

from .. import ir
from ..diagnostics import NestError
from ..lower import BoxPlan, objective_form, repeats_update, retention_form
from ..printer import expr_str
from ..program import BoxInfo, OptimizerInfo
from .names import class_name, one_line, py_name

OPS = {"+": "O.add", "-": "O.sub", "*": "O.mul", "/": "O.div", "**": "O.pow", "%": "O.mod",
       "==": "O.eq", "!=": "O.ne", "<": "O.lt", "<=": "O.le", ">": "O.gt", ">=": "O.ge"}
UNARY = {"sqrt": "O.sqrt", "abs": "O.abs", "exp": "O.exp", "log": "O.log", "sign": "O.sign",
         "sigmoid": "O.sigmoid", "tanh": "O.tanh", "relu": "O.relu", "silu": "O.silu", "gelu": "O.gelu",
         "softplus": "O.softplus"}


class OptEmitter:
    """Optimizer-scope expressions -> foreach calls. Names map to Python expressions that are
    tensor lists (box states, gradients), scalar lists (rows, cols) or 0-d tensors (params)."""

    def __init__(self, names: dict[str, str], where: str, values: dict | None = None):
        self.names = names
        self.where = where
        self.values = values or {}  # the params' values, for structural counts

    def literal(self, e: ir.Expr) -> str:
        """A count that shapes the computation (Newton-Schulz steps): its value, not a tensor."""
        if isinstance(e, ir.Name) and e.id in self.values:
            return repr(int(self.values[e.id]))
        if isinstance(e, ir.Num):
            return repr(int(e.value))
        raise NestError.at(e.pos, "this count must be a number or a param")

    def choice(self, e: ir.Expr, allowed: tuple[str, ...]) -> str:
        """A string option that shapes the computation (a Newton-Schulz polynomial): its value."""
        value = self.values.get(e.id) if isinstance(e, ir.Name) else getattr(e, "value", None)
        if value not in allowed:
            raise NestError.at(e.pos, f"this must be one of {', '.join(map(repr, allowed))}",
                               hint="write it as a string, or a param holding one")
        return repr(value)

    def emit(self, e: ir.Expr) -> str:
        if isinstance(e, ir.Num):
            return e.text if not e.text.startswith(".") else "0" + e.text
        if isinstance(e, ir.Bool):
            return "True" if e.value else "False"
        if isinstance(e, ir.Str):
            return repr(e.value)
        if isinstance(e, ir.Name):
            if e.id not in self.names:
                raise NestError.at(e.pos, f"`{e.id}` has no value in optimizer box {self.where}")
            return self.names[e.id]
        if isinstance(e, ir.UnaryOp):
            return f"O.neg({self.emit(e.operand)})"
        if isinstance(e, ir.BinOp):
            if e.op in ("+", "-") and isinstance(e.right, ir.BinOp) and e.right.op == "*":
                # A ± a * b: one fused scaled add when a or b is a scalar (torch's add_(alpha=))
                sign = "1" if e.op == "+" else "-1"
                return (f"O.add_scaled({self.emit(e.left)}, {self.emit(e.right.left)}, "
                        f"{self.emit(e.right.right)}, {sign})")
            if e.op not in OPS:
                raise NestError.at(e.pos, f"`{e.op}` is not supported in optimizer box {self.where}")
            return f"{OPS[e.op]}({self.emit(e.left)}, {self.emit(e.right)})"
        if isinstance(e, ir.Call):
            f = e.func
            a = [self.emit(x) for x in e.args]
            kw = {k.name: k.value for k in e.kwargs}
            if f in UNARY:
                return f"{UNARY[f]}({a[0]})"
            if f == "max":
                return f"O.maximum({a[0]}, {a[1]})"
            if f == "min":
                return f"O.minimum({a[0]}, {a[1]})"
            if f == "clamp":
                return f"O.clamp({a[0]}, {a[1]}, {a[2]})"
            if f == "lerp":
                return f"O.lerp({a[0]}, {a[1]}, {a[2]})"
            if f == "where":
                return f"O.where({a[0]}, {a[1]}, {a[2]})"
            if f == "grad":
                return "grads"
            if f in ("rows", "cols"):
                return f"O.{f}(W)"
            if f == "newton_schulz":
                opts = ", ".join(f"{k}={self.literal(v) if k == 'steps' else (self.emit(v) if not isinstance(v, ir.Str) else repr(v.value))}"
                                 for k, v in kw.items())
                return f"O.newton_schulz({a[0]}{', ' + opts if opts else ''})"
            if f == "stop_grad":
                return a[0]
            # element-wise objectives (summed over every element by O.total)
            if f == "l2":
                return f"O.pow(O.sub({a[0]}, {a[1]}), 2)"
            if f == "dot":
                return f"O.mul({a[0]}, {a[1]})"
            if f == "lp":
                return f"O.pow(O.abs(O.sub({a[0]}, {a[1]})), {a[2]})"
            if f == "huber":
                return f"O.huber({a[0]}, {a[1]}, {a[2]})"
            raise NestError.at(e.pos, f"`{f}` is not supported in optimizer box {self.where}")
        raise NestError.at(getattr(e, "pos", None), f"cannot generate `{expr_str(e)}` in an optimizer")


def _deps(b: BoxInfo, boxes: dict[str, BoxInfo]) -> set[str]:
    return {t for t, role, _ in b.refs if role == "update" and t in boxes and t != b.name}


def _grad_expr(b: BoxInfo, em: OptEmitter, state: str) -> str:
    """d objective / d M for an element-wise objective of the box's state."""
    form = objective_form(b)
    if form.kind == "l2" and form.target is not None:
        diff = f"O.sub({state}, {em.emit(form.target)})"
        return diff if 2.0 * form.scale == 1.0 else f"O.mul({diff}, {2.0 * form.scale!r})"
    if form.kind == "dot" and form.target is not None:
        target = em.emit(form.target)
        return target if form.scale == 1.0 else f"O.mul({target}, {form.scale!r})"
    # any other element-wise objective: torch.func on its sum over every parameter
    inner = OptEmitter(dict(em.names, M="m_"), em.where)
    return f"torch.func.grad(lambda m_: O.total({inner.emit(b.objective)}))(list({state}))"


class OptimizerGen:
    def __init__(self, opt: OptimizerInfo, plans: dict[str, BoxPlan]):
        self.opt = opt
        self.prog = opt.program
        self.boxes = opt.boxes
        self.W = opt.weights
        self.plans = plans
        self.state_boxes = [n for n, b in self.boxes.items() if b.kind != "weights"]
        g = nx.DiGraph()
        g.add_nodes_from(self.boxes)
        for n, b in self.boxes.items():
            for d in _deps(b, self.boxes):
                g.add_edge(d, n)
        self.order = list(nx.lexicographical_topological_sort(g))
        self.periods = {n: b.freq.period for n, b in self.boxes.items()}
        # slow boxes with an update rule sum their increments between their updates
        self.slow = [n for n in self.state_boxes if self.periods[n] > 1 and self.boxes[n].update is not None]
        self.cycle = reduce(lambda a, b: a * b // math.gcd(a, b), self.periods.values(), 1)

    def variants(self) -> list[tuple[str, ...]]:
        seen: list[tuple[str, ...]] = []
        for s in range(1, self.cycle + 1):
            active = tuple(n for n in self.order if s % self.periods[n] == 0)
            if active not in seen:
                seen.append(active)
        return seen

    def generate(self) -> str:
        o = self.opt
        cls = class_name(o.name)
        params = o.params
        hp = list(self.run_time_params)
        sig = ", ".join(f"{py_name(k)}={params[k]!r}" for k in hp)
        slow = self.slow
        lines = [f"class {cls}(O.NestOptimizer):",
                 f'    """optimizer `{o.name}` ({one_line(self.prog.path)}): '
                 f'{one_line(self.prog.title or "")}"""', "",
                 f"    BOXES = {tuple(self.state_boxes)!r}",
                 f"    ACCUMULATE = {tuple(slow)!r}",
                 f"    HYPERPARAMETERS = {tuple(hp)!r}",
                 f"    VARIANTS = {tuple(self.variants())!r}  # boxes due at each step of a {self.cycle}-step cycle",
                 f"    ELEMENTWISE = {self.elementwise!r}  # "
                 + ("updates element by element: a compiled step may run on each parameter flattened"
                    if self.elementwise else "not element by element: Newton-Schulz, rows or cols read whole matrices"), "",
                 f"    def __init__(self, params, {sig}):" if sig else "    def __init__(self, params):",
                 f"        super().__init__(params, dict({', '.join(f'{k}={py_name(k)}' for k in hp)}))",
                 "",
                 "    @torch.no_grad()",
                 "    def step(self, closure=None):",
                 "        loss = None",
                 "        if closure is not None:",
                 "            with torch.enable_grad():",
                 "                loss = closure()",
                 "        for group in self.param_groups:",
                 "            W = [p for p in group['params'] if p.grad is not None]",
                 "            if not W:",
                 "                continue",
                 "            states = self._box_state(group, W)",
                 "            step = self._steps(W)",
                 "            step.add_(1)",
                 "            n = int(step.item())",
                 "            hp = self._hyper(group)",
                 f"            variant = self.VARIANTS.index(tuple(b for b in {tuple(self.order)!r} "
                 f"if n % {dict(self.periods)!r}[b] == 0))",
                 "            getattr(self, f'_update_{variant}')(W, [p.grad for p in W], states, step, hp)",
                 "        return loss", ""]
        for i, active in enumerate(self.variants()):
            lines += self._variant(i, active, hp)
        return "\n".join(lines)

    @cached_property
    def elementwise(self) -> bool:
        """Whether every variant's update works element by element (so flattening a parameter
        with its gradient and state does not change it): none reads a matrix as a whole."""
        bodies = "\n".join(line for i, active in enumerate(self.variants())
                           for line in self._variant(i, active, list(self.run_time_params)))
        return not re.search(r"\bO\.(newton_schulz|rows|cols)\(", bodies)

    @cached_property
    def run_time_params(self) -> tuple[str, ...]:
        """The numeric params the update rules read at run time: those a constructor can change.
        A param folded into the generated code when the spec is compiled (a period such as M3's
        `f`, Newton-Schulz's `steps`) is not one: passing it to the constructor would be ignored,
        so it is not accepted there; it is set with `--set` / `nestc.compile(spec, overrides)`."""
        numeric = [k for k, v in self.opt.params.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        bodies = "\n".join(line for i, active in enumerate(self.variants())
                           for line in self._variant(i, active, numeric)
                           if not re.match(r"\s*\w+ = hp\[", line))
        return tuple(k for k in numeric if re.search(rf"\b{re.escape(py_name(k))}\b", bodies))

    def _variant(self, index: int, active: tuple[str, ...], hp: list[str]) -> list[str]:
        lines = ["    @torch.no_grad()",
                 f"    def _update_{index}(self, W, grads, states, step, hp):",
                 f'        """A step at which {", ".join(active)} update{"s" if len(active) == 1 else ""}."""']
        for k in hp:
            lines.append(f"        {py_name(k)} = hp[{k!r}]")
        names = {k: py_name(k) for k in hp}
        names["W"] = "W"
        for n in self.state_boxes:
            names[n] = f"states[{n!r}]"
        for n in self.order:
            b = self.boxes[n]
            due = n in active
            slow_acc = n in self.slow
            if not due and not slow_acc:
                continue
            lines.append(f"        # box {n} ({b.pos.file}:{b.pos.line}), {b.freq}")
            local = dict(names)
            per = self.periods[n]
            local["step"] = "step" if per == 1 else f"torch.floor(step / {per})"
            for cname, cexpr in b.contexts.items():
                em = OptEmitter(local, n, self.opt.params)
                lines.append(f"        ctx_{cname} = {em.emit(cexpr)}")
                local[cname] = f"ctx_{cname}"
            state = "W" if b.kind == "weights" else f"states[{n!r}]"
            local["M"] = state
            local[n] = state
            em = OptEmitter(local, n, self.opt.params)
            new = self._rule(b, em, state, local)
            if repeats_update(b) and b.freq.inner > 1:  # `steps N`: N updates, each from the last's state
                lines.append(f"        for _ in range({b.freq.inner}):  # steps {b.freq.inner}")
                lines.append(f"            O.assign({state}, {new})")
            elif slow_acc:
                acc = f"states[{n + '_acc'!r}]"
                lines.append(f"        O.assign({acc}, O.add({acc}, O.sub({new}, {state})))  # its increment at the committed state")
                if due:
                    lines.append(f"        O.assign({state}, O.add({state}, {acc}))")
                    lines.append(f"        O.assign({acc}, 0.0)")
            else:
                lines.append(f"        O.assign({state}, {new})")
        lines.append("")
        return lines

    def _rule(self, b: BoxInfo, em: OptEmitter, state: str, local: dict[str, str]) -> str:
        ret = retention_form(b)
        kept = state
        if ret.kind == "gate":
            kept = f"O.mul({state}, {em.emit(ret.factor)})"
        elif ret.kind == "general":
            names = dict(local, M=state)
            kept = OptEmitter(names, b.name, self.opt.params).emit(b.retention)
        if b.update is not None:
            names = dict(local, M=kept)
            if b.kind == "weights":
                names["W"] = kept
            return OptEmitter(names, b.name, self.opt.params).emit(b.update)
        opt = self.plans.get(b.name)
        if b.optimizer is not None and b.optimizer.func == "newton_schulz":
            kw = {k.name: k.value for k in b.optimizer.kwargs}
            steps = em.literal(kw["steps"]) if "steps" in kw else "5"
            form = em.choice(kw["coefficients"], ("muon", "cubic")) if "coefficients" in kw else "'muon'"
            return f"O.newton_schulz({em.emit(b.values)}, steps={steps}, coefficients={form})"
        lr = em.emit(b.lr) if b.lr is not None else "1.0"
        form = objective_form(b)
        del opt
        if form.kind == "l2" and 2.0 * form.scale == 1.0 and form.target is not None and kept == state:
            # one GD step on 1/2 |M - t|² is M + lr (t - M): torch's lerp, rounding included
            return f"O.lerp({state}, {em.emit(form.target)}, {lr})"
        grad = _grad_expr(b, em, state)
        return f"O.sub({kept}, O.mul({grad}, {lr}))"
