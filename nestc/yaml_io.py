"""The YAML front end, and IR -> YAML for `nestc convert`.

A YAML spec says exactly what a `.nest` spec says, in this shape (the full schema is
`nestc schema`)::

    spec: titans
    title: "Titans"
    use: [cms, {path: other.nest}]
    params:
      d_model: 256
      d_head: d_model / heads          # expressions are strings in the .nest expression syntax
    boxes:
      - box: lmm                       # or a list of names
        kind: memory
        state: mlp(d_head, depth=2)
        every: 64 tokens
        context: {g: grad(W)}
    blocks:
      - block: layer
        body:
          - let: h
            value: rmsnorm(x)
          - set: x
            value: x + lmm(h)
    model:
      dim: d_model
      layers: [{repeat: 4, blocks: [layer]}]
    train:
      optimizers: [{name: adamw, args: {lr: 3e-4}, on: matrices}]
      seq_len: 128

Anything documented (a param, a box, a property...) may carry `doc:` (a string or a list of
lines) and `note:`; a property or param with docs is written `{value: ..., doc: ..., note: ...}`.
String literals inside expressions keep their double quotes: `mode: '"exact"'`.
"""

from __future__ import annotations

from typing import Any, Callable

import yaml

from . import ir
from .diagnostics import (Collector, Diagnostic, NestError, Pos, SourceMap, did_you_mean,
                          source_lines)
from .parser import is_name, keywords, parse_expr
from .printer import expr_str
from .props import BOX_PROPS, MODEL_PROPS, TRAIN_PROPS, canonical_order

# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


