"""The `.nest` front end: text -> lark parse tree -> IR (nestc/ir.py).

Syntax errors are translated into the language's own words (lark's terminal names never reach
the user), and after the first error the file is re-parsed item by item so that every broken
top-level item is reported, not only the first.
"""

from __future__ import annotations

import ast
import math
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from . import ir
from .diagnostics import Collector, Diagnostic, NestError, Pos, SourceMap, source_lines
from .props import BOX_PROPS, MODEL_PROPS, TRAIN_PROPS, canonical_order

# ---------------------------------------------------------------------------------------------
# the parser object (built once, cached)
# ---------------------------------------------------------------------------------------------


def grammar_text() -> str:
    return resources.files("nestc.grammar").joinpath("nest.lark").read_text(encoding="utf-8")


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@lru_cache(maxsize=None)
def keywords() -> frozenset[str]:
    """The reserved words of the grammar (`box`, `every`, `if`, ...): never names."""
    return frozenset(t.pattern.value for t in _lark().terminals
                     if t.pattern.type == "str" and _NAME.fullmatch(t.pattern.value))


def is_name(text: str) -> bool:
    """Can `text` be written as a NAME in .nest (ASCII letters, digits, `_`; not a keyword)?
    The YAML front end checks its names with this, so that every YAML spec converts to .nest."""
    return bool(_NAME.fullmatch(text)) and text not in keywords()


@lru_cache(maxsize=None)
def _lark() -> Lark:
    # One parser for whole files (`start`) and single expressions (`expr`: YAML values, --set):
    # built for `expr` alone, lark would drop the keywords an expression never uses and lex
    # `when` or `box` as names there, accepting YAML that cannot be written as .nest.
    return Lark(grammar_text(), start=["start", "expr"], parser="lalr", lexer="basic",
                propagate_positions=True, maybe_placeholders=True)


# ---------------------------------------------------------------------------------------------
# parse tree -> IR
# ---------------------------------------------------------------------------------------------


def _pos(file: str, meta_or_tok: Any, line_offset: int = 0) -> Pos:
    if isinstance(meta_or_tok, Token):
        return Pos(file=file, line=meta_or_tok.line + line_offset, col=meta_or_tok.column,
                   end_line=(meta_or_tok.end_line or meta_or_tok.line) + line_offset,
                   end_col=meta_or_tok.end_column or meta_or_tok.column)
    m = meta_or_tok
    if getattr(m, "empty", True):
        return Pos(file=file)
    return Pos(file=file, line=m.line + line_offset, col=m.column, end_line=m.end_line + line_offset,
               end_col=m.end_column)


def _number(text: str) -> int | float:
    if re.fullmatch(r"\d+", text):
        return int(text)
    return float(text)


def _unquote(text: str) -> str:
    # STRING tokens are double-quoted with backslash escapes; ast.literal_eval of a quoted
    # literal evaluates no code.
    return ast.literal_eval(text)


