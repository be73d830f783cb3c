"""Resolved expressions -> Python source.

Two scopes:

* ``block`` -- per-token streams ``[B, T, W]``: the block's lets and x, and box generators. Learned
  layers become submodules of the block (sized by the types the resolver inferred); time-mixing
  layers (short convolutions) carry streaming state; box reads and block calls are hoisted into
  statements of their own by the block emitter (they update state).
* ``heads`` -- per-head tensors ``[B, H, n, d]`` inside a box: user-written objectives and
  self-generated values, where ``M(e)`` is the box's MLP or matrix applied with given weights.
"""

from __future__ import annotations

from typing import Callable

from .. import ir
from ..printer import expr_str
from ..types import Ty

_TORCH_UNARY = {"silu": "F.silu", "gelu": "F.gelu", "relu": "F.relu", "sigmoid": "torch.sigmoid",
                "tanh": "torch.tanh", "softplus": "F.softplus", "exp": "torch.exp",
                "log": "torch.log", "sqrt": "torch.sqrt", "abs": "torch.abs", "sign": "torch.sign"}
_PREC = {"or": 1, "and": 2, "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4, "+": 5, "-": 5,
         "*": 6, "/": 6, "%": 6, "neg": 7, "**": 8}


def _prec(e: ir.Expr) -> int:
    if isinstance(e, ir.BinOp):
        return _PREC[e.op]
    if isinstance(e, ir.UnaryOp):
        return _PREC["neg"]
    return 9


