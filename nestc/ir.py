"""The nestc IR: a spec as written, as immutable pydantic models.

Both front ends (the `.nest` parser and the YAML loader) produce exactly these models; `nestc fmt`
prints them back and `nestc convert` goes between the two syntaxes through them. Every node keeps
its source position (`pos`), and comments directly above or beside a declaration are kept as its
documentation (`doc` lines and a same-line `note`), so formatting never loses a comment.

This is the *surface* IR: parameters are expressions, imports are names, blocks are not yet
repeated. The passes in `nestc/resolve.py` turn it into a resolved program (constants evaluated,
imports merged, layers instantiated, shapes inferred), from which the level graph and the
compiler work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from .diagnostics import NOWHERE, Pos


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    pos: Pos = Field(default=NOWHERE, repr=False)


# ---------------------------------------------------------------------------------------------
# expressions
# ---------------------------------------------------------------------------------------------


class Num(Node):
    kind: Literal["num"] = "num"
    value: float | int
    text: str  # the literal as written (kept so `3e-4` prints as `3e-4`)


class Str(Node):
    kind: Literal["str"] = "str"
    value: str


class Bool(Node):
    kind: Literal["bool"] = "bool"
    value: bool


class Name(Node):
    kind: Literal["name"] = "name"
    id: str


class KwArg(Node):
    name: str
    value: "Expr"


class Call(Node):
    kind: Literal["call"] = "call"
    func: str
    args: tuple["Expr", ...] = ()
    kwargs: tuple[KwArg, ...] = ()

    def kwarg(self, name: str) -> "Expr | None":
        for kw in self.kwargs:
            if kw.name == name:
                return kw.value
        return None


class BinOp(Node):
    kind: Literal["binop"] = "binop"
    op: Literal["+", "-", "*", "/", "%", "**", "==", "!=", "<", "<=", ">", ">=", "and", "or"]
    left: "Expr"
    right: "Expr"


class UnaryOp(Node):
    kind: Literal["unary"] = "unary"
    op: Literal["-", "not"]
    operand: "Expr"


class IfExpr(Node):
    kind: Literal["if"] = "if"
    cond: "Expr"
    then: "Expr"
    orelse: "Expr"


class ListExpr(Node):
    kind: Literal["list"] = "list"
    items: tuple["Expr", ...] = ()


Expr = Annotated[
    Union[Num, Str, Bool, Name, Call, BinOp, UnaryOp, IfExpr, ListExpr],
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------------------------------------
# declarations and statements
# ---------------------------------------------------------------------------------------------


class Documented(Node):
    doc: tuple[str, ...] = ()  # comment lines directly above
    note: str | None = None  # a comment at the end of the first line


class Use(Documented):
    """`use titans` (a built-in spec) or `use "my/other.nest"` (a path relative to this file)."""

    target: str
    is_path: bool = False


class Param(Documented):
    name: str
    value: Expr


class Prop(Documented):
    """One property of a box, model or train section: `keys k`, `every 64 tokens`, `context g = grad(W)`."""

    name: str
    value: Expr
    unit: str | None = None  # only for `every`: tokens / steps (or a param naming one)
    binding: str | None = None  # only for `context NAME = ...`


class Box(Documented):
    """`box NAME[, NAME...] : KIND [like OTHER] [when COND] { props }`."""

    names: tuple[str, ...]
    box_kind: str  # memory | attention | weights
    like: str | None = None
    when: Expr | None = None
    props: tuple[Prop, ...] = ()
    tail_doc: tuple[str, ...] = ()  # comments after the last property


class Let(Documented):
    name: str
    value: Expr
    when: Expr | None = None


class Assign(Documented):
    target: str
    value: Expr


BlockStmt = Union[Box, Let, Assign]


class Block(Documented):
    name: str
    body: tuple[BlockStmt, ...] = ()
    tail_doc: tuple[str, ...] = ()


class Repeat(Documented):
    """`repeat N { block_a block_b }` in the model section."""

    count: Expr
    blocks: tuple[str, ...]


class OptimizerUse(Documented):
    """`optimizer adamw(lr = 3e-4) on matrices` in the train section."""

    name: str
    args: tuple[KwArg, ...] = ()
    on: str | None = None


class Model(Documented):
    body: tuple[Union[Prop, Repeat], ...] = ()
    tail_doc: tuple[str, ...] = ()


class Train(Documented):
    body: tuple[Union[Prop, OptimizerUse], ...] = ()
    tail_doc: tuple[str, ...] = ()


class Spec(Documented):
    """A whole spec file. Sections are kept in canonical order (uses, params, boxes, blocks,
    model, train); `nestc fmt` prints them in this order."""

    name: str
    title: str | None = None
    uses: tuple[Use, ...] = ()
    params: tuple[Param, ...] = ()
    boxes: tuple[Box, ...] = ()
    blocks: tuple[Block, ...] = ()
    model: Model | None = None
    train: Train | None = None
    tail_doc: tuple[str, ...] = ()


for _model in (KwArg, Call, BinOp, UnaryOp, IfExpr, ListExpr, Param, Prop, Box, Let, Assign,
               Block, Repeat, OptimizerUse, Model, Train, Spec):
    _model.model_rebuild()


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def strip_positions(obj: Any) -> Any:
    """A plain-data view of an IR node without positions (and without `text` differences that
    only reflect spelling), for comparing the IR of two parses."""
    if isinstance(obj, BaseModel):
        return {k: strip_positions(v) for k, v in obj.__dict__.items() if k != "pos"}
    if isinstance(obj, (tuple, list)):
        return [strip_positions(v) for v in obj]
    if isinstance(obj, dict):
        return {k: strip_positions(v) for k, v in obj.items()}
    return obj


def same_ir(a: Spec, b: Spec) -> bool:
    return strip_positions(a) == strip_positions(b)


def walk_expr(expr: Any):
    """Yield every expression node below (and including) `expr`, depth first."""
    if expr is None:
        return
    yield expr
    if isinstance(expr, Call):
        for a in expr.args:
            yield from walk_expr(a)
        for kw in expr.kwargs:
            yield from walk_expr(kw.value)
    elif isinstance(expr, BinOp):
        yield from walk_expr(expr.left)
        yield from walk_expr(expr.right)
    elif isinstance(expr, UnaryOp):
        yield from walk_expr(expr.operand)
    elif isinstance(expr, IfExpr):
        yield from walk_expr(expr.cond)
        yield from walk_expr(expr.then)
        yield from walk_expr(expr.orelse)
    elif isinstance(expr, ListExpr):
        for item in expr.items:
            yield from walk_expr(item)


def names_in(expr: Any) -> list[Name]:
    return [e for e in walk_expr(expr) if isinstance(e, Name)]


def calls_in(expr: Any) -> list[Call]:
    return [e for e in walk_expr(expr) if isinstance(e, Call)]


def read_name(c: Call) -> str:
    """The name a call reads by: `read_before(m, e)` and `read_after(m, e)` read box m; any other
    call `f(...)` is named f (a box's read where f is a box)."""
    if c.func in ("read_before", "read_after") and c.args and isinstance(c.args[0], Name):
        return c.args[0].id
    return c.func