@v_args(meta=True)
class _ToIR(Transformer):
    """Builds IR nodes. Docs are attached afterwards (see _attach_docs)."""

    def __init__(self, file: str, line_offset: int = 0):
        super().__init__()
        self.file = file
        self.off = line_offset

    def P(self, meta) -> Pos:  # noqa: N802 - short name keeps the rules readable
        return _pos(self.file, meta, self.off)

    # -- expressions --
    def number(self, meta, children):
        (tok,) = children
        value = _number(tok)
        if isinstance(value, float) and math.isinf(value):
            raise NestError.at(self.P(tok), f"the number `{tok}` is too large",
                               hint="numbers must fit a 64-bit float (at most about 1.8e308)")
        return ir.Num(value=value, text=str(tok), pos=self.P(tok))

    def string(self, meta, children):
        (tok,) = children
        return ir.Str(value=_unquote(tok), pos=self.P(tok))

    def true(self, meta, children):
        return ir.Bool(value=True, pos=self.P(meta))

    def false(self, meta, children):
        return ir.Bool(value=False, pos=self.P(meta))

    def name(self, meta, children):
        (tok,) = children
        return ir.Name(id=str(tok), pos=self.P(tok))

    def call(self, meta, children):
        func, arglist = children
        args, kwargs = arglist if arglist is not None else ((), ())
        return ir.Call(func=str(func), args=args, kwargs=kwargs, pos=self.P(meta))

    def like_call(self, meta, children):
        (arglist,) = children
        args, kwargs = arglist if arglist is not None else ((), ())
        return ir.Call(func="like", args=args, kwargs=kwargs, pos=self.P(meta))

    def arglist(self, meta, children):
        args, kwargs = [], []
        for c in children:
            if c is None:  # trailing-comma placeholder
                continue
            if isinstance(c, ir.KwArg):
                kwargs.append(c)
            else:
                args.append(c)
        return tuple(args), tuple(kwargs)

    def kwarg(self, meta, children):
        name, value = children
        return ir.KwArg(name=str(name), value=value, pos=self.P(meta))

    def list(self, meta, children):
        items = tuple(c for c in children if c is not None)
        return ir.ListExpr(items=items, pos=self.P(meta))

    def binary(self, meta, children):
        left, op, right = children
        return ir.BinOp(op=str(op), left=left, right=right, pos=self.P(meta))

    def compare(self, meta, children):
        left, op, right = children
        return ir.BinOp(op=str(op), left=left, right=right, pos=self.P(meta))

    def or_op(self, meta, children):
        left, right = children
        return ir.BinOp(op="or", left=left, right=right, pos=self.P(meta))

    def and_op(self, meta, children):
        left, right = children
        return ir.BinOp(op="and", left=left, right=right, pos=self.P(meta))

    def not_op(self, meta, children):
        (operand,) = children
        return ir.UnaryOp(op="not", operand=operand, pos=self.P(meta))

    def unary(self, meta, children):
        _op, operand = children
        return ir.UnaryOp(op="-", operand=operand, pos=self.P(meta))

    def if_then_else(self, meta, children):
        cond, then, orelse = children
        return ir.IfExpr(cond=cond, then=then, orelse=orelse, pos=self.P(meta))

    # -- declarations --
    def spec_decl(self, meta, children):
        name, title = children
        return ("spec", str(name), _unquote(title) if title is not None else None, self.P(meta))

    def use_decl(self, meta, children):
        (tok,) = children
        if tok.type == "STRING":
            return ir.Use(target=_unquote(tok), is_path=True, pos=self.P(meta))
        return ir.Use(target=str(tok), pos=self.P(meta))

    def param_decl(self, meta, children):
        name, value = children
        return ir.Param(name=str(name), value=value, pos=self.P(meta))

    def name_list(self, meta, children):
        return tuple(str(c) for c in children)

    def like_clause(self, meta, children):
        return ("like", str(children[0]))

    def when_clause(self, meta, children):
        return ("when", children[0])

    def box_decl(self, meta, children):
        names, kind, like, when, *props = children
        return ir.Box(names=names, box_kind=str(kind), like=like[1] if like else None,
                      when=when[1] if when else None, props=tuple(props), pos=self.P(meta))

    def prop(self, meta, children):
        name, value = children
        return ir.Prop(name=str(name), value=value, pos=self.P(meta))

    def prop_optimizer(self, meta, children):
        (value,) = children
        return ir.Prop(name="optimizer", value=value, pos=self.P(meta))

    def prop_every(self, meta, children):
        value, unit = children
        return ir.Prop(name="every", value=value, unit=str(unit), pos=self.P(meta))

    def prop_context(self, meta, children):
        binding, value = children
        return ir.Prop(name="context", value=value, binding=str(binding), pos=self.P(meta))

    def block_decl(self, meta, children):
        name, *body = children
        return ir.Block(name=str(name), body=tuple(body), pos=self.P(meta))

    def let_stmt(self, meta, children):
        name, value, when = children
        return ir.Let(name=str(name), value=value, when=when[1] if when else None, pos=self.P(meta))

    def assign_stmt(self, meta, children):
        target, value = children
        return ir.Assign(target=str(target), value=value, pos=self.P(meta))

    def model_decl(self, meta, children):
        return ir.Model(body=tuple(children), pos=self.P(meta))

    def repeat_stmt(self, meta, children):
        count, *blocks = children
        return ir.Repeat(count=count, blocks=tuple(str(b) for b in blocks), pos=self.P(meta))

    def model_prop(self, meta, children):
        name, value = children
        return ir.Prop(name=str(name), value=value, pos=self.P(meta))

    def train_decl(self, meta, children):
        return ir.Train(body=tuple(children), pos=self.P(meta))

    def optimizer_stmt(self, meta, children):
        name, arglist, on = children
        kwargs: tuple = ()
        if arglist is not None:
            args, kwargs = arglist
            if args:
                raise NestError.at(
                    args[0].pos, f"optimizer `{name}` takes its settings by name",
                    hint=f"write `optimizer {name}(lr = 3e-4)`: every argument names the "
                         f"parameter of the `{name}` spec it sets")
        return ir.OptimizerUse(name=str(name), args=kwargs, on=str(on) if on else None,
                               pos=self.P(meta))

    def train_prop(self, meta, children):
        name, value = children
        return ir.Prop(name=str(name), value=value, pos=self.P(meta))

    def start(self, meta, children):
        return list(children)