class _Loader:
    def __init__(self, file: str, errors: Collector):
        self.file = file
        self.errors = errors

    # -- node helpers --
    def pos(self, node: yaml.Node) -> Pos:
        m, e = node.start_mark, node.end_mark
        return Pos(file=self.file, line=m.line + 1, col=m.column + 1, end_line=e.line + 1,
                   end_col=e.column + 1)

    def mapping(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.errors.error(self.pos(node), f"{what} must be a mapping of `key: value` entries")
            return None
        out, seen = [], set()
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                self.errors.error(self.pos(k), f"keys in {what} must be plain names")
                continue
            if k.value in seen:
                self.errors.error(self.pos(k), f"`{k.value}` appears twice in {what}")
                continue
            seen.add(k.value)
            out.append((k.value, k, v))
        return out

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            self.errors.error(self.pos(node), f"{what} must be a list")
            return []
        return list(node.value)

    def scalar(self, node: yaml.Node, what: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.errors.error(self.pos(node), f"{what} must be a single value, not a "
                              f"{'list' if isinstance(node, yaml.SequenceNode) else 'mapping'}")
            return None
        return node.value

    def name(self, node: yaml.Node, what: str) -> str | None:
        s = self.scalar(node, what)
        if s is None:
            return None
        return s if self.check_name(s, node, what) else None

    def check_name(self, s: str, node: yaml.Node, what: str) -> bool:
        """Names are the .nest language's names, so that every YAML spec converts to .nest."""
        if s in keywords():
            self.errors.error(self.pos(node), f"{what}: `{s}` is a reserved word and cannot be "
                              "used as a name", hint=f"choose another name, like `{s}_`")
            return False
        if not is_name(s):
            self.errors.error(self.pos(node), f"{what} must be a name: ASCII letters, digits and "
                              f"`_`, not starting with a digit; got `{s}`")
            return False
        return True

    def expr(self, node: yaml.Node, what: str) -> ir.Expr | None:
        s = self.scalar(node, what)
        if s is None:
            return None
        if node.tag == "tag:yaml.org,2002:bool":
            return ir.Bool(value=s.lower() in ("true", "yes", "on"), pos=self.pos(node))
        if s.strip() == "":
            self.errors.error(self.pos(node), f"{what} is empty", hint="write an expression")
            return None
        # quoted scalars start one column after the quote
        quoted = node.style in ("'", '"')
        line, col = node.start_mark.line + 1, node.start_mark.column + 1 + (1 if quoted else 0)
        try:
            return parse_expr(s, self.file, line, col)
        except NestError as err:
            for d in err.diagnostics:
                d.message = f"in {what}: {d.message}"
            self.errors.extend(err)
            return None

    def docs(self, node: yaml.Node | None, what: str) -> tuple[str, ...]:
        if node is None:
            return ()
        if isinstance(node, yaml.ScalarNode):  # (trailing blanks dropped, as in .nest comments)
            return tuple(ln.rstrip() for ln in node.value.split("\n")) if node.value else ()
        if isinstance(node, yaml.SequenceNode):
            out: list[str] = []
            for item in node.value:
                s = self.scalar(item, f"a line of {what}")
                if s is not None:
                    out.extend(ln.rstrip() for ln in s.split("\n"))  # one comment line each
            return tuple(out)
        self.errors.error(self.pos(node), f"{what} must be a string or a list of lines")
        return ()

    def note(self, node: yaml.Node | None, what: str) -> str | None:
        if node is None:
            return None
        s = self.scalar(node, what)
        if s is not None and "\n" in s:
            self.errors.error(self.pos(node), f"{what} is one line (a comment at the end of a "
                              "line in .nest)", hint="put longer text in `doc:`")
            return None
        return s.rstrip() if s is not None else None

    def unknown(self, key: str, knode: yaml.Node, allowed, what: str) -> None:
        self.errors.error(self.pos(knode), f"unknown key `{key}` in {what}",
                          hint=did_you_mean(key, allowed) or
                          f"allowed keys: {', '.join(sorted(allowed))}")

    def documented_value(self, node: yaml.Node, what: str):
        """A value that may be written plain or as {value, doc, note}: (value_node, doc, note)."""
        if isinstance(node, yaml.MappingNode):
            entries = self.mapping(node, what) or []
            d = {k: (kn, v) for k, kn, v in entries}
            for k, kn, _ in entries:
                if k not in ("value", "doc", "note"):
                    self.unknown(k, kn, ("value", "doc", "note"), what)
            if "value" not in d:
                self.errors.error(self.pos(node), f"{what} has no `value`")
                return None, (), None
            return (d["value"][1], self.docs(d.get("doc", (None, None))[1], f"the doc of {what}"),
                    self.note(d.get("note", (None, None))[1], f"the note of {what}"))
        return node, (), None

    # -- sections --
    def spec(self, root: yaml.Node) -> ir.Spec | None:
        entries = self.mapping(root, "a YAML spec")
        if entries is None:
            return None
        d = {k: (kn, v) for k, kn, v in entries}
        allowed = ("spec", "title", "doc", "note", "use", "params", "boxes", "blocks", "model",
                   "train", "tail_doc")
        for k, kn, _ in entries:
            if k not in allowed:
                self.unknown(k, kn, allowed, "the spec")
        name = "spec"
        spec_pos = self.pos(root)
        if "spec" in d:
            name = self.name(d["spec"][1], "`spec`") or "spec"
            spec_pos = self.pos(d["spec"][0])
        else:
            self.errors.error(self.pos(root), "the YAML spec has no `spec:` name",
                              hint="add a first line like `spec: my_model`")
        get = lambda k: d[k][1] if k in d else None  # noqa: E731
        title = self.scalar(get("title"), "`title`") if get("title") is not None else None
        uses = tuple(u for u in (self.use(n) for n in self.sequence(get("use"), "`use`")) if u) \
            if get("use") is not None else ()
        params = self.params(get("params")) if get("params") is not None else ()
        boxes = tuple(b for b in (self.box(n) for n in self.sequence(get("boxes"), "`boxes`")) if b) \
            if get("boxes") is not None else ()
        blocks = tuple(b for b in (self.block(n) for n in self.sequence(get("blocks"), "`blocks`")) if b) \
            if get("blocks") is not None else ()
        model = self.model(get("model")) if get("model") is not None else None
        train = self.train(get("train")) if get("train") is not None else None
        return ir.Spec(name=name, title=title, doc=self.docs(get("doc"), "the spec's doc"),
                       note=self.note(get("note"), "the spec's note"), pos=spec_pos, uses=uses,
                       params=params, boxes=boxes, blocks=blocks, model=model, train=train,
                       tail_doc=self.docs(get("tail_doc"), "`tail_doc`"))

    def use(self, node: yaml.Node) -> ir.Use | None:
        if isinstance(node, yaml.MappingNode):
            entries = self.mapping(node, "a `use` entry") or []
            d = {k: (kn, v) for k, kn, v in entries}
            for k, kn, _ in entries:
                if k not in ("path", "name", "doc", "note"):
                    self.unknown(k, kn, ("path", "name", "doc", "note"), "a `use` entry")
            if ("path" in d) == ("name" in d):
                self.errors.error(self.pos(node), "a `use` entry written as a mapping needs "
                                  "either `path:` (a file) or `name:` (a built-in spec)")
                return None
            is_path = "path" in d
            target = (self.scalar(d["path"][1], "`path`") if is_path
                      else self.name(d["name"][1], "`name`"))
            return ir.Use(target=target or "", is_path=is_path, pos=self.pos(node),
                          doc=self.docs(d.get("doc", (None, None))[1], "the doc of `use`"),
                          note=self.note(d.get("note", (None, None))[1], "the note of `use`"))
        target = self.name(node, "a `use` entry")
        return ir.Use(target=target, pos=self.pos(node)) if target else None

    def params(self, node: yaml.Node) -> tuple[ir.Param, ...]:
        out = []
        for key, knode, vnode in self.mapping(node, "`params`") or []:
            if not self.check_name(key, knode, "a param"):
                continue
            vnode, doc, note = self.documented_value(vnode, f"param `{key}`")
            value = self.expr(vnode, f"param `{key}`") if vnode is not None else None
            if value is not None:
                out.append(ir.Param(name=key, value=value, doc=doc, note=note, pos=self.pos(knode)))
        return tuple(out)

    def prop(self, key: str, knode: yaml.Node, vnode: yaml.Node, what: str) -> list[ir.Prop]:
        if key == "context":
            props = []
            for bname, bk, bv in self.mapping(vnode, f"`context` of {what}") or []:
                if not self.check_name(bname, bk, f"a context name of {what}"):
                    continue
                bv, doc, note = self.documented_value(bv, f"context `{bname}` of {what}")
                value = self.expr(bv, f"context `{bname}` of {what}") if bv is not None else None
                if value is not None:
                    props.append(ir.Prop(name="context", binding=bname, value=value, doc=doc,
                                         note=note, pos=self.pos(bk)))
            return props
        vnode, doc, note = self.documented_value(vnode, f"`{key}` of {what}")
        if vnode is None:
            return []
        if key == "every":
            text = self.scalar(vnode, f"`every` of {what}")
            if text is None:
                return []
            count, _, unit = text.strip().rpartition(" ")
            if not count.strip():
                self.errors.error(self.pos(vnode), f"`every` of {what} needs a count and a unit",
                                  hint="write `every: 64 tokens` or `every: 1 step`")
                return []
            if not self.check_name(unit, vnode, f"the unit of `every` of {what}"):
                return []
            line, col = vnode.start_mark.line + 1, vnode.start_mark.column + 1
            try:
                value = parse_expr(count.strip(), self.file, line, col)
            except NestError as err:
                self.errors.extend(err)
                return []
            return [ir.Prop(name="every", value=value, unit=unit, doc=doc, note=note,
                            pos=self.pos(knode))]
        value = self.expr(vnode, f"`{key}` of {what}")
        return [ir.Prop(name=key, value=value, doc=doc, note=note, pos=self.pos(knode))] if value else []

    def box(self, node: yaml.Node) -> ir.Box | None:
        entries = self.mapping(node, "a box")
        if entries is None:
            return None
        d = {k: (kn, v) for k, kn, v in entries}
        if "box" not in d:
            self.errors.error(self.pos(node), "a box entry needs `box:` (its name or a list of names)")
            return None
        names_node = d["box"][1]
        if isinstance(names_node, yaml.SequenceNode):
            names = tuple(n for n in (self.name(x, "a box name") for x in names_node.value) if n)
        else:
            n = self.name(names_node, "the box name")
            names = (n,) if n else ()
        what = f"box `{', '.join(names)}`"
        if "kind" not in d:
            self.errors.error(self.pos(node), f"{what} has no `kind`",
                              hint="add `kind: memory` (or attention, weights)")
            return None
        kind = self.name(d["kind"][1], f"the kind of {what}") or "memory"
        meta = {"box", "kind", "like", "when", "doc", "note", "tail_doc"}
        props: list[ir.Prop] = []
        for k, kn, v in entries:
            if k in meta:
                continue
            if k not in BOX_PROPS:
                self.unknown(k, kn, list(BOX_PROPS) + sorted(meta), what)
                continue
            props.extend(self.prop(k, kn, v, what))
        order = canonical_order([p.name for p in props], BOX_PROPS)
        get = lambda k: d[k][1] if k in d else None  # noqa: E731
        return ir.Box(names=names, box_kind=kind, pos=self.pos(d["box"][0]),
                      like=self.name(get("like"), f"`like` of {what}") if get("like") else None,
                      when=self.expr(get("when"), f"`when` of {what}") if get("when") else None,
                      props=tuple(props[i] for i in order),
                      doc=self.docs(get("doc"), f"the doc of {what}"),
                      note=self.note(get("note"), f"the note of {what}"),
                      tail_doc=self.docs(get("tail_doc"), f"`tail_doc` of {what}"))

    def block(self, node: yaml.Node) -> ir.Block | None:
        entries = self.mapping(node, "a block")
        if entries is None:
            return None
        d = {k: (kn, v) for k, kn, v in entries}
        allowed = ("block", "body", "doc", "note", "tail_doc")
        for k, kn, _ in entries:
            if k not in allowed:
                self.unknown(k, kn, allowed, "a block")
        if "block" not in d:
            self.errors.error(self.pos(node), "a block entry needs `block:` (its name)")
            return None
        name = self.name(d["block"][1], "the block name") or "block"
        body = []
        for item in self.sequence(d["body"][1], f"the body of block `{name}`") if "body" in d else []:
            stmt = self.stmt(item, name)
            if stmt is not None:
                body.append(stmt)
        get = lambda k: d[k][1] if k in d else None  # noqa: E731
        return ir.Block(name=name, body=tuple(body), pos=self.pos(d["block"][0]),
                        doc=self.docs(get("doc"), f"the doc of block `{name}`"),
                        note=self.note(get("note"), f"the note of block `{name}`"),
                        tail_doc=self.docs(get("tail_doc"), f"`tail_doc` of block `{name}`"))

    def stmt(self, node: yaml.Node, block: str):
        entries = self.mapping(node, f"a statement of block `{block}`")
        if entries is None:
            return None
        d = {k: (kn, v) for k, kn, v in entries}
        if "box" in d:
            return self.box(node)
        get = lambda k: d[k][1] if k in d else None  # noqa: E731
        for key, cls in (("let", ir.Let), ("set", ir.Assign)):
            if key in d:
                allowed = (key, "value", "doc", "note") + (("when",) if key == "let" else ())
                for k, kn, _ in entries:
                    if k not in allowed:
                        self.unknown(k, kn, allowed, f"a `{key}` statement of block `{block}`")
                target = self.name(d[key][1], f"the name in `{key}`")
                if "value" not in d:
                    self.errors.error(self.pos(node), f"`{key}: {target}` has no `value:`")
                    return None
                value = self.expr(d["value"][1], f"`{key}: {target}`")
                if not target or value is None:
                    return None
                common = dict(value=value, pos=self.pos(d[key][0]),
                              doc=self.docs(get("doc"), f"the doc of `{target}`"),
                              note=self.note(get("note"), f"the note of `{target}`"))
                if key == "let":
                    when = self.expr(get("when"), f"`when` of `{target}`") if get("when") else None
                    return ir.Let(name=target, when=when, **common)
                return ir.Assign(target=target, **common)
        self.errors.error(self.pos(node), f"a statement of block `{block}` must have `let:`, "
                          "`set:` or `box:`",
                          hint="write `- let: h` / `value: rmsnorm(x)`, or `- set: x` / "
                               "`value: x + attn(h)`")
        return None

    def settings(self, node, what, table, extra: dict[str, Callable]):
        entries = self.mapping(node, what) or []
        d = {k: (kn, v) for k, kn, v in entries}
        props, others = [], {}
        for k, kn, v in entries:
            if k in ("doc", "note", "tail_doc"):
                continue
            if k in extra:
                others[k] = extra[k](v)
            elif k in table:
                props.extend(self.prop(k, kn, v, what))
            else:
                self.unknown(k, kn, list(table) + list(extra) + ["doc", "note", "tail_doc"], what)
        order = canonical_order([p.name for p in props], table)
        get = lambda k: d[k][1] if k in d else None  # noqa: E731
        docs = dict(doc=self.docs(get("doc"), f"the doc of {what}"),
                    note=self.note(get("note"), f"the note of {what}"),
                    tail_doc=self.docs(get("tail_doc"), f"`tail_doc` of {what}"))
        return [props[i] for i in order], others, docs

    def model(self, node: yaml.Node) -> ir.Model:
        props, others, docs = self.settings(node, "the model", MODEL_PROPS,
                                            {"layers": self.layers})
        return ir.Model(body=tuple(props) + tuple(others.get("layers", ())), pos=self.pos(node),
                        **docs)

    def layers(self, node: yaml.Node) -> list[ir.Repeat]:
        out = []
        for item in self.sequence(node, "`layers`"):
            entries = self.mapping(item, "a `layers` entry") or []
            d = {k: (kn, v) for k, kn, v in entries}
            for k, kn, _ in entries:
                if k not in ("repeat", "blocks", "doc", "note"):
                    self.unknown(k, kn, ("repeat", "blocks", "doc", "note"), "a `layers` entry")
            if "repeat" not in d or "blocks" not in d:
                self.errors.error(self.pos(item), "a `layers` entry needs `repeat:` and `blocks:`",
                                  hint="write `- {repeat: 4, blocks: [my_block]}`")
                continue
            count = self.expr(d["repeat"][1], "`repeat`")
            bnode = d["blocks"][1]
            blocks = [self.name(b, "a block name") for b in self.sequence(bnode, "`blocks`")]
            if count is not None and all(blocks) and blocks:
                get = lambda k: d[k][1] if k in d else None  # noqa: E731
                out.append(ir.Repeat(count=count, blocks=tuple(blocks), pos=self.pos(item),
                                     doc=self.docs(get("doc"), "the doc of `repeat`"),
                                     note=self.note(get("note"), "the note of `repeat`")))
        return out

    def train(self, node: yaml.Node) -> ir.Train:
        props, others, docs = self.settings(node, "the train section", TRAIN_PROPS,
                                            {"optimizers": self.optimizers})
        return ir.Train(body=tuple(others.get("optimizers", ())) + tuple(props),
                        pos=self.pos(node), **docs)

    def optimizers(self, node: yaml.Node) -> list[ir.OptimizerUse]:
        out = []
        for item in self.sequence(node, "`optimizers`"):
            entries = self.mapping(item, "an `optimizers` entry") or []
            d = {k: (kn, v) for k, kn, v in entries}
            for k, kn, _ in entries:
                if k not in ("name", "args", "on", "doc", "note"):
                    self.unknown(k, kn, ("name", "args", "on", "doc", "note"), "an optimizer")
            if "name" not in d:
                self.errors.error(self.pos(item), "an optimizer needs `name:`",
                                  hint="write `- {name: adamw, args: {lr: 3e-4}}`")
                continue
            name = self.name(d["name"][1], "the optimizer name")
            args = []
            if "args" in d:
                for k, kn, v in self.mapping(d["args"][1], "`args`") or []:
                    if not self.check_name(k, kn, "an optimizer argument"):
                        continue
                    value = self.expr(v, f"optimizer argument `{k}`")
                    if value is not None:
                        args.append(ir.KwArg(name=k, value=value, pos=self.pos(kn)))
            get = lambda k: d[k][1] if k in d else None  # noqa: E731
            on = self.name(get("on"), "`on`") if get("on") is not None else None
            if name:
                out.append(ir.OptimizerUse(name=name, args=tuple(args), on=on, pos=self.pos(item),
                                           doc=self.docs(get("doc"), "the doc of the optimizer"),
                                           note=self.note(get("note"), "the optimizer's note")))
        return out


def parse_yaml(text: str, file: str = "<input>", sources: SourceMap | None = None) -> ir.Spec:
    if sources is not None:
        sources.add(file, text, yaml=True)
    lines = source_lines(text, yaml=True)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 0
        raise NestError([Diagnostic(f"this is not valid YAML: {err.problem or err}",
                                    Pos(file=file, line=line, col=(mark.column + 1) if mark else 0),
                                    hint="check the indentation and that `key: value` pairs use "
                                         "a space after the colon",
                                    source_line=lines[line - 1] if 0 < line <= len(lines) else None)]) from None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (no mark)
        before = source_lines(text[: err.position] + "|", yaml=True)
        line, col = len(before), len(before[-1])
        raise NestError([Diagnostic(f"this is not valid YAML: the character U+{err.character:04X} "
                                    "is not allowed in a YAML file",
                                    Pos(file=file, line=line, col=col), hint="remove it",
                                    source_line=lines[line - 1] if 0 < line <= len(lines) else None)]) from None
    errors = Collector(sources)
    if root is None:
        raise NestError([Diagnostic("the YAML file is empty", Pos(file=file, line=1, col=1),
                                    hint="a YAML spec starts with `spec: NAME`")])
    loader = _Loader(file, errors)
    spec = loader.spec(root)
    if sources is None:
        for d in errors.items:
            if d.source_line is None and 1 <= d.pos.line <= len(lines):
                d.source_line = lines[d.pos.line - 1]
    errors.raise_if_errors()
    assert spec is not None
    return spec


# ---------------------------------------------------------------------------------------------
# IR -> YAML
# ---------------------------------------------------------------------------------------------


def _docval(value: Any, node: ir.Documented) -> Any:
    if not node.doc and node.note is None:
        return value
    out: dict[str, Any] = {"value": value}
    if node.doc:
        out["doc"] = _doc(node.doc)
    if node.note is not None:
        out["note"] = node.note
    return out


def _doc(lines: tuple[str, ...]) -> Any:
    # one line as a plain string, except an empty one (YAML's `doc: ''` reads as no doc at all)
    return lines[0] if len(lines) == 1 and lines[0] else list(lines)


def _put(d: dict, key: str, value: Any, node: ir.Node, what: str) -> None:
    """d[key] = value, refusing to overwrite: a YAML mapping holds one value per key, so a .nest
    spec that gives a property twice (or a property named like a YAML key, `kind`) has no YAML
    form, and converting it must not silently drop or reinterpret one of them."""
    if key in d:
        raise NestError.at(node.pos, f"{what} has `{key}` twice, which YAML cannot hold",
                           hint="remove one of them (`nestc check` reports this spec too)")
    d[key] = value


def _yaml_keeps(v: float | int) -> bool:
    """Does YAML write this number back as its repr? (PyYAML writes 1e-05 as 1.0e-05.)"""
    return isinstance(v, int) or "e" not in repr(v) or "." in repr(v)


def _e(e: ir.Expr) -> Any:
    """An expression as a YAML scalar: numbers and booleans stay numbers and booleans."""
    if isinstance(e, ir.Num) and e.text == repr(e.value) and _yaml_keeps(e.value):
        return e.value
    if isinstance(e, ir.Bool):
        return e.value
    return expr_str(e)


def _docs_into(d: dict, node: ir.Documented) -> None:
    if node.doc:
        d["doc"] = _doc(node.doc)
    if node.note is not None:
        d["note"] = node.note


def _props_into(d: dict, props: tuple[ir.Prop, ...], what: str, meta: tuple[str, ...]) -> None:
    for p in props:
        if p.name in meta:  # `box m : weights { kind memory }` must not become a memory box
            raise NestError.at(p.pos, f"{what} has a property named `{p.name}`, which in YAML "
                               "means something else", hint=f"`{p.name}` is not a property; "
                               "`nestc check` reports this spec too")
        if p.name == "context":
            _put(d.setdefault("context", {}), p.binding, _docval(_e(p.value), p), p,
                 f"the context of {what}")
        elif p.name == "every":
            _put(d, "every", _docval(f"{expr_str(p.value)} {p.unit}", p), p, what)
        else:
            _put(d, p.name, _docval(_e(p.value), p), p, what)


_BOX_META = ("box", "kind", "like", "when", "doc", "note", "tail_doc")


def _box_obj(b: ir.Box) -> dict:
    d: dict[str, Any] = {"box": b.names[0] if len(b.names) == 1 else list(b.names),
                         "kind": b.box_kind}
    if b.like:
        d["like"] = b.like
    if b.when is not None:
        d["when"] = _e(b.when)
    _docs_into(d, b)
    _props_into(d, b.props, f"box `{', '.join(b.names)}`", _BOX_META)
    if b.tail_doc:
        d["tail_doc"] = _doc(b.tail_doc)
    return d


def spec_to_obj(spec: ir.Spec) -> dict:
    d: dict[str, Any] = {"spec": spec.name}
    if spec.title is not None:
        d["title"] = spec.title
    _docs_into(d, spec)
    if spec.uses:
        uses = []
        for u in spec.uses:
            if u.is_path or u.doc or u.note is not None:
                entry: dict[str, Any] = {"path" if u.is_path else "name": u.target}
                _docs_into(entry, u)
                uses.append(entry)
            else:
                uses.append(u.target)
        d["use"] = uses
    if spec.params:
        d["params"] = {}
        for p in spec.params:
            _put(d["params"], p.name, _docval(_e(p.value), p), p, "the spec")
    if spec.boxes:
        d["boxes"] = [_box_obj(b) for b in spec.boxes]
    if spec.blocks:
        blocks = []
        for blk in spec.blocks:
            bd: dict[str, Any] = {"block": blk.name}
            _docs_into(bd, blk)
            body = []
            for s in blk.body:
                if isinstance(s, ir.Box):
                    body.append(_box_obj(s))
                    continue
                sd: dict[str, Any] = ({"let": s.name} if isinstance(s, ir.Let) else {"set": s.target})
                sd["value"] = _e(s.value)
                if isinstance(s, ir.Let) and s.when is not None:
                    sd["when"] = _e(s.when)
                _docs_into(sd, s)
                body.append(sd)
            bd["body"] = body
            if blk.tail_doc:
                bd["tail_doc"] = _doc(blk.tail_doc)
            blocks.append(bd)
        d["blocks"] = blocks
    if spec.model is not None:
        md: dict[str, Any] = {}
        _docs_into(md, spec.model)
        _props_into(md, tuple(x for x in spec.model.body if isinstance(x, ir.Prop)), "the model",
                    ("layers", "doc", "note", "tail_doc"))
        layers = []
        for r in spec.model.body:
            if isinstance(r, ir.Repeat):
                rd: dict[str, Any] = {"repeat": _e(r.count), "blocks": list(r.blocks)}
                _docs_into(rd, r)
                layers.append(rd)
        if layers:
            md["layers"] = layers
        if spec.model.tail_doc:
            md["tail_doc"] = _doc(spec.model.tail_doc)
        d["model"] = md
    if spec.train is not None:
        td: dict[str, Any] = {}
        _docs_into(td, spec.train)
        opts = []
        for o in spec.train.body:
            if isinstance(o, ir.OptimizerUse):
                od: dict[str, Any] = {"name": o.name}
                if o.args:
                    od["args"] = {}
                    for k in o.args:
                        _put(od["args"], k.name, _e(k.value), k, f"optimizer `{o.name}`")
                if o.on:
                    od["on"] = o.on
                _docs_into(od, o)
                opts.append(od)
        if opts:
            td["optimizers"] = opts
        _props_into(td, tuple(x for x in spec.train.body if isinstance(x, ir.Prop)),
                    "the train section", ("optimizers", "doc", "note", "tail_doc"))
        if spec.train.tail_doc:
            td["tail_doc"] = _doc(spec.train.tail_doc)
        d["train"] = td
    if spec.tail_doc:
        d["tail_doc"] = _doc(spec.tail_doc)
    return d


class _Dumper(yaml.SafeDumper):
    pass


# line breaks YAML knows besides \n: in a plain or block scalar they would load back as a line
# break or a space (a .nest comment keeps them as text), so such strings are written quoted,
# where the emitter escapes them
_OTHER_BREAKS = ("\r", "\x85", "\u2028", "\u2029")


def _str_presenter(dumper, data):
    if any(b in data for b in _OTHER_BREAKS):
        style = '"'
    else:
        style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def format_yaml(spec: ir.Spec) -> str:
    return yaml.dump(spec_to_obj(spec), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     width=100, default_flow_style=False)
