"""IR -> canonical `.nest` text (`nestc fmt`).

The output is deterministic and idempotent: sections in a fixed order, properties in the order of
nestc/props.py, four-space indentation, aligned property names, minimal parentheses, and every
comment kept (docs above, notes at the end of the line). Parsing the output gives the same IR.
"""

from __future__ import annotations

from . import ir
from .props import BOX_PROPS, MODEL_PROPS, TRAIN_PROPS, canonical_order

INDENT = "    "

# binding strength, weakest first; must agree with grammar/nest.lark
_PREC = {"if": 0, "or": 1, "and": 2, "not": 3, "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "%": 6, "neg": 7, "**": 8}
_ATOM = 9


def _prec(e: ir.Expr) -> int:
    if isinstance(e, ir.BinOp):
        return _PREC[e.op]
    if isinstance(e, ir.UnaryOp):
        return _PREC["neg"] if e.op == "-" else _PREC["not"]
    if isinstance(e, ir.IfExpr):
        return _PREC["if"]
    return _ATOM


def quote(s: str) -> str:
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def expr_str(e: ir.Expr) -> str:
    if isinstance(e, ir.Num):
        return e.text
    if isinstance(e, ir.Str):
        return quote(e.value)
    if isinstance(e, ir.Bool):
        return "true" if e.value else "false"
    if isinstance(e, ir.Name):
        return e.id
    if isinstance(e, ir.ListExpr):
        return "[" + ", ".join(expr_str(i) for i in e.items) + "]"
    if isinstance(e, ir.Call):
        parts = [expr_str(a) for a in e.args] + [f"{k.name}={expr_str(k.value)}" for k in e.kwargs]
        return f"{e.func}(" + ", ".join(parts) + ")"
    if isinstance(e, ir.IfExpr):
        cond = _wrap(e.cond, _prec(e.cond) == 0)
        then = _wrap(e.then, _prec(e.then) == 0)
        return f"if {cond} then {then} else {expr_str(e.orelse)}"
    if isinstance(e, ir.UnaryOp):
        if e.op == "not":
            return "not " + _wrap(e.operand, _prec(e.operand) < _PREC["not"])
        return "-" + _wrap(e.operand, _prec(e.operand) < _PREC["neg"])
    if isinstance(e, ir.BinOp):
        p = _PREC[e.op]
        if e.op == "**":  # right associative; the left operand must be an atom
            left = _wrap(e.left, _prec(e.left) < _ATOM)
            right = _wrap(e.right, _prec(e.right) < _PREC["neg"])
        elif p == 4:  # comparisons do not chain
            left = _wrap(e.left, _prec(e.left) <= 4)
            right = _wrap(e.right, _prec(e.right) <= 4)
        else:  # left associative
            left = _wrap(e.left, _prec(e.left) < p)
            right = _wrap(e.right, _prec(e.right) <= p)
        return f"{left} {e.op} {right}"
    raise TypeError(f"not an expression: {e!r}")


def _wrap(e: ir.Expr, paren: bool) -> str:
    s = expr_str(e)
    return f"({s})" if paren else s


NOTE_COLUMN_MAX = 72  # notes align within a run of lines, unless that pushes them past this


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def run(self, items: list[tuple[ir.Documented, str]], indent: str) -> None:
        """Lines of code with optional same-line notes: a doc comment starts a new run, and the
        notes of a run start in one column."""
        group: list[tuple[str, str | None]] = []

        def flush() -> None:
            width = max((len(code) for code, note in group if note is not None), default=0)
            for code, note in group:
                if note is None:
                    self.lines.append(f"{indent}{code}")
                elif len(indent) + width <= NOTE_COLUMN_MAX:
                    self.lines.append(f"{indent}{code.ljust(width)}  # {note}")
                else:
                    self.lines.append(f"{indent}{code}  # {note}")
            group.clear()

        for node, code in items:
            if node.doc:
                flush()
                self.doc(node, indent)
            group.append((code, node.note))
        flush()

    def doc(self, node: ir.Documented, indent: str) -> None:
        for line in node.doc:
            self.lines.append(f"{indent}# {line}".rstrip() if line else f"{indent}#")

    def line(self, text: str, indent: str, note: str | None = None) -> None:
        self.lines.append(f"{indent}{text}" + (f"  # {note}" if note is not None else ""))

    def comments(self, lines: tuple[str, ...], indent: str) -> None:
        for line in lines:
            self.lines.append(f"{indent}# {line}".rstrip() if line else f"{indent}#")

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")


def _props(out: _Out, props: tuple[ir.Prop, ...], indent: str, table) -> None:
    order = canonical_order([p.name for p in props], table)
    width = max((len(props[i].name) for i in order), default=0)
    out.run([(props[i], prop_str(props[i], width)) for i in order], indent)


def prop_str(p: ir.Prop, width: int = 0) -> str:
    name = p.name.ljust(width)
    if p.name == "every" and p.unit is not None:
        return f"{name} {expr_str(p.value)} {p.unit}"
    if p.binding is not None:
        return f"{name} {p.binding} = {expr_str(p.value)}"
    return f"{name} {expr_str(p.value)}"


def box_header(b: ir.Box) -> str:
    head = f"box {', '.join(b.names)} : {b.box_kind}"
    if b.like:
        head += f" like {b.like}"
    if b.when is not None:
        head += f" when {expr_str(b.when)}"
    return head


def _box(out: _Out, b: ir.Box, indent: str) -> None:
    out.doc(b, indent)
    if not b.props and not b.tail_doc:
        out.line(box_header(b) + " {}", indent, b.note)
        return
    out.line(box_header(b) + " {", indent, b.note)
    _props(out, b.props, indent + INDENT, BOX_PROPS)
    out.comments(b.tail_doc, indent + INDENT)
    out.line("}", indent)


def format_spec(spec: ir.Spec) -> str:
    out = _Out()
    out.doc(spec, "")
    header = f"spec {spec.name}" + (f" {quote(spec.title)}" if spec.title is not None else "")
    out.line(header, "", spec.note)

    if spec.uses:
        out.blank()
        for u in spec.uses:
            out.doc(u, "")
            out.line(f"use {quote(u.target) if u.is_path else u.target}", "", u.note)
    if spec.params:
        out.blank()
        width = max(len(p.name) for p in spec.params)
        runs: list[list[ir.Param]] = []
        for p in spec.params:
            if p.doc or not runs:
                runs.append([])
            runs[-1].append(p)
        for i, run in enumerate(runs):
            if i:
                out.blank()
            out.run([(p, f"param {p.name.ljust(width)} = {expr_str(p.value)}") for p in run], "")
    for b in spec.boxes:
        out.blank()
        _box(out, b, "")
    for blk in spec.blocks:
        out.blank()
        out.doc(blk, "")
        out.line(f"block {blk.name} {{", "", blk.note)
        # boxes each stand apart; consecutive statements form one run with aligned `=`
        chunks: list[list] = []
        for stmt in blk.body:
            if isinstance(stmt, ir.Box) or not chunks or isinstance(chunks[-1][0], ir.Box):
                chunks.append([stmt])
            else:
                chunks[-1].append(stmt)
        for i, chunk in enumerate(chunks):
            if i:
                out.blank()
            if isinstance(chunk[0], ir.Box):
                _box(out, chunk[0], INDENT)
                continue
            width = max(len(_stmt_target(s)) for s in chunk)
            out.run([(s, _stmt_str(s, width)) for s in chunk], INDENT)
        out.comments(blk.tail_doc, INDENT)
        out.line("}", "")
    if spec.model is not None:
        out.blank()
        m = spec.model
        out.doc(m, "")
        out.line("model {", "", m.note)
        props = tuple(x for x in m.body if isinstance(x, ir.Prop))
        _props(out, props, INDENT, MODEL_PROPS)
        out.run([(r, f"repeat {expr_str(r.count)} {{ {' '.join(r.blocks)} }}") for r in m.body
                 if isinstance(r, ir.Repeat)], INDENT)
        out.comments(m.tail_doc, INDENT)
        out.line("}", "")
    if spec.train is not None:
        out.blank()
        t = spec.train
        out.doc(t, "")
        out.line("train {", "", t.note)
        out.run([(o, optimizer_str(o)) for o in t.body if isinstance(o, ir.OptimizerUse)], INDENT)
        props = tuple(x for x in t.body if isinstance(x, ir.Prop))
        _props(out, props, INDENT, TRAIN_PROPS)
        out.comments(t.tail_doc, INDENT)
        out.line("}", "")
    if spec.tail_doc:
        out.blank()
        out.comments(spec.tail_doc, "")
    return "\n".join(out.lines).rstrip("\n") + "\n"


def _stmt_target(s: ir.Let | ir.Assign) -> str:
    return f"let {s.name}" if isinstance(s, ir.Let) else s.target


def _stmt_str(s: ir.Let | ir.Assign, width: int) -> str:
    if isinstance(s, ir.Let):
        when = f" when {expr_str(s.when)}" if s.when is not None else ""
        return f"{_stmt_target(s).ljust(width)} = {expr_str(s.value)}{when}"
    return f"{s.target.ljust(width)} = {expr_str(s.value)}"


def optimizer_str(o: ir.OptimizerUse) -> str:
    s = f"optimizer {o.name}"
    if o.args:
        s += "(" + ", ".join(f"{k.name}={expr_str(k.value)}" for k in o.args) + ")"
    if o.on:
        s += f" on {o.on}"
    return s