# ---------------------------------------------------------------------------------------------
# comments -> docs
# ---------------------------------------------------------------------------------------------


class _Comment:
    def __init__(self, tok: Token, code_before: bool, line_offset: int):
        text = str(tok)[1:]
        # trailing blanks carry nothing (and `nestc fmt` drops them), so the IR drops them too
        self.text = (text[1:] if text.startswith(" ") else text).rstrip()
        self.line = tok.line + line_offset
        self.trailing = code_before  # code precedes it on the same line
        self.used = False


def _comments(text: str, tokens: list[Token], line_offset: int) -> list[_Comment]:
    lines = source_lines(text)
    out = []
    for tok in tokens:
        line = lines[tok.line - 1] if tok.line - 1 < len(lines) else ""
        out.append(_Comment(tok, bool(line[: tok.column - 1].strip()), line_offset))
    return out


def _take_docs(comments: list[_Comment], first_line: int, lo_line: int) -> tuple[str, ...]:
    """Full-line comments between lo_line (exclusive) and first_line (exclusive), in order."""
    got = [c for c in comments if not c.used and not c.trailing and lo_line < c.line < first_line]
    for c in got:
        c.used = True
    return tuple(c.text for c in got)


def _take_note(comments: list[_Comment], line: int) -> str | None:
    for c in comments:
        if not c.used and c.trailing and c.line == line:
            c.used = True
            return c.text
    return None


def _attach(node: Any, comments: list[_Comment], lo_line: int) -> Any:
    """Return `node` with docs: comments after lo_line and above it, and its same-line note."""
    if not isinstance(node, ir.Documented) or not node.pos.line:
        return node
    doc = _take_docs(comments, node.pos.line, lo_line)
    note = _take_note(comments, node.pos.line)
    updates: dict[str, Any] = {"doc": doc, "note": note}
    # children, each owning the comments between its predecessor and itself
    child_field = {ir.Box: "props", ir.Block: "body", ir.Model: "body", ir.Train: "body"}.get(type(node))
    if child_field:
        prev = node.pos.line
        new_children = []
        for child in getattr(node, child_field):
            new_children.append(_attach(child, comments, prev))
            prev = _last_line(new_children[-1])
        updates[child_field] = _canonical_children(node, new_children)
        end = node.pos.end_line or prev
        updates["tail_doc"] = _take_docs(comments, end, prev)
    return node.model_copy(update=updates)


