"""Boxes in generated code: how each lowering rule is constructed and called."""

from __future__ import annotations

from dataclasses import dataclass

from .. import ir
from ..diagnostics import NestError
from ..lower import BoxPlan
from ..printer import expr_str
from ..program import BoxInfo
from .names import one_line


@dataclass
class BoxRef:
    info: BoxInfo
    plan: BoxPlan
    attr: str  # self.<attr>
    state_key: str

    @property
    def heads(self) -> int:
        return self.info.heads


def mlp_dims(b: BoxInfo) -> tuple[int, ...]:
    st = b.state
    if st.form == "matrix":
        return (st.d_in, st.d_out)
    return (st.d_in,) + (st.hidden,) * (st.depth - 1) + (st.d_out,)


def _kw_literal(e: ir.Expr | None, default):
    if e is None:
        return default
    if isinstance(e, ir.Str):
        return e.value
    if isinstance(e, (ir.Num, ir.Bool)):
        return e.value
    if isinstance(e, ir.UnaryOp) and isinstance(e.operand, ir.Num):
        return -e.operand.value
    return None  # data-dependent


def settings_ctor(b: BoxInfo, plan: BoxPlan) -> str:
    st = b.state
    act = st.act if st.form == "mlp" else "identity"
    residual = st.residual if st.form == "mlp" else False
    opt = plan.optimizer.kind if plan.optimizer else "gd"
    args = plan.optimizer.args if plan.optimizer else {}
    parts = [f"name={b.name!r}", f"heads={b.heads}",
             f"shape=mem.MLPShape({mlp_dims(b)!r}, {act!r}, {residual})",
             f"period={b.freq.period}", f"optimizer={opt!r}"]
    if opt == "dgd":
        parts += [f"dgd_step={_kw_literal(args.get('step'), 'exact')!r}",
                  f"dgd_decay_keys={_kw_literal(args.get('decay_keys'), 'layer')!r}"]
    init, init_arg = b.init
    parts += [f"read={b.read!r}", f"reset={b.reset!r}", f"init={init!r}"]
    if init == "random":
        parts.append(f"init_std={float(init_arg)!r}")
    if init == "checkpoint":
        parts.append(f"init_from={checkpoint_source(b)!r}")
    if b.grad != "through":
        parts.append(f"grad={b.grad!r}")
    if b.grad_state != "chunk_start":
        parts.append(f"grad_state={b.grad_state!r}")
    if plan.retention is not None and plan.retention.grad_at != "previous":
        parts.append(f"grad_at={plan.retention.grad_at!r}")
    if opt == "dgd" and _kw_literal(args.get("momentum"), 0) not in (0, 0.0):
        parts.append("extra={'dgd_momentum': True}")
    return "mem.MemorySettings(" + ", ".join(parts) + ")"


def checkpoint_source(b: BoxInfo) -> tuple[str, str]:
    """(file, key) of `init checkpoint(path, key)`, a relative path taken from the spec's folder."""
    from pathlib import Path

    path, key = b.init[1]
    p = Path(path)
    if not p.is_absolute():
        p = Path(b.pos.file).parent / p
    return (str(p), key)


def constructor(b: BoxInfo, plan: BoxPlan, in_width: int | None) -> str:
    """The Python expression that builds the box's runtime module."""
    rule = plan.rule
    if rule == "attention_sdpa":
        return (f"A.Attention({in_width}, heads={b.heads}, rope={b.rope}, window={b.window}, "
                f"persistent={b.persistent}, segment={b.segment})")
    if rule in ("delta_rule_chunked", "linear_attn_chunked"):
        obj = plan.objective
        kind = "l2" if rule == "delta_rule_chunked" else "dot"
        grad_at = plan.retention.grad_at if plan.retention is not None else "previous"
        source = f", init_from={checkpoint_source(b)!r}, name={b.name!r}" if b.init[0] == "checkpoint" else ""
        return (f"mem.DeltaMemory({b.heads}, {b.state.d_in}, {b.state.d_out}, {kind!r}, "
                f"{obj.scale!r}, init={b.init[0]!r}, read={b.read!r}, grad_at={grad_at!r}{source})")
    if rule == "deep_memory_chunked":
        return f"mem.DeepMemory({settings_ctor(b, plan)})"
    if rule == "memory_general":
        adam = ""
        if plan.optimizer and plan.optimizer.kind == "adam":
            a = plan.optimizer.args
            adam = (f", adam=({_kw_literal(a.get('beta1'), 0.9)!r}, {_kw_literal(a.get('beta2'), 0.999)!r}, "
                    f"{_kw_literal(a.get('eps'), 1e-8)!r})")
        return f"mem.GeneralMemory({settings_ctor(b, plan)}{adam})"
    if rule == "cms_steps":
        return f"mem.StepMemory({settings_ctor(b, plan)})"
    raise NestError.at(b.pos, f"box `{b.name}`: no code generator for rule {rule}")


def header_comment(b: BoxInfo, plan: BoxPlan) -> str:
    return one_line(f"box {b.name} ({b.pos.file}:{b.pos.line}): {plan.rule} -- {plan.why}")


def objective_text(b: BoxInfo) -> str:
    return one_line(expr_str(b.objective)) if b.objective is not None else ""
