"""Optimizer support for generated optimizer specs: a torch.optim.Optimizer base class and
foreach-style list operations.

A generated optimizer keeps, per parameter, the state of each of its boxes (e.g. Adam's `m`
and `v`), and writes each box's update as operations on *lists* of tensors (one per parameter),
which torch runs as multi-tensor (foreach) kernels and torch.compile fuses.
"""

from __future__ import annotations

import builtins
import math
from typing import Any, Sequence

import torch
from torch import Tensor

from .kernels.newton_schulz import cubic_newton_schulz, newton_schulz as _ns
from .ops import huber as _huber

Operand = Any  # list[Tensor] | list[float] | float | Tensor


def kind(x) -> str:
    """T: a list of parameter-shaped tensors; S: a list of per-parameter scalars (floats or 0-d
    tensors); s: one scalar (a float or a 0-d tensor)."""
    if isinstance(x, (list, tuple)):
        if x and torch.is_tensor(x[0]) and x[0].ndim > 0:
            return "T"
        return "S"
    return "s"


def _elementwise(a, b, fe, op):
    ka, kb = kind(a), kind(b)
    if ka == "T" and kb == "T":
        return fe(a, b)
    if ka == "T" and kb == "s":
        if torch.is_tensor(b) and torch.compiler.is_compiling():
            # traced as a foreach op's scalar, a 0-d tensor (a hyperparameter such as eps) had
            # its value baked into the graph: a second optimizer compiled in the process with
            # another eps computed with the first one's. Per-tensor ops keep it an input.
            return [op(t, b) for t in a]
        return fe(a, b)
    if ka == "T" and kb == "S":
        if all(not torch.is_tensor(v) for v in b):
            return fe(a, list(b))
        return [op(t, v) for t, v in zip(a, b)]
    if kb == "T":  # scalar (list) on the left: apply elementwise, keeping the order
        return [op(v, t) for v, t in zip(a if ka == "S" else [a] * len(b), b)]
    if ka == "S" or kb == "S":
        n = len(a) if ka == "S" else len(b)
        aa = a if ka == "S" else [a] * n
        bb = b if kb == "S" else [b] * n
        return [op(x, y) for x, y in zip(aa, bb)]
    return op(a, b)


def add(a, b):
    return _elementwise(a, b, torch._foreach_add, lambda x, y: x + y)


def sub(a, b):
    return _elementwise(a, b, torch._foreach_sub, lambda x, y: x - y)


def mul(a, b):
    return _elementwise(a, b, torch._foreach_mul, lambda x, y: x * y)


def div(a, b):
    return _elementwise(a, b, torch._foreach_div, lambda x, y: x / y)


def pow(a, b):  # noqa: A001 - mirrors the spec's **
    return _elementwise(a, b, torch._foreach_pow, lambda x, y: x ** y)


def neg(a):
    k = kind(a)
    if k == "T":
        return torch._foreach_neg(a)
    return [-x for x in a] if k == "S" else -a


def _unary(name: str, scalar_fn, tensor_fn=None):
    fe = getattr(torch, f"_foreach_{name}", None)
    tensor_fn = tensor_fn or getattr(torch, name)

    def op(a):
        k = kind(a)
        if k == "T":
            return fe(a) if fe is not None else [tensor_fn(t) for t in a]
        one = lambda x: tensor_fn(x) if torch.is_tensor(x) else scalar_fn(x)  # noqa: E731
        return [one(x) for x in a] if k == "S" else one(a)

    return op


sqrt = _unary("sqrt", math.sqrt)
abs = _unary("abs", builtins.abs)  # noqa: A001
exp = _unary("exp", math.exp)
log = _unary("log", math.log)
sign = _unary("sign", lambda x: (x > 0) - (x < 0))


def _sigmoid(x: float) -> float:  # without overflow in exp at either end
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