def _canonical_children(node: Any, children: list) -> tuple:
    """Sections whose order carries no meaning are kept in canonical order, so that both front
    ends and `nestc fmt` agree on one IR: box properties in the order of nestc/props.py, model
    settings before the layer stack, train optimizers before settings."""
    if isinstance(node, ir.Box):
        order = canonical_order([c.name for c in children], BOX_PROPS)
        return tuple(children[i] for i in order)
    if isinstance(node, ir.Model):
        props = [c for c in children if isinstance(c, ir.Prop)]
        order = canonical_order([c.name for c in props], MODEL_PROPS)
        return tuple(props[i] for i in order) + tuple(c for c in children if isinstance(c, ir.Repeat))
    if isinstance(node, ir.Train):
        props = [c for c in children if isinstance(c, ir.Prop)]
        order = canonical_order([c.name for c in props], TRAIN_PROPS)
        return tuple(c for c in children if isinstance(c, ir.OptimizerUse)) + tuple(props[i] for i in order)
    return tuple(children)


def _last_line(node: Any) -> int:
    return node.pos.end_line or node.pos.line


def _assemble(items: list[Any], comments: list[_Comment], file: str, default_name: str) -> ir.Spec:
    spec_name, title, spec_pos, spec_doc, spec_note = default_name, None, Pos(file=file), (), None
    groups: dict[str, list] = {"uses": [], "params": [], "boxes": [], "blocks": []}
    model = train = None
    prev = 0
    errors = Collector()
    for item in items:
        if isinstance(item, tuple) and item[0] == "spec":
            _, spec_name, title, spec_pos = item
            spec_doc = _take_docs(comments, spec_pos.line, prev)
            spec_note = _take_note(comments, spec_pos.line)
            prev = spec_pos.end_line
            continue
        node = _attach(item, comments, prev)
        prev = _last_line(node)
        if isinstance(node, ir.Use):
            groups["uses"].append(node)
        elif isinstance(node, ir.Param):
            groups["params"].append(node)
        elif isinstance(node, ir.Box):
            groups["boxes"].append(node)
        elif isinstance(node, ir.Block):
            groups["blocks"].append(node)
        elif isinstance(node, ir.Model):
            if model is not None:
                errors.error(node.pos, "a spec has one `model` section; this is the second",
                             hint=f"merge it into the first one at line {model.pos.line}")
            model = node
        elif isinstance(node, ir.Train):
            if train is not None:
                errors.error(node.pos, "a spec has one `train` section; this is the second",
                             hint=f"merge it into the first one at line {train.pos.line}")
            train = node
    errors.raise_if_errors()
    tail = tuple(c.text for c in comments if not c.used)
    return ir.Spec(name=spec_name, title=title, doc=spec_doc, note=spec_note, pos=spec_pos,
                   uses=tuple(groups["uses"]), params=tuple(groups["params"]),
                   boxes=tuple(groups["boxes"]), blocks=tuple(groups["blocks"]),
                   model=model, train=train, tail_doc=tail)


# ---------------------------------------------------------------------------------------------
# syntax errors in the language's own words
# ---------------------------------------------------------------------------------------------

_TERMINAL_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string in double quotes",
    "LBRACE": "`{`", "RBRACE": "`}`", "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`",
    "COLON": "`:`", "COMMA": "`,`", "EQUAL": "`=`", "COMPARE": "a comparison", "PLUS": "`+`",
    "MINUS": "`-`", "STAR": "`*`", "SLASH": "`/`", "PERCENT": "`%`", "POW": "`**`",
    "$END": "the end of the file",
}


def _word(terminal: str) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    if terminal.isupper() and terminal.isalpha():  # keyword terminals are the keyword, uppercased
        return f"`{terminal.lower()}`"
    return "a symbol"


