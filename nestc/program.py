"""The resolved program: what a spec means once names, params and shapes are settled.

`nestc/resolve.py` builds it from the IR; the level graph (`nestc/levels.py`) and the compiler
(`nestc/lower.py`, `nestc/codegen.py`) read it. Expressions in here are IR expressions with every
param folded to its constant and every compile-time `if` decided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from . import ir
from .diagnostics import Pos


@dataclass(frozen=True)
class Frequency:
    """How often a box updates: every `period` units (tokens, steps) with `inner` steps each."""

    unit: str  # "token" | "step" | "inf" (recomputed at every token: non-parametric)
    period: int = 1
    inner: int = 1  # inner optimizer iterations per update (multi-step GD, Newton-Schulz)

    def rate(self, seq_len: int) -> float:
        """Updates per token of context; a step sees `seq_len` tokens of each sequence."""
        if self.unit == "inf":
            return math.inf
        per = self.period if self.unit == "token" else self.period * max(seq_len, 1)
        return self.inner / per

    def __str__(self) -> str:
        if self.unit == "inf":
            return "every token (non-parametric, frequency ∞)"
        unit = self.unit + ("s" if self.period != 1 else "")
        base = f"every {self.period} {unit}"
        return base + (f" × {self.inner} inner steps" if self.inner != 1 else "")


@dataclass
class StateInfo:
    form: str  # matrix | mlp | vector | like | cache | none
    d_in: int = 0
    d_out: int = 0
    depth: int = 0
    hidden: int = 0
    act: str = "gelu"
    residual: bool = False
    of: str | None = None  # like(W): the weights box it mirrors

    def shape_str(self, heads: int) -> str:
        h = f"{heads} × " if heads > 1 else ""
        if self.form == "matrix":
            return f"{h}[{self.d_out} × {self.d_in}]"
        if self.form == "mlp":
            layers = [self.d_in] + [self.hidden] * (self.depth - 1) + [self.d_out]
            res = " + residual" if self.residual else ""
            return f"{h}MLP {'→'.join(map(str, layers))} ({self.act}{res})"
        if self.form == "vector":
            return f"{h}[{self.d_out}]"
        if self.form == "like":
            return f"like {self.of}"
        if self.form == "cache":
            return "KV cache (non-parametric)"
        return "—"

    def params_per_head(self) -> int:
        if self.form == "matrix":
            return self.d_in * self.d_out
        if self.form == "vector":
            return self.d_out
        if self.form == "mlp":
            dims = [self.d_in] + [self.hidden] * (self.depth - 1) + [self.d_out]
            return sum(a * b + b for a, b in zip(dims, dims[1:]))
        return 0


@dataclass
class BoxInfo:
    name: str
    qualname: str  # "W" for a top-level box, "hope_layer.memory" inside a block
    kind: str  # memory | attention | weights
    pos: Pos
    block: str | None = None
    count: int = 1  # instances in the model (layers that contain it)
    heads: int = 1
    state: StateInfo = field(default_factory=lambda: StateInfo("none"))
    init: tuple[str, Any] = ("zeros", None)  # (mode, arg)
    reset: Any = "sequence"
    contexts: dict[str, ir.Expr] = field(default_factory=dict)
    keys: ir.Expr | None = None
    values: ir.Expr | None = None
    query: ir.Expr | None = None
    lr: ir.Expr | None = None
    objective: ir.Expr | None = None
    retention: ir.Expr | None = None
    optimizer: ir.Expr | None = None
    update: ir.Expr | None = None
    freq: Frequency = field(default_factory=lambda: Frequency("token"))
    read: str = "before"
    grad: str = "through"
    grad_state: str = "chunk_start"  # chunk_start | call_start: where inner gradients are taken
    window: int = 0
    persistent: int = 0
    rope: bool = False
    segment: int = 0
    params_group: str = "all"
    prop_pos: dict[str, Pos] = field(default_factory=dict)
    # filled by the resolver: other boxes this one references, and where
    refs: list[tuple[str, str, bool]] = field(default_factory=list)  # (box, role, stop_grad)

    @property
    def parametric(self) -> bool:
        return self.kind != "attention"

    @property
    def in_context(self) -> bool:
        return self.freq.unit in ("token", "inf")

    def param_count(self) -> int:
        return self.state.params_per_head() * self.heads

    def objective_str(self) -> str:
        from .printer import expr_str

        if self.kind == "attention":
            return "weighted L2 regression (closed form: softmax)"
        if self.update is not None:
            return "— (update rule)"
        return expr_str(self.objective) if self.objective is not None else "—"

    def optimizer_str(self) -> str:
        from .printer import expr_str

        if self.kind == "attention":
            return "closed form (non-parametric)"
        if self.update is not None:
            return "update " + expr_str(self.update)
        return expr_str(self.optimizer) if self.optimizer is not None else "gd"

    def context_str(self) -> str:
        from .printer import expr_str

        if self.contexts:
            return ", ".join(f"{k} = {expr_str(v)}" for k, v in self.contexts.items())
        if self.kind == "weights":
            return "training data (next-token loss)"
        return "tokens"


@dataclass
class Statement:
    """A resolved block statement: `let name = value` or `x = value` (target 'x')."""

    target: str
    value: ir.Expr
    is_let: bool
    pos: Pos
    width: int = 0


@dataclass
class BlockInfo:
    name: str
    pos: Pos
    statements: list[Statement] = field(default_factory=list)
    boxes: list[str] = field(default_factory=list)  # qualnames
    count: int = 0  # layer instances in the model


@dataclass
class OptimizerInfo:
    name: str  # the optimizer spec
    group: str  # all | matrices | rest
    params: dict[str, Any]  # the optimizer spec's evaluated params (with overrides)
    boxes: dict[str, BoxInfo]  # its boxes, by name
    weights: str  # name of its weights box
    pos: Pos
    program: "Program | None" = None  # the optimizer spec, resolved


@dataclass
class Program:
    name: str
    title: str | None
    path: str
    params: dict[str, Any]
    param_pos: dict[str, Pos]
    boxes: dict[str, BoxInfo]
    blocks: dict[str, BlockInfo]
    layers: list[str]  # block names, bottom to top
    model: dict[str, Any]
    train: dict[str, Any]
    optimizers: list[OptimizerInfo]
    source_text: str = ""
    warnings: list = field(default_factory=list)
    # the text of every file the spec was read from, so that later passes (the level graph, the
    # compiler-support plan) can quote the offending line in their diagnostics
    sources: Any = None
    types: dict = field(default_factory=dict, repr=False)  # id(expression node) -> Ty
    _keep: list = field(default_factory=list, repr=False)

    def type_of(self, node) -> "Any":
        return self.types.get(id(node))

    @property
    def seq_len(self) -> int:
        return int(self.train.get("seq_len", 128))

    def box(self, qualname: str) -> BoxInfo:
        return self.boxes[qualname]