sigmoid = _unary("sigmoid", _sigmoid)
tanh = _unary("tanh", math.tanh)
relu = _unary("relu", lambda x: builtins.max(x, 0.0))
silu = _unary("silu", lambda x: x * _sigmoid(x), torch.nn.functional.silu)
gelu = _unary("gelu", lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))), torch.nn.functional.gelu)
softplus = _unary("softplus", lambda x: builtins.max(x, 0.0) + math.log1p(math.exp(-builtins.abs(x))),
                  torch.nn.functional.softplus)


def _zipped(op):
    """`op` element by element over operands of any kind (a comparison, `where`): tensor lists
    have no foreach form of these, so each parameter's tensors go through `op` in turn."""

    def run(*xs):
        n = next((len(x) for x in xs if kind(x) != "s"), None)
        if n is None:
            return op(*xs)
        return [op(*parts) for parts in zip(*(x if kind(x) != "s" else [x] * n for x in xs))]

    return run


mod = _zipped(lambda a, b: a % b)  # floored, like torch.remainder and Python's %
eq = _zipped(lambda a, b: a == b)
ne = _zipped(lambda a, b: a != b)
lt = _zipped(lambda a, b: a < b)
le = _zipped(lambda a, b: a <= b)
gt = _zipped(lambda a, b: a > b)
ge = _zipped(lambda a, b: a >= b)


def _where_one(cond, a, b):
    if torch.is_tensor(cond) or torch.is_tensor(a) or torch.is_tensor(b):
        return torch.where(torch.as_tensor(cond), a, b)
    return a if cond else b


where = _zipped(_where_one)


def _huber_one(d, delta):
    if not torch.is_tensor(d):
        return 0.5 * d * d if builtins.abs(d) <= delta else delta * (builtins.abs(d) - 0.5 * delta)
    return _huber(d, delta)


_huber_each = _zipped(_huber_one)


def huber(a, b, delta):
    """The element-wise Huber loss of a - b (runtime/ops.py's, as memories use it)."""
    return _huber_each(sub(a, b), delta)


def _pick(x, y, greater: bool):
    if torch.is_tensor(x) or torch.is_tensor(y):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        return torch.maximum(x, y) if greater else torch.minimum(x, y)
    return max(x, y) if greater else min(x, y)


def maximum(a, b):
    if kind(a) != "T" and kind(b) == "T":
        a, b = b, a
    if kind(a) == "T":
        if kind(b) == "T":
            return torch._foreach_maximum(a, b)
        return [torch.clamp(t, min=v) for t, v in zip(a, b if kind(b) == "S" else [b] * len(a))]
    return _elementwise(a, b, None, lambda x, y: _pick(x, y, True))


def minimum(a, b):
    if kind(a) != "T" and kind(b) == "T":
        a, b = b, a
    if kind(a) == "T":
        if kind(b) == "T":
            return torch._foreach_minimum(a, b)
        return [torch.clamp(t, max=v) for t, v in zip(a, b if kind(b) == "S" else [b] * len(a))]
    return _elementwise(a, b, None, lambda x, y: _pick(x, y, False))


def clamp(a, lo, hi):
    return minimum(maximum(a, lo), hi)


def lerp(a, b, w):
    """a + w (b - a), with torch.lerp's rounding (as torch's optimizers use it)."""
    if kind(a) == "T" and kind(b) == "T":
        if kind(w) == "T":
            return torch._foreach_lerp(a, b, w)
        if kind(w) == "s" and torch.is_tensor(w) and not torch.compiler.is_compiling():
            w = w.item()  # eager: the scalar kernel, as torch's own optimizers call it
        if kind(w) == "s" and not torch.is_tensor(w):
            return torch._foreach_lerp(a, b, w)
        ws = w if kind(w) == "S" else [w] * len(a)
        return [torch.lerp(x, y, v) for x, y, v in zip(a, b, ws)]
    return add(a, mul(sub(b, a), w))