def _token_words(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the file"
    if tok.type == "NAME":
        return f"the name `{tok}`"
    if tok.type == "NUMBER":
        return f"the number `{tok}`"
    if tok.type == "STRING":
        return "a string"
    return f"`{tok}`"


_TOP = {"SPEC", "USE", "PARAM", "BOX", "BLOCK", "MODEL", "TRAIN"}
_STATEMENT_START = _TOP | {"LET", "EVERY", "CONTEXT", "OPTIMIZER", "REPEAT"}
_EXPR_START = {"NUMBER", "STRING", "NAME", "LPAR", "LSQB", "MINUS", "TRUE", "FALSE", "IF", "NOT",
               "LIKE"}


def _expected(err: UnexpectedInput) -> set[str]:
    """The terminals that really fit where the error is. LALR merges the lookahead sets of
    similar states, so `err.expected` can name tokens that only fit elsewhere (after a param's
    value it lists box properties); the interactive parser tries each one and knows."""
    expected = set(getattr(err, "expected", ()) or ())
    parser = getattr(err, "interactive_parser", None)
    if parser is not None:
        accepted = parser.accepts()
        if accepted:
            return set(accepted)
    return expected


def _syntax_message(expected: set[str], tok: Token | None) -> tuple[str, str | None]:
    """(message, hint) for an unexpected token, from the set of terminals that would fit."""
    got = _token_words(tok) if tok is not None else "the end of the file"
    if {"EVERY", "CONTEXT"} <= expected:
        return (f"expected a box property or `}}`, found {got}",
                "a box property is a name and a value on its own, like `keys l2norm(k)`, "
                "`every 64 tokens` or `context g = grad(W)`")
    if {"LET", "BOX"} <= expected:
        return (f"expected a statement of the block or `}}`, found {got}",
                "a block holds `let NAME = EXPR`, `NAME = EXPR` (like `x = x + attn(x)`) and "
                "`box` declarations")
    if "REPEAT" in expected and "RBRACE" in expected:
        return (f"expected a model setting or `}}`, found {got}",
                "the model section holds settings like `dim 256` and `repeat 4 { my_block }`")
    if "OPTIMIZER" in expected and "RBRACE" in expected:
        return (f"expected a train setting or `}}`, found {got}",
                "the train section holds `optimizer adamw(lr = 3e-4)` and settings like "
                "`seq_len 128`")
    if _TOP & expected and "$END" in expected:
        return (f"expected a declaration, found {got}",
                "a spec is made of `spec`, `use`, `param`, `box`, `block`, `model` and `train` "
                "declarations")
    if expected and expected <= (_EXPR_START | {"RPAR", "RSQB"}) and "NUMBER" in expected:
        if tok is not None and tok.value in keywords() and tok.type not in _STATEMENT_START:
            # `linear(in, when)`; but `param a =` followed by `param b = 2` lacks its value
            return (f"`{tok}` is a reserved word and cannot be used as a name",
                    f"choose another name, like `{tok}_`")
        return f"expected an expression, found {got}", None
    if "RPAR" in expected and (tok is None or tok.type != "RPAR"):
        return (f"expected `)` to close the parenthesis, found {got}",
                "check that every `(` has its `)` and that arguments are separated by commas")
    if "RSQB" in expected:
        return f"expected `]` to close the list, found {got}", None
    if expected == {"EQUAL"}:
        return f"expected `=`, found {got}", None
    if expected == {"NAME"} and tok is not None and tok.type.isalpha() and tok.type.isupper() \
            and tok.type not in ("NAME", "NUMBER", "STRING"):
        return (f"`{tok}` is a reserved word and cannot be used as a name",
                f"choose another name, like `{tok}_`")
    if expected == {"NAME"}:
        return f"expected a name, found {got}", None
    if "COLON" in expected and len(expected) <= 2:
        return (f"expected `:` and the kind of the box, found {got}",
                "write `box NAME : memory { ... }` (kinds: memory, attention, weights)")
    if "LBRACE" in expected and len(expected) <= 3:
        return f"expected `{{`, found {got}", None
    words = sorted({_word(t) for t in expected if not t.startswith("__")})
    if len(words) > 6 or not words:
        return f"{got[0].upper()}{got[1:]} does not fit here", None
    return f"expected {', '.join(words[:-1]) + ' or ' + words[-1] if len(words) > 1 else words[0]}, found {got}", None


def _syntax_diagnostic(err: UnexpectedInput, file: str, text: str, line_offset: int) -> Diagnostic:
    lines = source_lines(text)
    if isinstance(err, UnexpectedCharacters):
        ch = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
        if ch in "'":
            msg, hint = "strings use double quotes", 'write "text" instead of \'text\''
        elif ch == '"':
            msg, hint = "this string is not closed on its line", 'end it with `"` on the same line'
        else:
            msg, hint = f"unexpected character `{ch}`", "names use letters, digits and `_`; " \
                "operators are + - * / % ** and comparisons"
        pos = Pos(file=file, line=err.line + line_offset, col=err.column,
                  end_line=err.line + line_offset, end_col=err.column + 1)
    elif isinstance(err, UnexpectedToken) and err.token.type != "$END":
        tok = err.token
        expected = _expected(err)
        msg, hint = _syntax_message(expected, tok)
        before = text[: tok.start_pos] if tok.start_pos is not None else ""
        if re.search(r"\bevery\s+[^\s{}]+\s*$", before) and expected == {"NAME"}:
            msg = f"`every` needs a unit after the count, found {_token_words(tok)}"
            hint = "write `every 64 tokens` (in-context) or `every 1 step` (per training step)"
        pos = _pos(file, tok, line_offset)
    else:  # end of file
        expected = _expected(err)
        depth, last_open = 0, None
        for i, line in enumerate(lines, 1):
            code = line.split("#", 1)[0]
            for j, ch in enumerate(code, 1):
                if ch == "{":
                    depth += 1
                    last_open = (i, j)
                elif ch == "}":
                    depth -= 1
        if depth > 0 and last_open:
            msg = "the file ends before this `{` is closed"
            hint = "add the missing `}`"
            pos = Pos(file=file, line=last_open[0] + line_offset, col=last_open[1],
                      end_line=last_open[0] + line_offset, end_col=last_open[1] + 1)
        else:
            msg, hint = _syntax_message(expected, None)
            n = len(lines)
            pos = Pos(file=file, line=max(n, 1) + line_offset,
                      col=len(lines[-1]) + 1 if lines else 1)
    line_text = None
    if pos.line - line_offset - 1 < len(lines):
        line_text = lines[pos.line - line_offset - 1]
    return Diagnostic(msg, pos, hint, source_line=line_text)


# ---------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------

_ITEM_START = re.compile(r"^(spec|use|param|box|block|model|train)\b", re.M)


def _parse_items(text: str, file: str, line_offset: int = 0):
    tree = _lark().parse(text, start="start")
    # Comments are ignored by the parser; a second, cheap lexing pass collects them for docs.
    comment_toks = [t for t in _lark().lex(text, dont_ignore=True) if t.type == "COMMENT"]
    return _transform(_ToIR(file, line_offset), tree), _comments(text, comment_toks, line_offset)


def _transform(transformer: Transformer, tree: Tree) -> Any:
    """Run a transformer, letting our own NestError through (lark wraps it in VisitError)."""
    try:
        return transformer.transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, NestError):
            raise err.orig_exc from None
        raise


