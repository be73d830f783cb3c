"""IR -> resolved program: imports merged, params evaluated, names resolved, shapes inferred.

Every problem found is collected and reported together (nestc.diagnostics.Collector). The passes:

1. merge   -- a spec's own declarations over those of the specs it `use`s (later wins, so a spec can
              override a used spec's params, boxes and blocks);
2. params  -- evaluated in dependency order, with `--set name=value` overrides;
3. model   -- the layer stack from `repeat` statements;
4. blocks  -- statements in order (lets must be defined before use), box reads typed at the read;
5. boxes   -- properties typed; generators see every let of their block (a box learns over time,
              so its keys may come from a stream computed after its read, as in Hope);
6. train   -- settings and optimizer specs, each resolved as a program of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ir
from .diagnostics import Collector, NestError, Pos, did_you_mean
from .functions import (FUNCTIONS, INIT_FORMS, OPTIMIZER_FORMS, RETENTION_FORMS, STATE_FORMS,
                        WORDS, Fn)
from .loader import Loaded, builtin_path, load, parse_file
from .parser import parse_expr
from .printer import expr_str
from .program import (BlockInfo, BoxInfo, Frequency, OptimizerInfo, Program, StateInfo,
                      Statement)
from .props import BOX_KINDS, BOX_PROPS, MODEL_PROPS, OPTIMIZER_GROUPS, TRAIN_PROPS, UNITS
from .types import COUNTER, LIKE, Ty, boxref, const, head, stream, word

RESERVED_NAMES = {"x", "in", "M", "step", "lss"}
MAX_LAYERS = 4096  # layers a model may stack (a bound, so that `repeat 1e9` is an error, not a hang)
MAX_INT = 2 ** 1024  # compile-time whole numbers beyond a float's range are "too large"
MAX_MEMORY_DEPTH = 1024  # layers of one MLP memory (Titans studies 1-4; the bound keeps a typo from hanging)

# ---------------------------------------------------------------------------------------------
# merged namespace
# ---------------------------------------------------------------------------------------------


@dataclass
class Namespace:
    params: dict[str, ir.Param] = field(default_factory=dict)
    boxes: dict[str, ir.Box] = field(default_factory=dict)  # top-level boxes by name
    blocks: dict[str, ir.Block] = field(default_factory=dict)
    model: ir.Model | None = None
    train: ir.Train | None = None
    refused: set[str] = field(default_factory=set)  # names whose declaration was an error


def _merge(loaded: Loaded, spec: ir.Spec, path: Path, errors: Collector) -> Namespace:
    ns = Namespace()
    for _use, sub, subpath in loaded.used(spec, path):
        inner = _merge(loaded, sub, subpath, errors)
        ns.params.update(inner.params)
        ns.boxes.update(inner.boxes)
        ns.blocks.update(inner.blocks)
        ns.model = inner.model or ns.model
        ns.train = inner.train or ns.train
    seen: dict[str, tuple[str, Pos]] = {}

    def declare(name: str, what: str, pos: Pos) -> bool:
        if name in seen:
            other_what, other = seen[name]
            errors.error(pos, f"`{name}` is declared twice in this spec (as a {other_what} at "
                              f"line {other.line} and as a {what} here)",
                         hint="give one of them another name")
            return False
        if name in RESERVED_NAMES or name in FUNCTIONS:
            errors.error(pos, f"`{name}` is a built-in name and cannot name a {what}",
                         hint=f"choose another name, like `{name}_`")
            ns.refused.add(name)  # its uses are not reported again as unknown
            return False
        seen[name] = (what, pos)
        return True

    for p in spec.params:
        if declare(p.name, "param", p.pos):
            ns.params[p.name] = p
    for b in spec.boxes:
        for n in b.names:
            if declare(n, "box", b.pos):
                ns.boxes[n] = b
    for blk in spec.blocks:
        if declare(blk.name, "block", blk.pos):
            ns.blocks[blk.name] = blk
    ns.model = spec.model or ns.model
    ns.train = spec.train or ns.train
    return ns


# ---------------------------------------------------------------------------------------------
# environments for expression checking
# ---------------------------------------------------------------------------------------------


@dataclass
class Env:
    scope: str  # const | block | gen | inner | opt
    what: str  # "the keys of box `lmm`" -- for messages
    names: dict[str, Ty] = field(default_factory=dict)
    boxes: dict[str, BoxInfo] = field(default_factory=dict)  # readable boxes, by local name
    box: BoxInfo | None = None  # the box these expressions belong to
    heads: int = 1
    role: str = "generator"  # how a reference to another box is recorded
    refs: list[tuple[str, str, bool]] = field(default_factory=list)
    let_refs: dict[str, set] = field(default_factory=dict)
    stop: bool = False
    on_read: Any = None  # callback(box_local_name, arg_width, pos) at a box read
    allow_lss: bool = False
    block_ctx: Any = None  # (block, qualified name, count, call stack) in block statements

    def child(self, **kw) -> "Env":
        d = dict(self.__dict__)
        d.update(kw)
        return Env(**d)


class Fail(Exception):
    """An expression could not be typed; the diagnostic is already collected."""


# ---------------------------------------------------------------------------------------------
# the resolver
# ---------------------------------------------------------------------------------------------


class Resolver:
    def __init__(self, loaded: Loaded, overrides: dict[str, str] | None = None,
                 errors: Collector | None = None, symbolic_params: bool = False):
        # symbolic_params: keep param names in expressions (checked as their constant values)
        # instead of folding them away -- optimizer specs need `lr` to stay a name, so that the
        # generated optimizer reads it from its param group and schedules can change it
        self.symbolic_params = symbolic_params
        self.loaded = loaded
        self.errors = errors or Collector(loaded.sources)
        self.overrides = overrides or {}
        self.values: dict[str, Any] = {}
        self.ns = Namespace()
        self.boxes: dict[str, BoxInfo] = {}
        self.blocks: dict[str, BlockInfo] = {}
        self.dim = 0
        self.types: dict[int, Ty] = {}
        self._keep: list = []

    # -- errors --
    def err(self, pos: Pos | None, msg: str, hint: str | None = None) -> None:
        self.errors.error(pos, msg, hint)

    def fail(self, pos: Pos | None, msg: str, hint: str | None = None):
        self.err(pos, msg, hint)
        raise Fail()

    # -- entry point --
    def run(self) -> Program:
        root, path = self.loaded.root, self.loaded.path
        self.ns = _merge(self.loaded, root, path, self.errors)
        self._params()
        model = self._model()
        train = self._train_settings()
        top_env = self._top_boxes()
        layers = model.pop("_layers", [])
        for bname in dict.fromkeys(layers):
            self._block(bname, top_env, count=layers.count(bname))
        optimizers = self._optimizers(model)
        self.errors.raise_if_errors()
        from .loader import _display

        return Program(name=root.name, title=root.title, path=_display(path), params=dict(self.values),
                       param_pos={k: p.pos for k, p in self.ns.params.items()},
                       boxes=self.boxes, blocks=self.blocks, layers=layers, model=model,
                       train=train, optimizers=optimizers,
                       source_text=_safe_read(path), warnings=self.errors.warnings,
                       sources=self.loaded.sources, types=self.types, _keep=self._keep)

    # ------------------------------------------------------------------ params
    def _params(self) -> None:
        exprs: dict[str, ir.Expr] = {n: p.value for n, p in self.ns.params.items()}
        for key, text in self.overrides.items():
            if key not in exprs:
                self.err(Pos(file="--set"), f"`--set {key}=...`: the spec has no param `{key}`",
                         hint=did_you_mean(key, exprs) or
                         f"its params are: {', '.join(sorted(exprs)) or '(none)'}")
                continue
            try:
                exprs[key] = parse_expr(_override_text(text), f"--set {key}")
            except NestError as e:
                self.errors.extend(e)
        state: dict[str, str] = {}
        busy: list[str] = []  # the params being evaluated, outermost first

        def value(name: str, pos: Pos) -> Any:
            if name in self.values:
                return self.values[name]
            if state.get(name) == "busy":
                cycle = busy[busy.index(name):] + [name]
                self.fail(pos, f"param `{name}` depends on itself: " + " -> ".join(cycle),
                          hint="break the cycle: one of the params must be a plain value")
            if state.get(name) == "failed":
                raise Fail()
            state[name] = "busy"
            busy.append(name)
            try:
                v = self._const(exprs[name], value, f"param `{name}`")
            except Fail:
                state[name] = "failed"
                raise
            finally:
                busy.pop()
            state[name] = "done"
            self.values[name] = v
            return v

        self._param_value = value
        for name, p in self.ns.params.items():
            try:
                value(name, p.pos)
            except Fail:
                pass

    def _const(self, e: ir.Expr, lookup, what: str) -> Any:
        """Evaluate a compile-time expression (params and literals only)."""
        if isinstance(e, (ir.Num, ir.Str, ir.Bool)):
            return e.value
        if isinstance(e, ir.Name):
            if e.id in self.ns.params:
                return lookup(e.id, e.pos)
            quote_hint = None
            if e.pos.file.startswith("--set "):  # `--set mid_unit=steps` meant the string
                quote_hint = (f"a string needs double quotes: --set {e.pos.file[6:]}="
                              f"'\"{e.id}\"'")
            self.fail(e.pos, f"unknown name `{e.id}` in {what}",
                      hint=did_you_mean(e.id, self.ns.params) or quote_hint or
                      "a param's value may use numbers, strings, true/false and other params")
        if isinstance(e, ir.ListExpr):
            return [self._const(i, lookup, what) for i in e.items]
        if isinstance(e, ir.IfExpr):
            c = self._const(e.cond, lookup, what)
            return self._const(e.then if c else e.orelse, lookup, what)
        if isinstance(e, ir.UnaryOp):
            v = self._const(e.operand, lookup, what)
            if e.op == "not":
                return not v
            self._need_number(v, e.operand.pos, "`-`")
            return -v
        if isinstance(e, ir.BinOp):
            a = self._const(e.left, lookup, what)
            if e.op in ("and", "or"):
                return (a and self._const(e.right, lookup, what)) if e.op == "and" else \
                    (a or self._const(e.right, lookup, what))
            b = self._const(e.right, lookup, what)
            return self._arith(e.op, a, b, e)
        if isinstance(e, ir.Call):
            fn = FUNCTIONS.get(e.func)
            if fn is None and not self._callable_name(e.func):
                self.fail(e.pos, f"unknown function `{e.func}` in {what}",
                          hint=did_you_mean(e.func, [n for n, f in FUNCTIONS.items()
                                                     if "const" in f.scopes]) or
                          "`nestc specs --functions` lists the built-in functions")
            if fn is None or "const" not in fn.scopes:
                self.fail(e.pos, f"`{e.func}(...)` cannot be computed at compile time in {what}",
                          hint="params hold constants; functions allowed there: "
                               + ", ".join(sorted(n for n, f in FUNCTIONS.items() if "const" in f.scopes)))
            args = [self._const(a, lookup, what) for a in e.args]
            if len(args) != len(fn.args) or e.kwargs:
                self.fail(e.pos, f"`{e.func}` takes {len(fn.args)} argument(s): {fn.signature()}")
            return self._const_call(e, fn, args)
        self.fail(e.pos, f"cannot evaluate this in {what}")

    def _callable_name(self, name: str) -> bool:
        """Does `name(...)` mean something somewhere in the language (a function, a box, a block,
        the state M or a property's constructor)?"""
        if name in FUNCTIONS or name == "M" or name in self.ns.blocks or name in self.ns.boxes:
            return True
        if any(name in t for t in (STATE_FORMS, INIT_FORMS, RETENTION_FORMS, OPTIMIZER_FORMS)):
            return True
        return any(isinstance(st, ir.Box) and name in st.names
                   for blk in self.ns.blocks.values() for st in blk.body)

    def _need_number(self, v: Any, pos: Pos, what: str) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(pos, f"{what} needs a number, got {v!r}")

    def _arith(self, op: str, a: Any, b: Any, e: ir.BinOp) -> Any:
        if op in ("==", "!="):
            return (a == b) if op == "==" else (a != b)
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            return a + b
        self._need_number(a, e.left.pos, f"`{op}`")
        self._need_number(b, e.right.pos, f"`{op}`")
        if op == "**" and isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and \
                b * math.log2(abs(a)) > 1024:  # decide before Python spends ages on the power
            self.fail(e.pos, "this number is too large")
        return self._finite(self._arith_raw(op, a, b, e), e.pos, f"`{op}`")

    def _finite(self, v: Any, pos: Pos, what: str) -> Any:
        """A compile-time result a spec can use: a real number of sensible size."""
        if isinstance(v, complex):
            self.fail(pos, f"{what} gives a complex number, not a real one",
                      hint="a negative number to a fractional power is not a real number")
        if isinstance(v, float) and not math.isfinite(v) or \
                isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
            self.fail(pos, "this number is too large")
        return v

    def _arith_raw(self, op: str, a: Any, b: Any, e: ir.BinOp) -> Any:
        try:
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "/":
                if isinstance(a, int) and isinstance(b, int) and b != 0 and a % b == 0:
                    return a // b
                return a / b
            if op == "%":
                return a % b
            if op == "**":
                return a ** b
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
        except ZeroDivisionError:
            self.fail(e.right.pos, "division by zero")
        except OverflowError:
            self.fail(e.pos, "this number is too large")

    def _const_call(self, e: ir.Call, fn: Fn, args: list) -> Any:
        for a in args:
            self._need_number(a, e.pos, f"`{fn.name}`")
        try:
            import math as m

            f = {"silu": lambda x: x / (1 + m.exp(-x)), "gelu": lambda x: 0.5 * x * (1 + m.erf(x / m.sqrt(2))),
                 "relu": lambda x: max(x, 0), "sigmoid": lambda x: 1 / (1 + m.exp(-x)),
                 "tanh": m.tanh, "softplus": lambda x: m.log1p(m.exp(x)), "exp": m.exp,
                 "log": m.log, "sqrt": m.sqrt, "abs": abs,
                 "sign": lambda x: (x > 0) - (x < 0), "min": min, "max": max,
                 "clamp": lambda x, lo, hi: min(max(x, lo), hi), "int": int, "round": round}[fn.name]
            return self._finite(f(*args), e.pos, f"`{fn.name}`")
        except (ValueError, OverflowError) as err:
            self.fail(e.pos, f"`{fn.name}` of {args} is undefined ({err})")

    # ------------------------------------------------------------------ model and train settings
    def _settings(self, section: ir.Model | ir.Train | None, table, what: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if section is None:
            return out
        for item in section.body:
            if not isinstance(item, ir.Prop):
                continue
            if item.name not in table:
                self.err(item.pos, f"unknown setting `{item.name}` in the {what} section",
                         hint=did_you_mean(item.name, table) or
                         f"settings of the {what} section: {', '.join(table)}")
                continue
            words = SETTING_WORDS.get(item.name)
            value = self._fold_if(item.value)
            if words and isinstance(value, ir.Name) and value.id not in self.values:
                v: Any = value.id
            else:
                try:
                    v = self._const(value, self._param_value, f"`{item.name}`")
                except Fail:
                    continue
            if words and v not in words:
                self.err(item.value.pos, f"`{item.name}` must be " + " or ".join(words) + f", got {v!r}",
                         hint=did_you_mean(str(v), words))
                continue
            if item.name in ("seq_len", "batch", "steps", "dim", "vocab") and not _is_whole(v):
                self.err(item.value.pos, f"`{item.name}` must be a positive whole number, got {v!r}")
            out[item.name] = v
        return out

    def _model(self) -> dict[str, Any]:
        m = self.ns.model
        if m is None:
            return {"_layers": []}
        model = self._settings(m, MODEL_PROPS, "model")
        if "dim" not in model:
            self.err(m.pos, "the model section has no `dim`", hint="add `dim 256` (the model width)")
        self.dim = int(model.get("dim", 0) or 0)
        norm = model.setdefault("norm", "rmsnorm")
        if isinstance(norm, str) is False and norm not in ("rmsnorm", "layernorm", "none"):
            pass
        layers: list[str] = []
        for r in m.body:
            if not isinstance(r, ir.Repeat):
                continue
            try:
                n = self._const(r.count, self._param_value, "`repeat`")
            except Fail:
                continue
            if not _is_whole(n):
                self.err(r.count.pos, f"`repeat` needs a positive whole number, got {n!r}")
                continue
            if len(layers) + n * len(r.blocks) > MAX_LAYERS:
                self.err(r.count.pos, f"the model would have more than {MAX_LAYERS} layers",
                         hint="nestc builds at most that many; use a smaller `repeat`")
                continue
            for b in r.blocks:
                if b not in self.ns.blocks and b not in self.ns.refused:
                    self.err(r.pos, f"unknown block `{b}` in `repeat`",
                             hint=did_you_mean(b, self.ns.blocks) or "declare it with `block "
                             f"{b} {{ ... }}`")
            layers += [b for b in r.blocks if b in self.ns.blocks] * n
        if not layers and not any(isinstance(r, ir.Repeat) for r in m.body):
            # (a `repeat` that went wrong has said so already)
            self.err(m.pos, "the model has no layers", hint="add `repeat 4 { my_block }`")
        model["_layers"] = layers
        return model

    def _train_settings(self) -> dict[str, Any]:
        return self._settings(self.ns.train, TRAIN_PROPS, "train")

    def _model_names(self, model_norm: Any) -> None:  # placeholder for symmetry
        return None

    # ------------------------------------------------------------------ boxes
    def _top_boxes(self) -> Env:
        """Top-level boxes: optimizer-level boxes (and the weights box) of this spec."""
        env = Env(scope="opt", what="")
        decls = self._expand_boxes(list(self.ns.boxes.values()), scope_boxes=self.ns.boxes)
        infos = {}
        for name, (decl, props) in decls.items():
            info = self._box_header(name, name, decl, props, block=None, default_unit="step")
            if info is not None:
                infos[name] = info
        for name, info in infos.items():
            self.boxes[name] = info
        env.boxes = dict(infos)
        for name, (decl, props) in decls.items():
            if name in infos:
                self._box_body(infos[name], props, env, lets={}, let_refs={})
        return env

    def _expand_boxes(self, decls: list[ir.Box], scope_boxes: dict[str, ir.Box]):
        """name -> (decl, props) for every box a list of declarations makes (`like` and `when`
        applied). A declaration with several names makes one box per name."""
        out: dict[str, tuple[ir.Box, dict[str, list[ir.Prop]]]] = {}
        for decl in dict.fromkeys(decls):  # one declaration may be listed under several names
            if decl.when is not None:
                try:
                    keep = self._const(decl.when, self._param_value, "`when`")
                except Fail:
                    continue
                if not isinstance(keep, bool):
                    self.err(decl.when.pos, f"`when` needs true or false, got {keep!r}")
                    continue
                if not keep:
                    continue
            props = self._box_props(decl, scope_boxes, seen=set())
            if props is None:
                continue
            for n in decl.names:
                out[n] = (decl, props)
        return out

    def _box_props(self, decl: ir.Box, scope_boxes, seen: set) -> dict[str, list[ir.Prop]] | None:
        props: dict[str, list[ir.Prop]] = {}
        if decl.like is not None:
            if decl.like in seen:
                self.err(decl.pos, f"`like` cycle through box `{decl.like}`")
                return None
            other = scope_boxes.get(decl.like)
            if other is None:
                self.err(decl.pos, f"`like {decl.like}`: no box `{decl.like}` here",
                         hint=did_you_mean(decl.like, scope_boxes) or
                         "`like` copies the properties of a box declared in the same block "
                         "or at the top level")
                return None
            base = self._box_props(other, scope_boxes, seen | set(decl.names))
            if base is None:
                return None
            props.update(base)
        own: dict[str, list[ir.Prop]] = {}
        for p in decl.props:
            own.setdefault(p.name, []).append(p)
        for name, ps in own.items():
            if name != "context" and len(ps) > 1:
                self.err(ps[1].pos, f"property `{name}` is given twice",
                         hint=f"keep one; the first is at line {ps[0].pos.line}")
        props.update(own)
        return props

    def _box_header(self, name: str, qualname: str, decl: ir.Box, props, block: str | None,
                    default_unit: str) -> BoxInfo | None:
        """Kind, heads, state and frequency: what a read of the box needs to know."""
        kind = decl.box_kind
        if kind not in BOX_KINDS:
            self.err(decl.pos, f"unknown box kind `{kind}`",
                     hint=did_you_mean(kind, BOX_KINDS) or f"kinds: {', '.join(BOX_KINDS)}")
            return None
        info = BoxInfo(name=name, qualname=qualname, kind=kind, pos=decl.pos, block=block)
        for pname, plist in props.items():
            p = plist[0]
            info.prop_pos[pname] = p.pos
            meta = BOX_PROPS.get(pname)
            if meta is None:
                self.err(p.pos, f"unknown property `{pname}` of box `{name}`",
                         hint=did_you_mean(pname, BOX_PROPS) or
                         f"properties of a {kind} box: " +
                         ", ".join(n for n, m in BOX_PROPS.items() if kind in m.kinds))
            elif kind not in meta.kinds:
                self.err(p.pos, f"a {kind} box has no property `{pname}`",
                         hint=f"`{pname}` belongs to " + " and ".join(sorted(meta.kinds)) + " boxes")

        def one(pname: str) -> ir.Prop | None:
            return props[pname][0] if pname in props else None

        # heads
        if one("heads") is not None:
            h = self._const_prop(one("heads"), name)
            if _is_whole(h):
                info.heads = h
            elif h is not None:
                self.err(one("heads").value.pos, f"`heads` must be a positive whole number, got {h!r}")
        # frequency
        unit = default_unit
        period = 1
        ev = one("every")
        if kind == "attention":
            info.freq = Frequency("inf")
        elif ev is not None:
            n = self._const_prop(ev, name)
            u = ev.unit or ""
            if u not in UNITS and u in self.values and isinstance(self.values[u], str):
                u = self.values[u]
            if u not in UNITS and u in self.ns.params and u not in self.values:
                pass  # a param whose value is wrong: reported there
            elif u not in UNITS:
                hint = did_you_mean(u, UNITS) or "units: tokens, steps"
                if u in BOX_PROPS:  # `every 64` on its own line, then `state ...`
                    hint = (f"`every` needs a unit (`every 64 tokens`); without one, the next "
                            f"word, `{u}`, is read as the unit")
                self.err(ev.pos, f"unknown unit `{u}` in `every`", hint=hint)
            else:
                unit = UNITS[u][:-1]
            if n is not None:
                if not _is_whole(n):
                    self.err(ev.value.pos, f"`every` needs a positive whole number, got {n!r}")
                else:
                    period = n
            info.freq = Frequency(unit, period)
        else:
            info.freq = Frequency(default_unit if kind != "weights" else "step", 1)
        # state
        st = one("state")
        if kind == "attention":
            info.state = StateInfo("cache")
        elif st is not None:
            info.state = self._state(st, info) or StateInfo("none")
        elif kind == "weights":
            info.state = StateInfo("like", of=name)
        elif "update" not in props or True:
            self.err(decl.pos, f"memory box `{name}` has no `state`",
                     hint="add `state mlp(d)` (a deep memory), `state matrix(d)` (a matrix "
                          "memory) or `state like(W)` (optimizer state for weights box W)")
        # steps (inner iterations)
        stp = one("steps")
        if stp is not None:
            n = self._const_prop(stp, name)
            if _is_whole(n):
                info.freq = Frequency(info.freq.unit, info.freq.period, n)
            elif n is not None:
                self.err(stp.value.pos, f"`steps` must be a positive whole number, got {n!r}")
        return info

    def _const_prop(self, p: ir.Prop, box: str) -> Any:
        try:
            return self._const(p.value, self._param_value, f"`{p.name}` of box `{box}`")
        except Fail:
            return None

    def _word(self, e: ir.Expr) -> str | None:
        """A word argument (like `act=silu`), given directly, as a string, or by a string param."""
        e = self._fold_if(e)
        w = _word_of(e)
        if isinstance(e, ir.Name) and w in self.values and isinstance(self.values[w], str):
            return self.values[w]
        return w

    def _fold_if(self, e: ir.Expr) -> ir.Expr:
        """Decide compile-time `if`s in a property whose value is a constructor or a word."""
        while isinstance(e, ir.IfExpr):
            try:
                c = self._const(e.cond, self._param_value, "the condition of `if`")
            except Fail:
                return e
            e = e.then if c else e.orelse
        return e

    def _state(self, p: ir.Prop, info: BoxInfo) -> StateInfo | None:
        e = self._fold_if(p.value)
        if isinstance(e, ir.Name):
            e = ir.Call(func=e.id, pos=e.pos)
        if not isinstance(e, ir.Call) or e.func not in STATE_FORMS:
            self.err(p.value.pos, f"`state` of box `{info.name}` must be one of "
                     + ", ".join(f.signature() for f in STATE_FORMS.values()),
                     hint=did_you_mean(e.func, STATE_FORMS) if isinstance(e, ir.Call) else None)
            return None
        fn = STATE_FORMS[e.func]
        if e.func == "like":
            if len(e.args) != 1 or not isinstance(e.args[0], ir.Name) or e.kwargs:
                self.err(e.pos, "write `state like(W)`, naming the weights box this state serves")
                return None
            if info.freq.unit == "token":
                self.err(e.pos, f"`state like(...)` makes `{info.name}` optimizer state, which "
                         "updates per step, but it updates every "
                         f"{info.freq.period} token(s)",
                         hint="use `every 1 step` (or every N steps)")
            return StateInfo("like", of=e.args[0].id)
        try:
            args = self._bind(e, fn, f"`state {e.func}(...)`")
        except Fail:
            return None
        vals: dict[str, Any] = {}
        for k, v in args.items():
            if v is None:
                vals[k] = None
                continue
            if k == "act":
                w = self._word(v)
                if w not in WORDS["act"]:
                    self.err(v.pos, f"unknown activation `{expr_str(v)}`",
                             hint=did_you_mean(str(w), WORDS["act"]) or
                             f"activations: {', '.join(WORDS['act'])}")
                    return None
                vals[k] = w
                continue
            try:
                vals[k] = self._const(v, self._param_value, f"`state` of box `{info.name}`")
            except Fail:
                return None
        for k, v in vals.items():
            if k in ("d_in", "d_out", "dim", "d", "depth", "out", "hidden") and v is not None and not _is_whole(v):
                self.err(e.pos, f"`{k}` of `state {e.func}(...)` must be a positive whole number, "
                         f"got {v!r}")
                return None
            if k == "depth" and v is not None and v > MAX_MEMORY_DEPTH:
                self.err(e.pos, f"`depth` of `state {e.func}(...)` is {v}, more than the "
                         f"{MAX_MEMORY_DEPTH} layers nestc builds for one memory",
                         hint="the papers use 1 to 4 layers")
                return None
        if e.func == "matrix":
            return StateInfo("matrix", d_in=vals["d_in"], d_out=vals["d_out"] or vals["d_in"])
        if e.func == "vector":
            return StateInfo("vector", d_in=vals["d"], d_out=vals["d"])
        expansion = vals["expansion"]
        if not isinstance(expansion, (int, float)) or isinstance(expansion, bool) or expansion <= 0:
            self.err(e.pos, f"`expansion` must be a positive number, got {expansion!r}")
            return None
        dim = vals["dim"]
        out = vals["out"] or dim
        if not vals["hidden"] and not math.isfinite(dim * expansion):
            # a finite expansion can still overflow once multiplied by the width
            self.err(e.pos, f"`expansion` {expansion!r} makes the hidden width of `state "
                     f"{e.func}({dim}, ...)` infinite", hint="the papers use expansions of 1 to 4")
            return None
        hidden = vals["hidden"] or int(round(dim * expansion))
        residual = vals["residual"]
        if not isinstance(residual, bool):
            self.err(e.pos, f"`residual` must be true or false, got {residual!r}")
            return None
        if residual and out != dim:
            self.err(e.pos, f"a residual MLP memory maps width {dim} to itself, but `out` is {out}",
                     hint="drop `out` or set `residual=false`")
            return None
        return StateInfo("mlp", d_in=dim, d_out=out, depth=vals["depth"], hidden=hidden,
                         act=vals["act"], residual=residual)

    def _bind(self, e: ir.Call, fn: Fn, what: str) -> dict[str, ir.Expr | None]:
        """Match a call's arguments to a function's parameters (errors for a mismatch)."""
        out: dict[str, ir.Expr | None] = {}
        positional = list(fn.args)
        if fn.variadic:
            return {"*": e.args, **{kw.name: kw.value for kw in e.kwargs}}  # type: ignore
        if len(e.args) > len(positional) + len(fn.kwargs):
            self.fail(e.pos, f"{what}: too many arguments (expected {fn.signature()})")
        names = positional + list(fn.kwargs)
        for a, n in zip(e.args, names):
            out[n] = a
        for kw in e.kwargs:
            if kw.name not in names:
                self.fail(kw.pos, f"{what}: unknown argument `{kw.name}`",
                          hint=did_you_mean(kw.name, names) or f"expected {fn.signature()}")
            if kw.name in out:
                self.fail(kw.pos, f"{what}: argument `{kw.name}` is given twice")
            out[kw.name] = kw.value
        missing = [n for n in positional if n not in out]
        if missing:
            self.fail(e.pos, f"{what}: missing argument `{missing[0]}` (expected {fn.signature()})")
        for k, default in fn.kwargs.items():
            if k not in out:
                out[k] = None if default is None else _literal(default)
        return out

    def _box_body(self, info: BoxInfo, props: dict[str, list[ir.Prop]], outer: Env,
                  lets: dict[str, Ty], let_refs: dict[str, set], in_width: int | None = None,
                  in_reported: bool = False) -> None:
        """Type the box's contexts, generators, objective, retention, optimizer and update."""
        name = info.name

        def one(pname: str) -> ir.Prop | None:
            return props[pname][0] if pname in props else None

        step_level = info.freq.unit == "step" or info.kind == "weights"
        # A memory of a block that learns across steps (CMS with `every N steps`) still reads the
        # block's streams (`in`) and its own state (M(k)) like an in-context memory; only its
        # defaults (init, reset) are those of the step level.
        block_memory = info.block is not None and info.kind == "memory" and \
            info.state.form in ("matrix", "mlp", "vector")
        opt_scope = step_level and not block_memory
        gen_scope = "opt" if opt_scope else "gen"
        names: dict[str, Ty] = dict(lets)
        if not opt_scope:
            names["x"] = stream(self.dim) if self.dim else Ty("stream", None)
            if in_width is not None:
                names["in"] = stream(in_width)
            elif in_reported:
                names["in"] = Ty("error")  # "never read" is reported; uses of `in` fail silently
        base = outer.child(scope=gen_scope, names=names, box=info, heads=info.heads,
                           role="generator", refs=info.refs, let_refs=let_refs, stop=False,
                           on_read=None, allow_lss=False, what="")
        # simple settings
        for pname in ("read", "grad", "grad_state"):  # a word, a string, or a string param
            options = WORDS[pname]
            p = one(pname)
            if p is not None:
                w = self._word(p.value)
                if w not in options:
                    self.err(p.value.pos, f"`{pname}` must be " + " or ".join(options) + f", got {w!r}",
                             hint=did_you_mean(str(w), options))
                else:
                    setattr(info, pname, w)
        if info.kind == "attention":
            for pname in ("window", "persistent", "segment"):
                p = one(pname)
                if p is not None:
                    v = self._const_prop(p, name)
                    if not _is_whole(v, low=0):
                        self.err(p.value.pos, f"`{pname}` must be a whole number ≥ 0, got {v!r}")
                    else:
                        setattr(info, pname, v)
            if one("rope") is not None:
                v = self._const_prop(one("rope"), name)
                if not isinstance(v, bool):
                    self.err(one("rope").value.pos, f"`rope` must be true or false, got {v!r}")
                else:
                    info.rope = v
            return
        if info.kind == "weights" and one("params") is not None:
            w = _word_of(one("params").value)
            if w not in ("all", "matrices", "vectors", "rest"):
                self.err(one("params").value.pos, "`params` must be all, matrices, vectors or rest")
            else:
                info.params_group = w
        # init / reset
        info.init = ("meta", None) if not step_level else ("zeros", None)
        if one("init") is not None:
            info.init = self._init(one("init"), info, outer) or info.init
        info.reset = "sequence" if not step_level else "never"
        if one("reset") is not None:
            p = one("reset")
            w = _word_of(p.value)
            v = None if w in WORDS["reset"] else self._const_prop(p, name)
            if isinstance(v, str) and v in WORDS["reset"]:  # e.g. `if ... then c_mid else "sequence"`
                w = v
            if w in WORDS["reset"]:
                info.reset = w
            else:
                if _is_whole(v):
                    info.reset = v
                elif v is not None:
                    self.err(p.value.pos, "`reset` must be sequence, never, or a number of tokens")
        # contexts
        for p in props.get("context", []):
            # grad(W) records a generation edge itself; any other box named here is read for
            # its current state (optimizer level) or its output (in-context)
            env = base.child(what=f"context `{p.binding}` of box `{name}`",
                             role="update" if opt_scope else "generator", allow_lss=True)
            folded, ty = self._check_soft(p.value, env)
            if folded is not None:
                info.contexts[p.binding] = folded
                names[p.binding] = ty
        # generators
        inner_names: dict[str, Ty] = {}
        for pname, short in (("keys", "k"), ("values", "v"), ("query", "q"), ("lr", "lr")):
            p = one(pname)
            if p is None:
                continue
            env = base.child(what=f"the {pname} of box `{name}`", allow_lss=pname == "values")
            folded, ty = self._check_soft(p.value, env)
            if folded is None:
                inner_names[short] = Ty("error")  # reported; its uses fail silently
                continue
            setattr(info, pname if pname != "query" else "query", folded)
            ok = self._check_generator_width(info, pname, ty, p.value.pos)
            inner_names[short] = ty if ok else Ty("error")
        # the inner level: objective, retention, optimizer, update
        inner = base.child(scope="opt" if opt_scope else "inner", role="update",
                           names={**names, **inner_names}, what="")
        upd, obj = one("update"), one("objective")
        opt_prop = one("optimizer")
        ns_opt = opt_prop is not None and _call_name(self._fold_if(opt_prop.value)) == "newton_schulz"
        if info.kind == "memory" and upd is None and obj is None and not ns_opt:
            self.err(info.pos, f"memory box `{name}` has neither an `objective` nor an `update` rule",
                     hint="add `objective l2(M(k), v)` (and an `optimizer`), or write the rule: "
                          "`update M + ...`")
        if upd is not None and (obj is not None or one("optimizer") is not None):
            extra = "objective" if obj is not None else "optimizer"
            self.err(props[extra][0].pos, f"box `{name}` has an `update` rule, so its `{extra}` "
                     "would never be used", hint=f"remove `{extra}` or the `update` rule")
        if obj is not None:
            folded, ty = self._check_soft(obj.value, inner.child(what=f"the objective of box `{name}`"))
            if folded is not None:
                info.objective = folded
                if ty.space not in ("head", "const", "like") or (ty.space == "head" and ty.width != 1):
                    self.err(obj.value.pos, f"the objective of box `{name}` must be a per-token "
                             f"scalar, but it is {ty}",
                             hint="sum it over the last axis: l2(a, b) and dot(a, b) already do")
                refs = {n.id for n in ir.names_in(folded)} | {c.func for c in ir.calls_in(folded)}
                if "M" not in refs and info.kind == "memory":
                    self.err(obj.value.pos, f"the objective of box `{name}` does not depend on its "
                             "state M, so it has nothing to learn",
                             hint="write the objective with M, e.g. `l2(M(k), v)`")
        if upd is not None:
            folded, ty = self._check_soft(upd.value, inner.child(what=f"the update rule of box `{name}`"))
            if folded is not None:
                info.update = folded
                self._check_update_shape(info, ty, upd.value.pos)
        if one("retention") is not None:
            p = one("retention")
            info.retention = self._retention(p, info, inner)
            if info.retention is not None and _keeps_everything(info.retention):
                info.retention = None  # e.g. (1 - lr * weight_decay) * M with weight_decay = 0
        if opt_prop is not None:
            info.optimizer = self._optimizer(opt_prop, info, inner)
            if ns_opt and info.optimizer is not None:
                # Newton-Schulz: an inner optimizer of the orthogonality objective (NL Eq. 43-44)
                # starting from the box's values; its T iterations count toward its frequency.
                steps_expr = next((k.value for k in info.optimizer.kwargs if k.name == "steps"), None)
                try:
                    steps = self._const(steps_expr, self._param_value, "`steps`") if steps_expr is not None else 5
                except Fail:
                    steps = 5
                info.freq = Frequency(info.freq.unit, info.freq.period, int(steps))
                if info.values is None:
                    self.err(opt_prop.pos, f"`optimizer newton_schulz` orthogonalises the box's "
                             f"values, but box `{name}` has no `values`",
                             hint="add `values EXPR` (the matrix to orthogonalise, e.g. a momentum)")
        if one("lr") is None and info.kind == "memory" and upd is None and obj is not None:
            pass  # lr defaults to 1
        if info.kind == "memory" and info.state.form in ("matrix", "mlp") and obj is not None \
                and "keys" not in props:
            self.err(info.pos, f"memory box `{name}` has an objective but no `keys`",
                     hint="add `keys EXPR`: what the memory maps from (NL Def. 1)")

    def _check_generator_width(self, info: BoxInfo, pname: str, ty: Ty, pos: Pos) -> bool:
        """Report a generator of the wrong width; True when it is fine."""
        if ty.space == "like" or ty.space == "const":
            return True
        if ty.space != "stream" or ty.width is None:
            self.err(pos, f"the {pname} of box `{info.name}` must be a per-token stream, but it "
                     f"is {ty}")
            return False
        h, st, w = info.heads, info.state, ty.width
        if pname in ("lr",):
            if w not in (1, h) and w != h * max(st.d_out, 1) and w != h * max(st.d_in, 1):
                self.err(pos, f"the lr of box `{info.name}` has width {w}; it must be 1 (shared), "
                         f"{h} (one per head) or per channel",
                         hint=f"e.g. `sigmoid(linear(in, {h}))`")
                return False
            return True
        if st.form not in ("matrix", "mlp", "vector"):
            return True
        need = {"keys": st.d_in, "query": st.d_in, "values": st.d_out}[pname]
        if w != h * need:
            self.err(pos, f"the {pname} of box `{info.name}` have width {w}, but its state needs "
                     f"{h} head(s) × {need} = {h * need}",
                     hint=f"project to width {h * need}, or change `heads` / the state's width")
            return False
        return True

    def _check_update_shape(self, info: BoxInfo, ty: Ty, pos: Pos) -> None:
        st = info.state
        if ty.space == "like" and st.form == "like":
            return
        if ty.space == "mat" and st.form == "matrix" and ty.width == (st.d_out, st.d_in):
            return
        if ty.space == "state":
            return
        if ty.space == "head" and st.form == "vector" and ty.width in (st.d_out, 1):
            return
        if ty.space == "like" and info.kind == "weights":
            return
        self.err(pos, f"the update rule of box `{info.name}` gives {_ty_words(ty)}, but its "
                 f"state is {st.shape_str(info.heads)}")

    def _init(self, p: ir.Prop, info: BoxInfo, outer: Env) -> tuple[str, Any] | None:
        e = self._fold_if(p.value)
        if isinstance(e, ir.Name):
            e = ir.Call(func=e.id, pos=e.pos)
        if not isinstance(e, ir.Call) or e.func not in INIT_FORMS:
            self.err(p.value.pos, f"`init` of box `{info.name}` must be one of "
                     + ", ".join(f.signature() for f in INIT_FORMS.values()),
                     hint=did_you_mean(getattr(e, "func", ""), INIT_FORMS))
            return None
        if e.func == "meta":
            by = e.args[0] if e.args else e.kwarg("by")
            if by is not None:
                if not isinstance(by, ir.Name) or by.id not in outer.boxes or \
                        outer.boxes[by.id].kind != "weights":
                    self.err(by.pos, "`init meta(B)` names the weights box that meta-learns the "
                             "initial state", hint=did_you_mean(getattr(by, "id", ""),
                                                                [n for n, b in outer.boxes.items() if b.kind == "weights"]))
                    return None
                return ("meta", by.id)
            return ("meta", None)
        try:
            args = self._bind(e, INIT_FORMS[e.func], f"`init {e.func}(...)`")
        except Fail:
            return None
        if e.func == "identity":
            if info.state.form == "matrix" and info.state.d_in != info.state.d_out:
                self.err(e.pos, f"`init identity` needs a square matrix memory, but box "
                         f"`{info.name}` maps {info.state.d_in} to {info.state.d_out}")
            if info.state.form == "mlp" and not info.state.residual:
                self.err(e.pos, "`init identity` for an MLP memory needs `residual=true`")
            return ("identity", None)
        if e.func == "random":
            std = self._const(args["std"], self._param_value, "`random(std)`") if args.get("std") else 0.02
            return ("random", std)
        if e.func == "checkpoint":
            path = self._const(args["path"], self._param_value, "`checkpoint(path, key)`")
            key = self._const(args["key"], self._param_value, "`checkpoint(path, key)`")
            if not isinstance(path, str) or not isinstance(key, str):
                self.err(e.pos, "`checkpoint(path, key)` takes two strings")
                return None
            return ("checkpoint", (path, key))
        return (e.func, None)

    def _retention(self, p: ir.Prop, info: BoxInfo, env: Env) -> ir.Expr | None:
        e = self._fold_if(p.value)
        if isinstance(e, ir.Name) and e.id == "none":
            return None
        if isinstance(e, ir.Call) and e.func == "none" and not e.args and not e.kwargs:
            return None  # `none()`, as `nestc specs --functions` writes it, is `none`
        if isinstance(e, ir.Call) and e.func in RETENTION_FORMS:
            try:
                args = self._bind(e, RETENTION_FORMS[e.func], f"`retention {e.func}(...)`")
            except Fail:
                return None
            new_args, new_kwargs = [], []
            for k, a in args.items():
                if k == "grad":
                    w = self._word(a)
                    if w not in ("previous", "retained"):
                        self.err(a.pos, "`grad` of a retention gate is \"previous\" or \"retained\"")
                        return None
                    if w != "previous":
                        new_kwargs.append(ir.KwArg(name="grad", value=ir.Str(value=w, pos=a.pos), pos=a.pos))
                    continue
                folded, ty = self._check_soft(a, env.child(what=f"the retention of box `{info.name}`"))
                if folded is None:
                    return None
                new_args.append(folded)
            return e.model_copy(update={"args": tuple(new_args), "kwargs": tuple(new_kwargs)})
        folded, ty = self._check_soft(e, env.child(what=f"the retention of box `{info.name}`"))
        if folded is None:
            return None
        if "M" not in {n.id for n in ir.names_in(folded)}:
            self.err(e.pos, f"a retention expression says what is kept of M, but this one does not "
                     f"mention M", hint="write it with M, e.g. `retention (1 - a) * M`, or use "
                     + ", ".join(f.signature() for f in RETENTION_FORMS.values()))
            return None
        return folded

    def _optimizer(self, p: ir.Prop, info: BoxInfo, env: Env) -> ir.Expr | None:
        e = self._fold_if(p.value)
        if isinstance(e, ir.Name):
            e = ir.Call(func=e.id, pos=e.pos)
        if not isinstance(e, ir.Call) or e.func not in OPTIMIZER_FORMS:
            self.err(p.value.pos, f"`optimizer` of box `{info.name}` must be one of "
                     + ", ".join(f.signature() for f in OPTIMIZER_FORMS.values()),
                     hint=did_you_mean(getattr(e, "func", ""), OPTIMIZER_FORMS))
            return None
        try:
            args = self._bind(e, OPTIMIZER_FORMS[e.func], f"`optimizer {e.func}(...)`")
        except Fail:
            return None
        kwargs = []
        fn = OPTIMIZER_FORMS[e.func]
        for k, a in args.items():
            if a is None:
                continue
            if e.func == "dgd" and k in ("step", "decay_keys"):
                options = ("exact", "paper", "neurips") if k == "step" else ("layer", "first")
                w = _word_of(self._fold_if(a))
                if w in self.values and isinstance(self.values[w], str):
                    w = self.values[w]
                if w not in options:
                    self.err(a.pos, f"`dgd({k}=...)` must be " + " or ".join(f'"{o}"' for o in options),
                             hint=did_you_mean(str(w), options))
                    return None
                kwargs.append(ir.KwArg(name=k, value=ir.Str(value=w, pos=a.pos), pos=a.pos))
                continue
            folded, ty = self._check_soft(a, env.child(what=f"`optimizer {e.func}` of box `{info.name}`"))
            if folded is None:
                return None
            if e.func == "newton_schulz" and k == "steps" and (ty.space != "const" or not _is_whole(ty.value)):
                got = repr(ty.value) if ty.space == "const" else "a value known only at run time"
                self.err(a.pos, f"`steps` of `optimizer newton_schulz` must be a whole number ≥ 1 known at "
                         f"compile time, got {got}")
                return None
            kwargs.append(ir.KwArg(name=k, value=folded, pos=a.pos))
        if e.func == "dgd" and info.state.form not in ("matrix", "mlp", "none"):
            self.err(e.pos, "`dgd` (delta gradient descent) needs a matrix or MLP state")
        if e.func in ("newton_schulz",) and info.state.form not in ("like", "matrix"):
            self.err(e.pos, "`newton_schulz` orthogonalises matrices: it needs a matrix or "
                     "like(W) state")
        del fn
        return ir.Call(func=e.func, kwargs=tuple(kwargs), pos=e.pos)

    # ------------------------------------------------------------------ blocks
    def _block(self, bname: str, top: Env, count: int, prefix: str = "",
               stack: tuple[str, ...] = ()) -> BlockInfo | None:
        decl = self.ns.blocks[bname]
        qual = f"{prefix}{bname}"
        if qual in self.blocks:
            return self.blocks[qual]
        info = BlockInfo(name=qual, pos=decl.pos, count=count)
        self.blocks[qual] = info
        box_decls = [s for s in decl.body if isinstance(s, ir.Box)]
        local_decls = {n: b for b in box_decls for n in b.names}
        # `like` may name a box of another block (reuse across specs, e.g. Titans MAC reusing the
        # LMM box), when that name is declared in exactly one block
        elsewhere: dict[str, list[ir.Box]] = {}
        for other in self.ns.blocks.values():
            for st in other.body:
                if isinstance(st, ir.Box):
                    for n in st.names:
                        elsewhere.setdefault(n, []).append(st)
        like_scope = {n: bs[0] for n, bs in elsewhere.items() if len(bs) == 1}
        for n, b in local_decls.items():
            if n in self.ns.params or n in self.ns.blocks:
                self.err(b.pos, f"box `{n}` has the name of a {'param' if n in self.ns.params else 'block'}",
                         hint="give it another name")
        expanded = self._expand_boxes(box_decls, scope_boxes={**self.ns.boxes, **like_scope,
                                                               **local_decls})
        headers: dict[str, BoxInfo] = {}
        for n, (d, props) in expanded.items():
            h = self._box_header(n, f"{qual}.{n}", d, props, block=qual, default_unit="token")
            if h is not None:
                h.count = count
                headers[n] = h
                self.boxes[h.qualname] = h
                info.boxes.append(h.qualname)
        in_widths: dict[str, tuple[int, Pos]] = {}

        def on_read(box_name: str, width: int | None, pos: Pos) -> None:
            if width is None:
                return
            if box_name in in_widths and in_widths[box_name][0] != width:
                w0, p0 = in_widths[box_name]
                self.err(pos, f"box `{box_name}` is read with width {width} here but with width "
                         f"{w0} at line {p0.line}", hint="a box has one input width")
            in_widths.setdefault(box_name, (width, pos))

        lets: dict[str, Ty] = {}
        let_refs: dict[str, set] = {}
        x_ty = stream(self.dim) if self.dim else Ty("stream", None)
        for stmt in decl.body:
            if isinstance(stmt, ir.Box):
                continue
            if isinstance(stmt, ir.Let) and stmt.when is not None:
                try:
                    keep = self._const(stmt.when, self._param_value, "`when`")
                except Fail:
                    continue
                if not keep:
                    continue
            refs: list = []
            env = Env(scope="block", what=f"`{getattr(stmt, 'name', getattr(stmt, 'target', ''))}`",
                      names={**lets, "x": x_ty}, boxes={**top.boxes, **headers}, heads=1,
                      role="read", refs=refs, let_refs=let_refs, on_read=on_read,
                      block_ctx=(bname, qual, count, stack))
            target = stmt.name if isinstance(stmt, ir.Let) else stmt.target
            if isinstance(stmt, ir.Let) and (target in RESERVED_NAMES or target in FUNCTIONS):
                self.err(stmt.pos, f"`{target}` is a built-in name and cannot be a let",
                         hint=f"choose another name, like `{target}_`")
                continue
            if isinstance(stmt, ir.Let) and target in lets:
                self.err(stmt.pos, f"`{target}` is already defined in this block",
                         hint="each let defines a new name; pick another one")
                continue
            if isinstance(stmt, ir.Let) and (target in headers or target in self.ns.params):
                self.err(stmt.pos, f"let `{target}` has the name of a "
                         f"{'box' if target in headers else 'param'}", hint="pick another name")
                continue
            if isinstance(stmt, ir.Assign) and stmt.target != "x":
                self.err(stmt.pos, f"only the residual stream `x` can be reassigned, not `{target}`",
                         hint=f"define a new stream with `let {target} = ...`")
                continue
            folded, ty = self._check_soft(stmt.value, env)
            if folded is None:
                if isinstance(stmt, ir.Let):
                    lets[target] = Ty("stream", None)  # avoid cascades of unknown-name errors
                continue
            if ty.space not in ("stream", "const"):
                self.err(stmt.value.pos, f"`{target}` must be a per-token stream, but it is {_ty_words(ty)}")
                continue
            width = ty.width if ty.space == "stream" else 1
            if isinstance(stmt, ir.Assign):
                if self.dim and width != self.dim:
                    self.err(stmt.value.pos, f"`x` is the residual stream of width {self.dim}, but "
                             f"this gives width {width}",
                             hint=f"project back with `linear(..., {self.dim})`")
                    continue
            else:
                lets[target] = stream(width) if width else Ty("stream", None)
                let_refs[target] = {(b, s) for (b, _r, s) in refs}
            info.statements.append(Statement(target=target, value=folded,
                                             is_let=isinstance(stmt, ir.Let), pos=stmt.pos, width=width or 0))
        # box bodies see every let of the block
        for n, h in headers.items():
            d, props = expanded[n]
            width = in_widths.get(n, (None,))[0]
            in_reported = False
            if width is None and n not in in_widths and h.kind != "weights":
                uses_in = any("in" in {x.id for x in ir.names_in(p.value)}
                              for plist in props.values() for p in plist)
                if uses_in:
                    self.err(h.pos, f"box `{n}` uses `in`, but it is never read, so `in` has no value",
                             hint=f"read it in the block, e.g. `x = x + {n}(rmsnorm(x))`")
                    in_reported = True
            env = Env(scope="gen", what="", boxes={**top.boxes, **headers})
            self._box_body(h, props, env, lets=dict(lets), let_refs=let_refs, in_width=width,
                           in_reported=in_reported)
        return info

    # ------------------------------------------------------------------ the expression checker
    def _check_soft(self, e: ir.Expr, env: Env) -> tuple[ir.Expr | None, Ty]:
        try:
            return self.check(e, env)
        except Fail:
            return None, Ty("error")

    def check(self, e: ir.Expr, env: Env) -> tuple[ir.Expr, Ty]:
        """Type `e` in `env`; returns the folded expression and its type. The type of every
        folded node is remembered (by identity) for the code generator, which sizes layers by it."""
        folded, ty = self._check(e, env)
        self.types[id(folded)] = ty
        self._keep.append(folded)  # keep ids stable: the node must outlive the table
        return folded, ty

    def _check(self, e: ir.Expr, env: Env) -> tuple[ir.Expr, Ty]:
        if isinstance(e, ir.Num):
            return e, const(e.value)
        if isinstance(e, ir.Str):
            return e, const(e.value)
        if isinstance(e, ir.Bool):
            return e, const(e.value)
        if isinstance(e, ir.ListExpr):
            self.fail(e.pos, f"lists are only allowed in params, not in {env.what}")
        if isinstance(e, ir.Name):
            return self._name(e, env)
        if isinstance(e, ir.IfExpr):
            c, cty = self.check(e.cond, env)
            if cty.space != "const" or not isinstance(cty.value, bool):
                self.fail(e.cond.pos, "the condition of `if` must be known at compile time (true or "
                          "false from params)", hint="for a per-token choice use where(cond, a, b)")
            return self.check(e.then if cty.value else e.orelse, env)
        if isinstance(e, ir.UnaryOp):
            o, ty = self.check(e.operand, env)
            if e.op == "not":
                if ty.space != "const":
                    self.fail(e.pos, "`not` works on constants; for tensors use where(...)")
                v = not ty.value
                return ir.Bool(value=v, pos=e.pos), const(v)
            self._tensor_or_const(ty, e.operand.pos, "`-`")
            if ty.space == "const":
                self._need_number(ty.value, e.pos, "`-`")
                if self.symbolic_params and not _is_literal(o):
                    return e.model_copy(update={"operand": o}), const(-ty.value)
                return _num(-ty.value, e.pos), const(-ty.value)
            return e.model_copy(update={"operand": o}), ty
        if isinstance(e, ir.BinOp):
            return self._binop(e, env)
        if isinstance(e, ir.Call):
            return self._call(e, env)
        self.fail(e.pos, "unsupported expression")

    def _name(self, e: ir.Name, env: Env) -> tuple[ir.Expr, Ty]:
        n = e.id
        if n in env.names and env.names[n].space != "error":
            ty = env.names[n]
            if ty.width is None and ty.space == "stream":
                raise Fail()  # an earlier error already reported this name
            if env.scope in ("gen", "block", "inner") and n in env.let_refs:
                # a let is a per-token stream computed from other boxes' pre-update states
                role = "generator" if env.scope == "inner" else env.role
                for b, s in env.let_refs[n]:
                    env.refs.append((b, role, s or env.stop))
            return e, ty
        if n in env.names:
            raise Fail()
        if n in self.values:
            v = self.values[n]
            if isinstance(v, list):
                self.fail(e.pos, f"param `{n}` is a list; lists cannot be used in {env.what}")
            if self.symbolic_params and not isinstance(v, (str, bool)):
                return e, const(v)
            return _literal_pos(v, e.pos), const(v)
        if n == "M" and env.box is not None and env.scope in ("inner", "opt", "gen"):
            st = env.box.state
            if st.form == "like":
                return e, LIKE
            if st.form == "matrix":
                return e, Ty("mat", width=(st.d_out, st.d_in))
            if st.form == "vector":
                return e, head(st.d_out)
            return e, Ty("state")
        if n == "step" and env.scope == "opt":
            return e, COUNTER
        if n == "step" and env.scope == "inner":
            # no lowering gives a memory's rules an update count (the code generator had none)
            self.fail(e.pos, "`step` (an optimizer box's count of its updates) is not defined in "
                      "a memory's rules", hint="write the rule without it (optimizer boxes, declared "
                      "outside blocks, have it: Adam's bias correction in specs/adam.nest)")
        if n == "lss" and env.box is not None:
            if not env.allow_lss:
                self.fail(e.pos, "`lss` (the local surprise signal) can only be a box's `values` "
                          "or `context`")
            st = env.box.state
            return e, stream(env.box.heads * max(st.d_out, 1))
        if n in env.boxes:
            b = env.boxes[n]
            if env.scope == "opt" and b.kind == "weights":
                # the weights as they were when this step's gradient was taken: an optimizer's
                # state is computed before the weights move, so this is their previous state
                if env.box is None or env.box.qualname != b.qualname:
                    env.refs.append((b.qualname, "generator", env.stop))
                return e, LIKE
            if env.scope == "opt" and b.state.form == "like":
                env.refs.append((b.qualname, env.role, env.stop))
                return e, LIKE
            return e, boxref(n)
        if env.box is not None and n == env.box.name and env.scope == "opt":
            return e, LIKE
        if n in WORD_NAMES:
            return e, word(n)
        if n in FUNCTIONS:
            self.fail(e.pos, f"`{n}` is a function; call it: `{FUNCTIONS[n].signature()}`")
        if n in self.ns.blocks:
            self.fail(e.pos, f"`{n}` is a block; call it on a stream: `x = {n}(x)`")
        if env.block_ctx is not None and env.block_ctx[0] in self.ns.blocks:
            later = next((st for st in self.ns.blocks[env.block_ctx[0]].body
                          if isinstance(st, ir.Let) and st.name == n
                          and (st.pos.line, st.pos.col) > (e.pos.line, e.pos.col)), None)
            if later is not None:
                self.fail(e.pos, f"`{n}` is used before its `let` at line {later.pos.line}",
                          hint="a block runs its statements in order: move the `let` above "
                               "this statement")
        visible = list(env.names) + list(self.values) + list(env.boxes)
        if env.box is not None:
            visible += ["M"] + (["step"] if env.scope == "opt" else [])
        hint = did_you_mean(n, visible)
        if hint is None and n in ("k", "v", "q", "lr"):
            hint = f"`{n}` is defined inside a box by its `{ {'k': 'keys', 'v': 'values', 'q': 'query', 'lr': 'lr'}[n] }` property"
        if hint is None and n == "in":
            hint = "`in` is the argument of a box's read and exists only inside a box"
        self.fail(e.pos, f"unknown name `{n}` in {env.what}", hint=hint)

    def _tensor_or_const(self, ty: Ty, pos: Pos, what: str) -> None:
        if ty.space in ("word", "box", "state", "error"):
            hint = None
            if ty.space == "state":
                hint = "read the memory with M(k)"
            elif ty.space == "box":
                hint = f"read the box: `{ty.value}(...)`"
            self.fail(pos, f"{what} needs a value, but this is {_ty_words(ty)}", hint=hint)

    def _binop(self, e: ir.BinOp, env: Env) -> tuple[ir.Expr, Ty]:
        if e.op in ("and", "or"):
            l, lt = self.check(e.left, env)
            if lt.space != "const":
                self.fail(e.pos, f"`{e.op}` works on constants; for tensors use min/max or where(...)")
            if e.op == "and" and not lt.value:
                return ir.Bool(value=False, pos=e.pos), const(False)
            if e.op == "or" and lt.value:
                return ir.Bool(value=True, pos=e.pos), const(True)
            r, rt = self.check(e.right, env)
            if rt.space != "const":
                self.fail(e.pos, f"`{e.op}` works on constants")
            return _literal_pos(bool(rt.value), e.pos), const(bool(rt.value))
        l, lt = self.check(e.left, env)
        r, rt = self.check(e.right, env)
        for ty, side in ((lt, e.left), (rt, e.right)):
            # a retention or update rule may scale the whole state of an MLP memory, as in
            # `retention (1 - a) * M`; _join allows per-token scalars only
            if not (ty.space == "state" and env.scope == "inner"):
                self._tensor_or_const(ty, side.pos, f"`{e.op}`")
        if lt.space == "const" and rt.space == "const":
            v = self._arith(e.op, lt.value, rt.value, e)
            if self.symbolic_params and not (_is_literal(l) and _is_literal(r)):
                return e.model_copy(update={"left": l, "right": r}), const(v)
            return _literal_pos(v, e.pos), const(v)
        ty = self._join(lt, rt, env, e.pos, f"`{e.op}`")
        return e.model_copy(update={"left": l, "right": r}), ty

    def _join(self, a: Ty, b: Ty, env: Env, pos: Pos, what: str) -> Ty:
        """The type of an element-wise combination of a and b (broadcasting)."""
        if a.space == "const":
            return b
        if b.space == "const":
            return a
        if a.space == "counter":
            return b
        if b.space == "counter":
            return a
        if a.space == "like" or b.space == "like":
            other = b if a.space == "like" else a
            if other.space in ("like", "head") and (other.space == "like" or other.width == 1):
                return LIKE
            if other.space == "stream" and other.width in (1, None):
                return LIKE
            self.fail(pos, f"{what}: cannot combine a parameter-shaped tensor with {_ty_words(other)}")
        if a.space == "head" or b.space == "head" or env.scope == "inner":
            if a.space == "mat" or b.space == "mat":
                m, o = (a, b) if a.space == "mat" else (b, a)
                if o.space == "mat" and o.width != m.width:
                    self.fail(pos, f"{what}: matrices of shapes {m.width} and {o.width} do not match")
                o = self._to_head(o, env, pos) if o.space == "stream" else o
                if o.space == "head" and o.width != 1:
                    self.fail(pos, f"{what}: a matrix combines with scalars or matrices, not with "
                              f"{_ty_words(o)}", hint="use outer(a, b) to make a matrix from vectors")
                return m
            if a.space == "state" or b.space == "state":
                o = b if a.space == "state" else a
                o = self._to_head(o, env, pos) if o.space == "stream" else o
                if o.space == "head" and o.width != 1:
                    self.fail(pos, f"{what}: an MLP state combines with per-token scalars only")
                return Ty("state")
            ha = self._to_head(a, env, pos) if a.space == "stream" else a
            hb = self._to_head(b, env, pos) if b.space == "stream" else b
            if ha.width == hb.width or hb.width == 1:
                return ha
            if ha.width == 1:
                return hb
            self.fail(pos, f"{what}: widths {ha.width} and {hb.width} do not match (per head)")
        if a.space == "stream" and b.space == "stream":
            if a.width == b.width or b.width == 1:
                return a
            if a.width == 1:
                return b
            self.fail(pos, f"{what}: streams of widths {a.width} and {b.width} do not match",
                      hint="project one of them with linear(..., width)")
        if a.space == "mat" or b.space == "mat":
            return a if a.space == "mat" else b
        self.fail(pos, f"{what}: cannot combine {_ty_words(a)} with {_ty_words(b)}")

    def _to_head(self, t: Ty, env: Env, pos: Pos) -> Ty:
        """A block stream seen per head inside a box: width heads*d -> d; 1 or heads -> scalar."""
        if t.space != "stream":
            return t
        h = env.heads
        if t.width == 1 or t.width == h:
            return head(1)
        if t.width % h == 0:
            return head(t.width // h)
        self.fail(pos, f"a stream of width {t.width} cannot be split into {h} heads")

    def _call(self, e: ir.Call, env: Env) -> tuple[ir.Expr, Ty]:
        f = e.func
        # reading a box
        if f in env.boxes and env.scope in ("block", "gen"):
            return self._read(e, f, e.args, env)
        if f in ("read_before", "read_after"):
            if env.scope not in ("block", "gen"):
                self.fail(e.pos, f"`{f}` reads a box in a block")
            if len(e.args) != 2 or not isinstance(e.args[0], ir.Name) or e.args[0].id not in env.boxes:
                self.fail(e.pos, f"write `{f}(BOX, e)`, naming a box of this block")
            folded, ty = self._read(e, e.args[0].id, e.args[1:], env)
            return folded, ty
        if f == "M":
            return self._self_read(e, env)
        if f in self.ns.blocks:
            return self._block_call(e, env)
        fn = FUNCTIONS.get(f)
        if fn is None:
            for table, prop in ((STATE_FORMS, "state"), (INIT_FORMS, "init"),
                                (RETENTION_FORMS, "retention"), (OPTIMIZER_FORMS, "optimizer")):
                if f in table:
                    self.fail(e.pos, f"`{f}(...)` is only meaningful as the value of `{prop}`")
            if f in env.boxes:
                self.fail(e.pos, f"box `{f}` cannot be read in {env.what}",
                          hint="boxes are read in block statements (a box's generators can name a let that reads one)")
            self.fail(e.pos, f"unknown function `{f}`",
                      hint=did_you_mean(f, list(FUNCTIONS) + list(env.boxes) + ["M"]) or
                      "`nestc specs --functions` lists the built-in functions")
        scope = "block" if env.scope == "gen" else env.scope
        # Inside a box, a sub-expression over block streams (like `linear(in, heads)` in a gate)
        # is a per-token generator, computed at block level and then seen per head.
        if scope == "inner" and "block" in fn.scopes:
            scope = "block"
        if scope not in fn.scopes:
            where = {"block": "a block or a box generator", "inner": "an objective, retention or "
                     "update rule", "opt": "an optimizer box", "const": "a param"}
            self.fail(e.pos, f"`{f}` cannot be used in {where.get(scope, scope)}",
                      hint="it belongs in " + " or ".join(where[s] for s in sorted(fn.scopes) if s in where))
        args = self._bind(e, fn, f"`{f}`")
        if fn.variadic:
            return self._combine(e, env)
        return FUNCTION_RULES.get(f, _elementwise)(self, e, fn, args, env)

    def _read(self, e: ir.Call, name: str, args, env: Env) -> tuple[ir.Expr, Ty]:
        b = env.boxes[name]
        if env.scope == "gen" and env.box is not None:
            # The block's schedule orders box reads by the statements that make them; a read
            # inside another box's property has no statement, so it has no place in that order
            # (and no input width for a box read nowhere else). A let says the same thing.
            self.fail(e.pos, f"box `{name}` is read in {env.what}; boxes are read in the block's "
                      "statements", hint=f"read it in a let and name that in the box: `let g = "
                      f"{name}(...)` in the block, then `g` here")
        if b.kind == "weights":
            self.fail(e.pos, f"`{name}` is the weights box; it is not read like a memory")
        if b.kind == "memory" and b.state.form == "none":
            raise Fail()  # its missing or wrong `state` is already reported
        if b.freq.unit == "step" and b.state.form == "like":
            self.fail(e.pos, f"`{name}` is optimizer state; it is not read in a block")
        kw = {k.name: k.value for k in e.kwargs}
        allowed = {"prefix"} if b.kind == "attention" else set()
        for k in kw:
            if k not in allowed:
                self.fail(e.pos, f"reading box `{name}`: unknown argument `{k}`",
                          hint="an attention box takes `prefix=` (extra context tokens)" if b.kind == "attention" else "a memory read takes one argument")
        if len(args) != 1:
            self.fail(e.pos, f"reading box `{name}` takes one argument (the stream it reads)")
        a, aty = self.check(args[0], env.child(stop=env.stop))
        if aty.space != "stream":
            self.fail(args[0].pos, f"box `{name}` reads a per-token stream, but this is {_ty_words(aty)}")
        new_kwargs = []
        if "prefix" in kw:
            p, pty = self.check(kw["prefix"], env)
            if pty.space != "stream" or pty.width != aty.width:
                self.fail(kw["prefix"].pos, f"the prefix tokens of `{name}` must be a stream of width {aty.width}")
            new_kwargs.append(ir.KwArg(name="prefix", value=p, pos=kw["prefix"].pos))
        env.refs.append((b.qualname, env.role, env.stop))
        if env.on_read is not None:
            env.on_read(name, aty.width, e.pos)
        if b.kind == "attention":
            if aty.width % b.heads:
                self.fail(args[0].pos, f"attention box `{name}` has {b.heads} heads, but reads a "
                          f"stream of width {aty.width}, which they cannot share evenly")
            out = aty.width
        else:
            out = b.heads * max(b.state.d_out, 0)
        if e.func in ("read_before", "read_after"):
            folded = e.model_copy(update={"args": (e.args[0], a), "kwargs": tuple(new_kwargs)})
        else:
            folded = e.model_copy(update={"args": (a,), "kwargs": tuple(new_kwargs)})
        return folded, stream(out)

    def _self_read(self, e: ir.Call, env: Env) -> tuple[ir.Expr, Ty]:
        b = env.box
        if b is None or env.scope not in ("gen", "inner"):
            self.fail(e.pos, "`M(...)` reads this box's own state; it exists only inside a memory box")
        if b.state.form == "none":
            raise Fail()  # the state itself is wrong or missing; that error is already reported
        if b.state.form not in ("matrix", "mlp"):
            self.fail(e.pos, f"`M(...)` reads a matrix or MLP memory; box `{b.name}` holds "
                      f"{b.state.shape_str(b.heads)}")
        if len(e.args) != 1 or e.kwargs:
            self.fail(e.pos, "`M` takes one argument: M(k)")
        a, aty = self.check(e.args[0], env)
        st = b.state
        if env.scope == "gen":
            if aty.space != "stream" or aty.width != b.heads * st.d_in:
                self.fail(e.args[0].pos, f"M(...) of box `{b.name}` needs a stream of width "
                          f"{b.heads} × {st.d_in} = {b.heads * st.d_in}, got {_ty_words(aty)}")
            return e.model_copy(update={"args": (a,)}), stream(b.heads * st.d_out)
        hty = self._to_head(aty, env, e.args[0].pos) if aty.space == "stream" else aty
        if hty.space != "head" or hty.width != st.d_in:
            self.fail(e.args[0].pos, f"M(...) of box `{b.name}` needs a per-head vector of width "
                      f"{st.d_in}, got {_ty_words(hty)}")
        return e.model_copy(update={"args": (a,)}), head(st.d_out)

    def _block_call(self, e: ir.Call, env: Env) -> tuple[ir.Expr, Ty]:
        ctx = env.block_ctx
        if env.scope != "block" or ctx is None:
            self.fail(e.pos, f"block `{e.func}` can only be called in another block's statements")
        caller, qual, count, stack = ctx
        if e.func in stack + (caller,):
            self.fail(e.pos, f"block `{e.func}` calls itself (through {' -> '.join(stack + (caller, e.func))})")
        if len(e.args) != 1 or e.kwargs:
            self.fail(e.pos, f"a block call takes the stream: `{e.func}(x)`")
        a, aty = self.check(e.args[0], env)
        if aty.space != "stream" or (self.dim and aty.width != self.dim):
            self.fail(e.args[0].pos, f"block `{e.func}` takes a stream of the model width {self.dim}")
        top = Env(scope="opt", what="", boxes={n: b for n, b in self.boxes.items() if b.block is None})
        sub = self._block(e.func, top, count, prefix=f"{qual}.", stack=stack + (caller,))
        if sub is not None:
            env.refs.extend((bq, env.role, env.stop) for bq in sub.boxes)
        return e.model_copy(update={"args": (a,)}), stream(self.dim)

    def _combine(self, e: ir.Call, env: Env) -> tuple[ir.Expr, Ty]:
        if len(e.args) < 2:
            self.fail(e.pos, "`combine` aggregates two or more branches")
        folded, width = [], None
        for a in e.args:
            f_, ty = self.check(a, env)
            if ty.space != "stream":
                self.fail(a.pos, f"`combine` takes streams, got {_ty_words(ty)}")
            if width is not None and ty.width != width:
                self.fail(a.pos, f"`combine` branches must have one width: {width} and {ty.width}")
            width = ty.width
            folded.append(f_)
        mode = e.kwarg("mode")
        if mode is not None and _word_of(mode) not in WORDS["mode"]:
            self.fail(mode.pos, "`combine(mode=...)` is weighted, sum or mean")
        return e.model_copy(update={"args": tuple(folded)}), stream(width)

    # ------------------------------------------------------------------ train: optimizers
    def _optimizers(self, model: dict[str, Any]) -> list[OptimizerInfo]:
        train = self.ns.train
        out: list[OptimizerInfo] = []
        if train is None:
            return out
        groups_seen: dict[str, Pos] = {}
        for o in train.body:
            if not isinstance(o, ir.OptimizerUse):
                continue
            group = o.on or "all"
            if group not in OPTIMIZER_GROUPS:
                self.err(o.pos, f"unknown parameter group `{group}`",
                         hint=did_you_mean(group, OPTIMIZER_GROUPS) or
                         "groups: " + ", ".join(OPTIMIZER_GROUPS))
                continue
            if group in groups_seen:
                self.err(o.pos, f"two optimizers for the group `{group}`",
                         hint=f"the other is at line {groups_seen[group].line}")
                continue
            groups_seen[group] = o.pos
            info = self._optimizer_spec(o, group)
            if info is not None:
                out.append(info)
        if "all" in groups_seen and len(groups_seen) > 1:
            self.err(groups_seen["all"], "an optimizer `on all` (the default) leaves no parameters "
                     "for the others", hint="use `on matrices` and `on rest`")
        if "matrices" in groups_seen and "rest" not in groups_seen:
            self.err(groups_seen["matrices"], "an optimizer `on matrices` needs a second one for "
                     "the other parameters", hint="add `optimizer adamw(lr=...) on rest`")
        return out

    def _optimizer_spec(self, o: ir.OptimizerUse, group: str) -> OptimizerInfo | None:
        from .loader import PREFERRED_DIRS

        path = next((d / f"{o.name}.nest" for d in PREFERRED_DIRS if (d / f"{o.name}.nest").is_file()),
                    None) or builtin_path(o.name)
        if path is None:
            sibling = self.loaded.path.parent / f"{o.name}.nest"
            path = sibling if sibling.is_file() else None
        if path is None:
            from .loader import builtin_names

            self.err(o.pos, f"unknown optimizer `{o.name}`",
                     hint=did_you_mean(o.name, builtin_names()) or
                     "optimizers are specs: the built-ins sgd, momentum, adam, adamw, muon, m3, or "
                     "a NAME.nest next to this spec")
            return None
        try:
            sub_loaded = load(path, self.loaded.sources)
        except NestError as err:
            self.errors.extend(err)
            return None
        overrides = {}
        for kw in o.args:
            try:
                v = self._const(kw.value, self._param_value, f"argument `{kw.name}` of `{o.name}`")
            except Fail:
                return None
            overrides[kw.name] = expr_str(_literal_pos(v, kw.pos))
        sub_errors = Collector(self.loaded.sources)
        sub = Resolver(sub_loaded, overrides, sub_errors, symbolic_params=True)
        try:
            prog = sub.run()
        except NestError as err:
            for d in err.diagnostics:
                if d.pos.file == "--set":
                    d.pos = o.pos
                    d.message = d.message.replace("`--set ", "`optimizer " + o.name + "(").replace("=...`", "=...)`")
            self.errors.extend(err)
            return None
        weights = [b for b in prog.boxes.values() if b.kind == "weights"]
        if len(weights) != 1:
            self.err(o.pos, f"optimizer spec `{o.name}` must declare exactly one weights box "
                     f"(it has {len(weights)})")
            return None
        if prog.layers:
            self.err(o.pos, f"`{o.name}` is a model spec, not an optimizer spec")
            return None
        return OptimizerInfo(name=o.name, group=group, params=prog.params, boxes=prog.boxes,
                             weights=weights[0].name, pos=o.pos, program=prog)


# ---------------------------------------------------------------------------------------------
# function typing rules
# ---------------------------------------------------------------------------------------------

SETTING_WORDS = {"norm": ("rmsnorm", "layernorm", "none"), "schedule": ("constant", "cosine"),
                 "on_nonfinite": ("stop", "skip"), "tokenizer": ("byte", "gpt2")}

WORD_NAMES = set(WORDS["act"]) | set(WORDS["mode"]) | {"all", "matrices", "vectors", "rest",
                                                        "muon", "bfloat16", "float32", "none"}


def _is_literal(e: ir.Expr) -> bool:
    if isinstance(e, (ir.Num, ir.Str, ir.Bool)):
        return True
    return isinstance(e, ir.UnaryOp) and e.op == "-" and isinstance(e.operand, ir.Num)


def _keeps_everything(e: ir.Expr) -> bool:
    if isinstance(e, ir.Name) and e.id == "M":
        return True
    if isinstance(e, ir.BinOp) and e.op == "*":
        for a, b in ((e.left, e.right), (e.right, e.left)):
            if isinstance(a, ir.Num) and a.value == 1 and isinstance(b, ir.Name) and b.id == "M":
                return True
    if isinstance(e, ir.Call) and e.func in ("gate",) and isinstance(e.args[0], ir.Num) and e.args[0].value == 1:
        return True
    if isinstance(e, ir.Call) and e.func in ("decay", "weight_decay") and isinstance(e.args[0], ir.Num) and e.args[0].value == 0:
        return True
    return False


def _call_name(e: ir.Expr) -> str | None:
    if isinstance(e, ir.Call):
        return e.func
    if isinstance(e, ir.Name):
        return e.id
    return None


def _word_of(e: ir.Expr) -> str | None:
    if isinstance(e, ir.Name):
        return e.id
    if isinstance(e, ir.Str):
        return e.value
    return None


def _literal(v: Any) -> ir.Expr:
    if isinstance(v, bool):
        return ir.Bool(value=v)
    if isinstance(v, (int, float)):
        return _num(v, Pos())
    return ir.Name(id=str(v))


def _num(v: Any, pos: Pos) -> ir.Expr:
    if isinstance(v, bool):
        return ir.Bool(value=v, pos=pos)
    if isinstance(v, int):
        return ir.Num(value=v, text=str(v), pos=pos) if v >= 0 else \
            ir.UnaryOp(op="-", operand=ir.Num(value=-v, text=str(-v), pos=pos), pos=pos)
    if math.isinf(v) or math.isnan(v):
        raise ValueError(v)
    text = repr(abs(v))
    node = ir.Num(value=abs(v), text=text, pos=pos)
    return node if v >= 0 else ir.UnaryOp(op="-", operand=node, pos=pos)


def _literal_pos(v: Any, pos: Pos) -> ir.Expr:
    if isinstance(v, str):
        return ir.Str(value=v, pos=pos)
    return _num(v, pos)


def _ty_words(t: Ty) -> str:
    if t.space == "mat":
        return f"a {t.width[0]} × {t.width[1]} matrix"
    return str(t)


def _safe_read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _elementwise(r: Resolver, e: ir.Call, fn: Fn, args: dict, env: Env):
    folded, tys = [], []
    for name in fn.args:
        a, ty = r.check(args[name], env)
        r._tensor_or_const(ty, args[name].pos, f"`{fn.name}`")
        folded.append(a)
        tys.append(ty)
    if all(t.space == "const" for t in tys):
        v = r._const_call(e, fn, [t.value for t in tys])
        if r.symbolic_params and not all(_is_literal(a) for a in folded):
            return e.model_copy(update={"args": tuple(folded), "kwargs": ()}), const(v)
        return _literal_pos(v, e.pos), const(v)
    ty = tys[0]
    for t, a in zip(tys[1:], fn.args[1:]):
        ty = r._join(ty, t, env, args[a].pos, f"`{fn.name}`")
    return e.model_copy(update={"args": tuple(folded), "kwargs": ()}), ty


def _one_stream(r: Resolver, e, fn, args, env, allow_head=False):
    a, ty = r.check(args["e"], env)
    if ty.space == "stream" or (allow_head and ty.space == "head"):
        return a, ty
    r.fail(args["e"].pos, f"`{fn.name}` takes a per-token stream, got {_ty_words(ty)}")


def _is_whole(v: Any, low: int = 1) -> bool:
    """Whether a compile-time value is a whole number of at least `low` (True is not one)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _const_int(r: Resolver, ex: ir.Expr | None, what: str, low: int = 1) -> int:
    if ex is None:
        r.fail(None, f"{what} is missing")
    a, ty = r.check(ex, Env(scope="const", what=what))
    if ty.space != "const" or not _is_whole(ty.value, low):
        r.fail(ex.pos, f"{what} must be a whole number ≥ {low} known at compile time")
    return ty.value


def _rule_linear(r, e, fn, args, env):
    a, ty = _one_stream(r, e, fn, args, env)
    n = _const_int(r, args["n"], "the width of `linear`")
    bias = args.get("bias")
    if bias is not None and not isinstance(bias, ir.Bool):
        r.fail(bias.pos, "`bias` must be true or false")
    kw = (ir.KwArg(name="bias", value=bias),) if isinstance(bias, ir.Bool) and bias.value else ()
    return e.model_copy(update={"args": (a, _num(n, args["n"].pos)), "kwargs": kw}), stream(n)


def _rule_mlp(r, e, fn, args, env):
    a, ty = _one_stream(r, e, fn, args, env)
    hidden = _const_int(r, args["hidden"], "the hidden width of `mlp`")
    out = _const_int(r, args["out"], "`out` of `mlp`") if args.get("out") is not None else ty.width
    act = _word_of(args["act"]) if args.get("act") is not None else "gelu"
    if act not in WORDS["act"]:
        r.fail(args["act"].pos, f"unknown activation `{act}`", hint=did_you_mean(str(act), WORDS["act"]))
    kws = (ir.KwArg(name="out", value=_num(out, e.pos)), ir.KwArg(name="act", value=ir.Name(id=act)))
    return e.model_copy(update={"args": (a, _num(hidden, e.pos)), "kwargs": kws}), stream(out)


def _rule_swiglu(r, e, fn, args, env):
    a, ty = _one_stream(r, e, fn, args, env)
    hidden = _const_int(r, args["hidden"], "the hidden width of `swiglu`")
    return e.model_copy(update={"args": (a, _num(hidden, e.pos))}), ty


def _rule_norm_layer(r, e, fn, args, env):
    a, ty = _one_stream(r, e, fn, args, env)
    return e.model_copy(update={"args": (a,)}), ty


def _rule_l2norm(r, e, fn, args, env):
    a, ty = r.check(args["e"], env)
    if ty.space not in ("stream", "head"):
        r.fail(args["e"].pos, f"`l2norm` takes a tensor, got {_ty_words(ty)}")
    groups = _const_int(r, args["groups"], "`groups` of `l2norm`") if args.get("groups") is not None else 1
    if ty.space == "stream" and ty.width % groups:
        r.fail(e.pos, f"`l2norm(..., groups={groups})`: width {ty.width} is not divisible by {groups}")
    if ty.space == "head" and groups != 1:
        r.fail(e.pos, "inside a box, l2norm already works per head; drop `groups`")
    kw = (ir.KwArg(name="groups", value=_num(groups, e.pos)),) if groups != 1 else ()
    return e.model_copy(update={"args": (a,), "kwargs": kw}), ty


def _rule_conv(r, e, fn, args, env):
    a, ty = _one_stream(r, e, fn, args, env)
    w = _const_int(r, args["window"], "the window of `conv`")
    return e.model_copy(update={"args": (a, _num(w, e.pos))}), ty


def _rule_reduce(r, e, fn, args, env):
    a, ty = r.check(args["e"], env)
    groups = _const_int(r, args.get("groups"), f"`groups` of `{fn.name}`") if args.get("groups") is not None else 1
    if ty.space == "stream":
        if ty.width % groups:
            r.fail(e.pos, f"`{fn.name}(..., groups={groups})`: width {ty.width} is not divisible by {groups}")
        kw = (ir.KwArg(name="groups", value=_num(groups, e.pos)),) if groups != 1 else ()
        return e.model_copy(update={"args": (a,), "kwargs": kw}), stream(groups)
    if ty.space == "head":
        if groups != 1:
            r.fail(e.pos, f"inside a box, `{fn.name}` works per head; drop `groups`")
        return e.model_copy(update={"args": (a,), "kwargs": ()}), head(1)
    r.fail(args["e"].pos, f"`{fn.name}` reduces a stream or a per-head vector, got {_ty_words(ty)}")


def _rule_norm(r, e, fn, args, env):
    a, ty = r.check(args["e"], env)
    p, pty = r.check(args["p"], env) if args.get("p") is not None else (_num(2, e.pos), const(2))
    if pty.space != "const":
        r.fail(e.pos, "the `p` of `norm` must be a constant")
    if ty.space == "stream":
        out = stream(1)
    elif ty.space == "head":
        out = head(1)
    else:
        r.fail(args["e"].pos, f"`norm` takes a stream or a per-head vector, got {_ty_words(ty)}")
    return e.model_copy(update={"args": (a,), "kwargs": (ir.KwArg(name="p", value=p),)}), out


def _rule_softmax(r, e, fn, args, env):
    a, ty = r.check(args["e"], env)
    if ty.space not in ("stream", "head"):
        r.fail(args["e"].pos, f"`softmax` takes a stream or a per-head vector, got {_ty_words(ty)}")
    return e.model_copy(update={"args": (a,)}), ty


def _rule_stop_grad(r, e, fn, args, env):
    a, ty = r.check(args["e"], env.child(stop=True))
    return e.model_copy(update={"args": (a,)}), ty


def _rule_objective(r, e, fn, args, env):
    folded = []
    tys = []
    for name in fn.args:
        a, ty = r.check(args[name], env)
        folded.append(a)
        tys.append(ty)
    a_ty, b_ty = (r._to_head(t, env, e.pos) if t.space == "stream" else t for t in tys[:2])
    for t, name in ((a_ty, "a"), (b_ty, "b")):
        if t.space not in ("head", "like"):
            r.fail(args[name].pos, f"`{fn.name}` compares per-head vectors, got {_ty_words(t)}")
    if a_ty.space == "head" and b_ty.space == "head" and a_ty.width != b_ty.width and 1 not in (a_ty.width, b_ty.width):
        r.fail(e.pos, f"`{fn.name}` compares vectors of widths {a_ty.width} and {b_ty.width}",
               hint="both sides must have the same width per head")
    for t, name in zip(tys[2:], fn.args[2:]):
        if t.space not in ("const", "head", "stream"):
            r.fail(args[name].pos, f"`{name}` of `{fn.name}` must be a number or a per-token scalar")
    out = LIKE if "like" in (a_ty.space, b_ty.space) else head(1)
    return e.model_copy(update={"args": tuple(folded), "kwargs": ()}), out


def _rule_outer(r, e, fn, args, env):
    a, at = r.check(args["a"], env)
    b, bt = r.check(args["b"], env)
    at = r._to_head(at, env, e.pos) if at.space == "stream" else at
    bt = r._to_head(bt, env, e.pos) if bt.space == "stream" else bt
    if at.space != "head" or bt.space != "head":
        r.fail(e.pos, "`outer` takes two per-head vectors")
    return e.model_copy(update={"args": (a, b)}), Ty("mat", width=(at.width, bt.width))


def _rule_grad(r, e, fn, args, env):
    box = args["box"]
    if not isinstance(box, ir.Name) or box.id not in env.boxes or env.boxes[box.id].kind != "weights":
        r.fail(box.pos, "`grad(W)` names a weights box", hint=did_you_mean(
            getattr(box, "id", ""), [n for n, b in env.boxes.items() if b.kind == "weights"]))
    env.refs.append((env.boxes[box.id].qualname, "context", env.stop))
    return e, LIKE


def _rule_rows_cols(r, e, fn, args, env):
    box = args["box"]
    if not isinstance(box, ir.Name) or box.id not in env.boxes:
        r.fail(box.pos, f"`{fn.name}(W)` names a weights or optimizer-state box")
    return e, LIKE


def _rule_newton_schulz(r, e, fn, args, env):
    a, ty = r.check(args["e"], env)
    if ty.space != "like":
        r.fail(args["e"].pos, f"`newton_schulz` orthogonalises parameter-shaped matrices, got {_ty_words(ty)}")
    kws = []
    for k in ("steps", "eps"):
        if args.get(k) is not None:
            v, vt = r.check(args[k], env)
            if vt.space != "const":
                r.fail(args[k].pos, f"`{k}` of `newton_schulz` must be a constant")
            if k == "steps" and not _is_whole(vt.value):
                # the iteration count shapes the generated code (it was truncated: 0.5 ran none)
                r.fail(args[k].pos, f"`steps` of `newton_schulz` must be a whole number ≥ 1, got {vt.value!r}")
            kws.append(ir.KwArg(name=k, value=v))
    for k, allowed in (("coefficients", ("muon", "cubic")), ("dtype", ("bfloat16", "float32"))):
        if args.get(k) is not None:
            w = _word_of(args[k])
            if w not in allowed:
                r.fail(args[k].pos, f"`{k}` of `newton_schulz` is " + " or ".join(allowed))
            kws.append(ir.KwArg(name=k, value=ir.Str(value=w)))
    return e.model_copy(update={"args": (a,), "kwargs": tuple(kws)}), LIKE


FUNCTION_RULES = {
    "linear": _rule_linear, "mlp": _rule_mlp, "swiglu": _rule_swiglu,
    "rmsnorm": _rule_norm_layer, "layernorm": _rule_norm_layer, "l2norm": _rule_l2norm,
    "conv": _rule_conv, "sum": _rule_reduce, "mean": _rule_reduce, "norm": _rule_norm,
    "softmax": _rule_softmax, "stop_grad": _rule_stop_grad,
    "l2": _rule_objective, "dot": _rule_objective, "lp": _rule_objective, "huber": _rule_objective,
    "outer": _rule_outer, "grad": _rule_grad, "rows": _rule_rows_cols, "cols": _rule_rows_cols,
    "newton_schulz": _rule_newton_schulz,
}


# ---------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------


def resolve(loaded: Loaded, overrides: dict[str, str] | None = None) -> Program:
    return Resolver(loaded, overrides).run()


def resolve_ref(ref: str | Path, overrides: dict[str, str] | None = None) -> Program:
    return resolve(load(ref), overrides)


def _override_text(value: Any) -> str:
    """An override as spec source: CLI values arrive as text; in-process callers of
    `nestc.compile(spec, {...})` may pass Python numbers, booleans and strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    raise NestError.at(Pos(file="--set"),
                       f"an override must be text, a number or a boolean, got {type(value).__name__}",
                       hint='pass the value as the spec would write it, e.g. {"n_layers": "2"}')


__all__ = ["resolve", "resolve_ref", "Resolver", "parse_file"]