def add_scaled(a, x, y, sign: int):
    """a + sign * x * y. When one factor is a scalar (or one scalar per parameter) and the other
    a tensor list, this is torch's fused `add_(other, alpha=...)`, rounding for rounding."""
    if kind(a) == "T" and not torch.compiler.is_compiling():
        for scal, tens in ((x, y), (y, x)):
            if kind(tens) == "T" and kind(scal) in ("s", "S"):
                alphas = scal if kind(scal) == "S" else [scal] * len(tens)
                alphas = [sign * (float(v) if torch.is_tensor(v) else v) for v in alphas]
                return [torch.add(t, o, alpha=al) for t, o, al in zip(a, tens, alphas)]
    prod = mul(x, y)
    return add(a, prod) if sign > 0 else sub(a, prod)


def total(a) -> Tensor:
    """The sum of every element of a tensor list (an element-wise objective, summed)."""
    return builtins.sum(t.sum() for t in a) if kind(a) == "T" else a


def newton_schulz(x: list[Tensor], steps: int = 5, eps: float = 1e-7, coefficients: str = "muon",
                  dtype: str = "bfloat16") -> list[Tensor]:
    """Orthogonalise each matrix (Muon's quintic by default), returned in the input dtype."""
    out = []
    for t in x:
        if t.ndim != 2:
            raise ValueError(f"newton_schulz needs 2-D parameters, got shape {tuple(t.shape)}")
        if coefficients == "cubic":
            out.append(cubic_newton_schulz(t, steps).to(t.dtype))
        else:
            dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
            out.append(_ns(t, steps=steps, eps=eps, dtype=dt).to(t.dtype))
    return out


def rows(x: Sequence[Tensor]) -> list[float]:
    return [float(t.shape[0]) for t in x]


def cols(x: Sequence[Tensor]) -> list[float]:
    return [float(t.shape[1]) if t.ndim > 1 else 1.0 for t in x]


def assign(dst: list[Tensor], src) -> None:
    """Write a box's new state into its storage, in place."""
    k = kind(src)
    if k == "T":
        torch._foreach_copy_(dst, src)
    else:
        for t, s in zip(dst, src if k == "S" else [src] * len(dst)):
            t.fill_(s)


def masked_assign(dst: list[Tensor], src: list[Tensor], on: Tensor) -> None:
    """dst <- src where `on` (a 0-d bool tensor) holds: a schedule step without a Python branch."""
    torch._foreach_copy_(dst, [torch.where(on, s, d) for s, d in zip(src, dst)])


def _flat_views(tensors: list[Tensor]) -> list[Tensor] | None:
    """The tensors as 1-D tensors on their own memory that list their elements in one order, or
    None where that is not possible: they must share shape and strides and cover their memory
    densely (a transposed parameter with its gradient and state qualifies). Each is detached
    from its 1-D view, so it shares memory (and version counter) with the tensor but has no
    view base: dynamo guards on a view's base, whose shapes differ from parameter to parameter,
    and would compile a graph for each."""
    first = tensors[0]
    if any(t.shape != first.shape or t.stride() != first.stride() for t in tensors[1:]):
        return None
    order = sorted(range(first.dim()), key=lambda d: first.stride(d), reverse=True)
    if not first.permute(order).is_contiguous():
        return None
    return [t.permute(order).view(-1).detach() for t in tensors]


def _per_tensor(update, compiled):
    """A variant's update run parameter by parameter: `compiled` (one graph with dynamic sizes)
    on each parameter, its gradient and its state as flat views, which it updates in place; the
    parameters whose tensors cannot be flattened alike go through `update` together."""

    def run(W, grads, states, step, hp):
        rest = []
        for i, (w, g) in enumerate(zip(W, grads)):
            flat = _flat_views([w, g, *(s[i] for s in states.values())])
            if flat is None or w.numel() < 2:  # sizes 0 and 1 would compile graphs of their own
                rest.append(i)
                continue
            compiled([flat[0]], [flat[1]], {k: [v] for k, v in zip(states, flat[2:])}, step, hp)
        if rest:
            update([W[i] for i in rest], [grads[i] for i in rest],
                   {k: [s[i] for i in rest] for k, s in states.items()}, step, hp)

    return run