def parse_nest(text: str, file: str = "<input>", sources: SourceMap | None = None) -> ir.Spec:
    """Parse `.nest` text into the IR; raises NestError with every syntax error found."""
    if sources is not None:
        sources.add(file, text)
    default_name = re.sub(r"\W", "_", file.rsplit("/", 1)[-1].rsplit(".", 1)[0]) or "spec"
    if default_name[0].isdigit():
        default_name = "_" + default_name
    try:
        items, comments = _parse_items(text, file)
    except UnexpectedInput as first:
        raise NestError(_all_syntax_errors(text, file, first)) from None
    except NestError as err:
        raise (sources.attach(err) if sources else _attach_lines(err, text)) from None
    try:
        spec = _assemble(items, comments, file, default_name)
    except NestError as err:
        raise (sources.attach(err) if sources else _attach_lines(err, text)) from None
    return spec


def _attach_lines(err: NestError, text: str) -> NestError:
    lines = source_lines(text)
    for d in err.diagnostics:
        if d.source_line is None and 1 <= d.pos.line <= len(lines):
            d.source_line = lines[d.pos.line - 1]
    return err


def _all_syntax_errors(text: str, file: str, first: UnexpectedInput) -> list[Diagnostic]:
    """Report the first error, then re-parse item by item to find errors in later items."""
    diags = [_syntax_diagnostic(first, file, text, 0)]
    starts = [m.start() for m in _ITEM_START.finditer(text)]
    if len(starts) < 2:
        return diags
    first_line = diags[0].pos.line
    bounds = starts + [len(text)]
    for a, b in zip(bounds, bounds[1:]):
        chunk = text[a:b]
        offset = text.count("\n", 0, a)
        if offset + chunk.count("\n") + 1 <= first_line:  # before or at the first error
            continue
        if offset < first_line <= offset + chunk.count("\n") + 1:
            continue
        try:
            _lark().parse(chunk, start="start")
        except UnexpectedInput as err:
            d = _syntax_diagnostic(err, file, chunk, offset)
            if d.pos.line != first_line:
                diags.append(d)
    return diags