class ExprEmitter:
    """Emit one expression; `names` maps spec names to Python expressions, `call_hook` may claim
    calls (box reads, block calls, M(...)) and return the Python expression that replaces them."""

    def __init__(self, program, sites, inits: list[str], names: dict[str, str], scope: str,
                 call_hook: Callable[[ir.Call], str | None] | None = None, where: str = "",
                 cache: dict | None = None, streams: dict | None = None):
        self.program = program
        self.sites = sites
        # one spec expression is one learned layer, however often its code is emitted (a box's
        # query at each of its reads): modules are cached by the identity of their IR node
        self.cache = cache if cache is not None else {}
        # ...but each emission of a time-mixing layer is its own stream with its own state
        self.streams = streams if streams is not None else {}
        self.inits = inits
        self.names = names
        self.scope = scope
        self.call_hook = call_hook
        self.where = where  # "keys of lmm", used to name submodules
        self.state_keys: list[str] = []

    # -- helpers --
    def width(self, node: ir.Expr) -> int:
        ty: Ty | None = self.program.type_of(node)
        if ty is None or ty.width is None:
            raise RuntimeError(f"no inferred width for `{expr_str(node)}`")
        return ty.width

    def module(self, base: str, ctor: str, src: ir.Expr) -> str:
        if id(src) in self.cache:
            return self.cache[id(src)]
        name = self.sites.new(base)
        self.inits.append(f"self.{name} = {ctor}  # {one_line_src(src)}")
        self.cache[id(src)] = f"self.{name}"
        return f"self.{name}"

    def stream_key(self, module: str) -> str:
        """A fresh state key for one more stream through `module`."""
        base = module.removeprefix("self.")
        n = self.streams.get(base, 0) + 1
        self.streams[base] = n
        return base if n == 1 else f"{base}@{n}"

    def site_base(self, fn: str) -> str:
        return f"{self.where}_{fn}" if self.where else fn

    # -- emission --
    def __call__(self, e: ir.Expr) -> str:
        return self.emit(e)

    def emit(self, e: ir.Expr) -> str:
        if isinstance(e, ir.Num):
            return e.text if not e.text.startswith(".") else "0" + e.text
        if isinstance(e, ir.Str):
            return repr(e.value)
        if isinstance(e, ir.Bool):
            return "True" if e.value else "False"
        if isinstance(e, ir.Name):
            if e.id in self.names:
                return self.names[e.id]
            raise RuntimeError(f"no value for `{e.id}` in generated code ({self.where})")
        if isinstance(e, ir.UnaryOp):
            inner = self.emit(e.operand)
            return f"-{inner}" if _prec(e.operand) >= _PREC["neg"] else f"-({inner})"
        if isinstance(e, ir.BinOp):
            return self._binop(e)
        if isinstance(e, ir.Call):
            return self._call(e)
        raise RuntimeError(f"cannot generate code for `{expr_str(e)}`")

    def _binop(self, e: ir.BinOp) -> str:
        p = _PREC[e.op]
        left, right = self.emit(e.left), self.emit(e.right)
        if e.op == "**":
            left = left if _prec(e.left) > p else f"({left})"
            right = right if _prec(e.right) >= _PREC["neg"] else f"({right})"
        else:
            left = left if _prec(e.left) >= p else f"({left})"
            right = right if _prec(e.right) > p else f"({right})"
        return f"{left} {e.op} {right}"

    def _call(self, e: ir.Call) -> str:
        if self.call_hook is not None:
            claimed = self.call_hook(e)
            if claimed is not None:
                return claimed
        f = e.func
        a = [self.emit(x) for x in e.args]
        kw = {k.name: k.value for k in e.kwargs}
        if f in _TORCH_UNARY:
            return f"{_TORCH_UNARY[f]}({a[0]})"
        if f == "min":
            return f"R.minimum({a[0]}, {a[1]})"
        if f == "max":
            return f"R.maximum({a[0]}, {a[1]})"
        if f == "clamp":
            return f"torch.clamp({a[0]}, {a[1]}, {a[2]})"
        if f == "lerp":
            return f"torch.lerp({a[0]}, {a[1]}, {a[2]})"
        if f == "where":
            return f"torch.where({a[0]}, {a[1]}, {a[2]})"
        if f == "stop_grad":
            return f"({a[0]}).detach()"
        if f == "softmax":
            return f"torch.softmax({a[0]}, dim=-1)"
        if f in ("sum", "mean"):
            groups = int(kw["groups"].value) if "groups" in kw else 1
            if groups == 1:
                return f"({a[0]}).{f}(-1, keepdim=True)"
            return f"L.reduce_groups({a[0]}, {groups}, {f!r})"
        if f == "norm":
            return f"torch.linalg.vector_norm({a[0]}, ord={self.emit(kw['p'])}, dim=-1, keepdim=True)"
        if f == "l2norm":
            groups = int(kw["groups"].value) if "groups" in kw else 1
            return f"L.l2norm({a[0]}, {groups})" if groups != 1 else f"L.l2norm({a[0]})"
        if self.scope == "heads":
            return self._head_call(e, a)
        if f == "linear":
            bias = "bias" in kw
            m = self.module(self.site_base("linear"), f"L.Linear({self.width(e.args[0])}, {a[1]}"
                            + (", bias=True)" if bias else ")"), e)
            return f"{m}({a[0]})"
        if f == "mlp":
            act = kw["act"].id if "act" in kw else "gelu"
            out = self.emit(kw["out"]) if "out" in kw else str(self.width(e.args[0]))
            m = self.module(self.site_base("mlp"), f"L.MLP({self.width(e.args[0])}, {a[1]}, {out}, {act!r})", e)
            return f"{m}({a[0]})"
        if f == "swiglu":
            m = self.module(self.site_base("swiglu"), f"L.SwiGLU({self.width(e.args[0])}, {a[1]})", e)
            return f"{m}({a[0]})"
        if f in ("rmsnorm", "layernorm"):
            cls = "L.RMSNorm" if f == "rmsnorm" else "L.LayerNorm"
            m = self.module(self.site_base("norm"), f"{cls}({self.width(e.args[0])})", e)
            return f"{m}({a[0]})"
        if f == "conv":
            m = self.module(self.site_base("conv"), f"L.ShortConv({self.width(e.args[0])}, {a[1]})", e)
            key = self.stream_key(m)
            self.state_keys.append(key)
            return f"R.conv({m}, {a[0]}, state, {key!r})"
        if f == "combine":
            mode = kw["mode"].id if "mode" in kw and isinstance(kw["mode"], ir.Name) else (
                kw["mode"].value if "mode" in kw else "weighted")
            m = self.module(self.site_base("combine"), f"L.Combine({len(a)}, {mode!r})", e)
            return f"{m}({', '.join(a)})"
        raise RuntimeError(f"`{f}` has no lowering in a block ({self.where})")

    def _head_call(self, e: ir.Call, a: list[str]) -> str:
        f = e.func
        if f == "l2":
            return f"(({a[0]} - {a[1]}) ** 2).sum(-1, keepdim=True)"
        if f == "dot":
            return f"({a[0]} * {a[1]}).sum(-1, keepdim=True)"
        if f == "lp":
            return f"R.abs_pow({a[0]} - {a[1]}, {a[2]}).sum(-1, keepdim=True)"
        if f == "huber":
            return f"R.huber({a[0]} - {a[1]}, {a[2]}).sum(-1, keepdim=True)"
        if f == "outer":
            # per-head streams here are [B, H, N, d] (N = 1 in a per-token rule): the outer
            # product of each token's vectors, summed over the tokens, is a state-shaped
            # [B, H, d_a, d_b] (an einsum over '...i,...j' would keep the token axis)
            return f"torch.einsum('...ni,...nj->...ij', {a[0]}, {a[1]})"
        raise RuntimeError(f"`{f}` has no lowering inside a box ({self.where})")


def one_line_src(e: ir.Expr) -> str:
    from .names import one_line

    text = one_line(expr_str(e))
    pos = e.pos
    where = f"{pos.file}:{pos.line}" if pos.line else ""
    return (f"{where}  {text}" if where else text)[:160]