class NestOptimizer(torch.optim.Optimizer):
    """Base of generated optimizers: per-parameter box state, created lazily."""

    BOXES: tuple[str, ...] = ()  # names of the boxes holding per-parameter state
    ELEMENTWISE = False  # every update element by element (the code generator says; no Newton-Schulz, rows, cols)
    ACCUMULATE: tuple[str, ...] = ()  # slow boxes that sum their increments between updates
    HYPERPARAMETERS: tuple[str, ...] = ()

    def _box_state(self, group: dict, params: list[Tensor]) -> dict[str, list[Tensor]]:
        lists: dict[str, list[Tensor]] = {name: [] for name in self.BOXES + tuple(f"{n}_acc" for n in self.ACCUMULATE)}
        for p in params:
            st = self.state[p]
            if not st:
                # on the parameters' device: a compiled GPU step reads it with no host copy
                st["step"] = torch.zeros((), dtype=torch.float64, device=p.device)
                for name in lists:
                    st[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
            for name in lists:
                lists[name].append(st[name])
        return lists

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, then each state tensor laid out as its parameter, as a fresh state is (a
        checkpoint's come back contiguous): a compiled per-tensor step then flattens a
        transposed parameter's state as it did before the checkpoint."""
        super().load_state_dict(state_dict)
        for p, st in self.state.items():
            for name, t in st.items():
                if torch.is_tensor(t) and t.shape == p.shape and t.stride() != p.stride():
                    st[name] = torch.empty_like(p, memory_format=torch.preserve_format).copy_(t)

    def _hyper(self, group: dict) -> dict[str, Tensor]:
        """The group's hyperparameters as 0-d float64 tensors, updated in place, so a schedule
        changing `lr` does not recompile a compiled step."""
        cache = group.setdefault("_nest_hp", {})
        seen = group.setdefault("_nest_hp_values", {})  # what each tensor holds: no device read
        device = group["params"][0].device if group["params"] else None
        for k in self.HYPERPARAMETERS:
            v = float(group[k])
            if k not in cache or cache[k].device != device:  # (a state_dict loads to the CPU)
                cache[k] = torch.tensor(v, dtype=torch.float64, device=device)
            elif seen.get(k) != v:
                cache[k].fill_(v)
            seen[k] = v
        return cache

    def compile_steps(self, per_tensor: bool = False, **kwargs) -> "NestOptimizer":
        """torch.compile each schedule variant on its own (fullgraph): the variant is picked in
        Python and every variant's inputs are tensors, so nothing recompiles as steps advance.

        `per_tensor` (element-wise optimizers only): each variant compiles once, with dynamic
        sizes, for one parameter flattened, and a step runs it on every parameter in turn
        (`_per_tensor`): a short compile, where the lists of all parameters traced as one graph
        take far longer to compile."""
        import functools
        import inspect

        import torch as _torch

        from .inductor_setup import prepare_inductor
        from .ops import renamed

        prepare_inductor()  # compile time only (runtime/inductor_setup.py)
        if per_tensor and not self.ELEMENTWISE:
            raise ValueError(f"{type(self).__name__} does not update element by element: "
                             "its steps cannot run on flattened parameters")
        for i in range(len(getattr(self, "VARIANTS", ()))):
            name = f"_update_{i}"
            update = getattr(self, name)
            if per_tensor:
                # a plain function with a code object of this optimizer's own (ops.renamed):
                # dynamo's limit of 8 variants per code object would otherwise be shared by every
                # optimizer in the process, through the no_grad decorator's frame or the one
                # torch.compile wraps a bound method in (step() itself runs under no_grad)
                own = renamed(inspect.unwrap(update.__func__), f"{type(self).__name__}{name}_{id(self):x}")
                compiled = functools.partial(_torch.compile(own, fullgraph=True, dynamic=True, **kwargs), self)
                setattr(self, name, _per_tensor(update, compiled))
            else:
                setattr(self, name, _torch.compile(update, fullgraph=True, **kwargs))
        return self

    def _steps(self, params: list[Tensor]) -> Tensor:
        """The shared step counter (a float64 0-d tensor: no recompiles as it advances)."""
        return self.state[params[0]]["step"]