def parse_expr(text: str, file: str = "<input>", line: int = 1, col: int = 1) -> ir.Expr:
    """Parse one expression (used for YAML values and `--set` overrides)."""
    try:
        tree = _lark().parse(text, start="expr")
    except UnexpectedInput as err:
        d = _syntax_diagnostic(err, file, text, 0)
        shifted = Pos(file=file, line=line + d.pos.line - 1,
                      col=(col + d.pos.col - 1) if d.pos.line == 1 else d.pos.col,
                      end_line=line + d.pos.end_line - 1,
                      end_col=(col + d.pos.end_col - 1) if d.pos.end_line == 1 else d.pos.end_col)
        raise NestError([Diagnostic(d.message.replace("the end of the file", "the end of the expression")
                                    .replace("The end of the file", "The end of the expression"),
                                    shifted, d.hint)]) from None
    expr = _transform(_ToIR(file), tree)
    if line != 1 or col != 1:
        expr = _shift_positions(expr, line - 1, col - 1)
    return expr


def _shift_positions(node: Any, dline: int, dcol: int) -> Any:
    """Move positions of an expression parsed from a string that starts at (1+dline, 1+dcol)."""
    if isinstance(node, ir.Node):
        updates = {}
        for k, v in node.__dict__.items():
            if k == "pos" and v.line:
                updates["pos"] = v.model_copy(update={
                    "line": v.line + dline, "end_line": v.end_line + dline,
                    "col": v.col + (dcol if v.line == 1 else 0),
                    "end_col": v.end_col + (dcol if v.end_line == 1 else 0)})
            elif isinstance(v, (ir.Node, tuple)):
                updates[k] = _shift_positions(v, dline, dcol)
        return node.model_copy(update=updates)
    if isinstance(node, tuple):
        return tuple(_shift_positions(v, dline, dcol) for v in node)
    return node


def is_tree(obj: Any) -> bool:  # used by tests to make sure no raw lark trees leak into the IR
    return isinstance(obj, (Tree, Token))
