"""Lowering rules: for every box, pick the implementation the generated code will call.

Rules are tried in order, fastest first; each is a small predicate over the resolved box with a
`why` that `nestc compile` writes into the generated code. The last rule for each kind of box is
the general fallback, which accepts everything the language can say about that kind of box, so
the only errors left are combinations that have no meaning (and say so).

====================  =========================================================================
rule                  when
====================  =========================================================================
attention_sdpa        attention boxes (softmax attention, windows, persistent tokens, segments)
delta_rule_chunked    matrix memory, L2 objective, GD, gate/decay retention, every token
linear_attn_chunked   matrix memory, dot-product objective, GD, gate/decay retention, every token
deep_memory_chunked   matrix or MLP memory, any objective of M(k), GD / momentum / DGD, retention
                      linear in M, every C tokens (gradients at the chunk-start state; plain GD
                      may run in its dual form, picked per call: DeepMemory._dual)
memory_general        any other in-context memory: per-token recurrence inside each chunk with
                      torch.func gradients (slow, obviously correct; the reference of the above)
optimizer_foreach     optimizer-level boxes (state like(W)) and weights boxes: foreach updates
====================  =========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import ir
from .diagnostics import Collector
from .printer import expr_str
from .program import BoxInfo, Program


@dataclass
class ObjectiveForm:
    kind: str  # l2 | dot | lp | huber | expr | general | none
    scale: float = 1.0  # objective = scale * kind(M(k), target)
    target: ir.Expr | None = None  # the regression target (v) or the dot-product partner
    extra: ir.Expr | None = None  # p of lp, delta of huber


@dataclass
class RetentionForm:
    kind: str  # none | gate | proximal | general
    factor: ir.Expr | None = None  # gate: M <- factor * M (per token); proximal: the weight w
    grad_at: str = "previous"  # the step's gradient before the gate (Titans) or after (GDN)


@dataclass
class OptimizerForm:
    kind: str  # gd | momentum | dgd | adam | newton_schulz | closed_form
    args: dict[str, ir.Expr] = field(default_factory=dict)


@dataclass
class BoxPlan:
    box: BoxInfo
    rule: str
    why: str
    objective: ObjectiveForm | None = None
    retention: RetentionForm | None = None
    optimizer: OptimizerForm | None = None
    lss: bool = False  # values/context use the local surprise signal


def _num(v: float) -> ir.Expr:
    return ir.Num(value=v, text=repr(v))


def _is_m_call(e: ir.Expr, key: str | None = None) -> bool:
    """M(k) for a matrix or MLP memory, or M itself for an element-wise (like(W)) state."""
    if isinstance(e, ir.Name) and e.id == "M":
        return True
    return isinstance(e, ir.Call) and e.func == "M" and len(e.args) == 1


def _mentions_state(e: ir.Expr) -> bool:
    return any(isinstance(n, ir.Name) and n.id == "M" for n in ir.walk_expr(e)) or \
        any(c.func == "M" for c in ir.calls_in(e))


def _self_generated_values(box: BoxInfo) -> bool:
    """`values M(e)` and other values that read the box's own state (NL Eq. 84)."""
    return box.values is not None and _mentions_state(box.values)


def _scale_of(e: ir.Expr) -> tuple[float, ir.Expr]:
    """Split constant factors off: 0.5 * l2(...) -> (0.5, l2(...)); -dot(...) -> (-1, dot(...))."""
    if isinstance(e, ir.UnaryOp) and e.op == "-":
        s, inner = _scale_of(e.operand)
        return -s, inner
    if isinstance(e, ir.BinOp) and e.op in ("*", "/"):
        if isinstance(e.left, ir.Num) and e.op == "*":
            s, inner = _scale_of(e.right)
            return float(e.left.value) * s, inner
        if isinstance(e.right, ir.Num):
            s, inner = _scale_of(e.left)
            return (s * float(e.right.value)) if e.op == "*" else (s / float(e.right.value)), inner
    return 1.0, e


def objective_form(box: BoxInfo) -> ObjectiveForm:
    e = box.objective
    if e is None:
        return ObjectiveForm("none")
    scale, core = _scale_of(e)
    if isinstance(core, ir.Call) and core.func in ("l2", "dot", "lp", "huber") and len(core.args) >= 2:
        a, b = core.args[0], core.args[1]
        if _is_m_call(a) and not _mentions_state(b):
            pred_arg, target = a, b
        elif _is_m_call(b) and not _mentions_state(a) and core.func in ("l2", "dot"):
            pred_arg, target = b, a
        else:
            pred_arg = None
        if pred_arg is not None and _same_keys(pred_arg, box):
            extra = core.args[2] if len(core.args) > 2 else None
            return ObjectiveForm(core.func, scale, target, extra)
    # any objective in which the state appears only as M(keys): its gradient w.r.t. the
    # prediction is taken with torch.func, the rest is the same chunk-parallel machinery
    m_calls = [c for c in ir.calls_in(e) if c.func == "M"]
    bare_m = any(isinstance(n, ir.Name) and n.id == "M" for n in ir.walk_expr(e))
    if m_calls and not bare_m and all(_same_keys(c, box) for c in m_calls):
        return ObjectiveForm("expr", 1.0, None)
    return ObjectiveForm("general")


def _same_keys(call: ir.Expr, box: BoxInfo) -> bool:
    """Is the argument of M(...) the box's keys (named `k`, or the very keys expression)?"""
    if isinstance(call, ir.Name):  # a bare M: an element-wise state has no keys
        return box.state.form in ("like", "vector")
    arg = call.args[0]
    if isinstance(arg, ir.Name) and arg.id == "k":
        return True
    return box.keys is not None and ir.strip_positions(arg) == ir.strip_positions(box.keys)


def linear_coefficient(e: ir.Expr) -> ir.Expr | None:
    """If e is c * M with c free of M, return c (so retention is a per-token gate); else None."""
    if isinstance(e, ir.Name) and e.id == "M":
        return _num(1.0)
    if not _mentions_state(e):
        return None
    if isinstance(e, ir.BinOp):
        if e.op == "*":
            if not _mentions_state(e.left):
                c = linear_coefficient(e.right)
                return None if c is None else _mul(e.left, c)
            if not _mentions_state(e.right):
                c = linear_coefficient(e.left)
                return None if c is None else _mul(c, e.right)
            return None
        if e.op == "/" and not _mentions_state(e.right):
            c = linear_coefficient(e.left)
            return None if c is None else ir.BinOp(op="/", left=c, right=e.right)
        if e.op in ("+", "-"):
            cl = linear_coefficient(e.left) if _mentions_state(e.left) else None
            cr = linear_coefficient(e.right) if _mentions_state(e.right) else None
            if (cl is None and _mentions_state(e.left)) or (cr is None and _mentions_state(e.right)):
                return None
            if cl is None or cr is None:  # an M-free term: affine, not linear
                return None
            return ir.BinOp(op=e.op, left=cl, right=cr)
    if isinstance(e, ir.UnaryOp) and e.op == "-":
        c = linear_coefficient(e.operand)
        return None if c is None else ir.UnaryOp(op="-", operand=c)
    return None


def _mul(a: ir.Expr, b: ir.Expr) -> ir.Expr:
    if isinstance(a, ir.Num) and a.value == 1:
        return b
    if isinstance(b, ir.Num) and b.value == 1:
        return a
    return ir.BinOp(op="*", left=a, right=b)


def retention_form(box: BoxInfo) -> RetentionForm:
    e = box.retention
    if e is None:
        return RetentionForm("none")
    grad_at = next((k.value.value for k in getattr(e, "kwargs", ()) if k.name == "grad"), "previous")
    if isinstance(e, ir.Call) and e.func == "gate":
        return RetentionForm("gate", e.args[0], grad_at)
    if isinstance(e, ir.Call) and e.func == "decay":
        return RetentionForm("gate", ir.BinOp(op="-", left=_num(1.0), right=e.args[0]), grad_at)
    if isinstance(e, ir.Call) and e.func == "weight_decay":
        lr = box.lr if box.lr is not None else _num(1.0)
        return RetentionForm("gate", ir.BinOp(op="-", left=_num(1.0),
                                              right=ir.BinOp(op="*", left=lr, right=e.args[0])))
    if isinstance(e, ir.Call) and e.func == "proximal":
        return RetentionForm("proximal", e.args[0])
    c = linear_coefficient(e)
    if c is not None:
        return RetentionForm("gate", c)
    return RetentionForm("general")


def optimizer_form(box: BoxInfo) -> OptimizerForm:
    e = box.optimizer
    if e is None:
        return OptimizerForm("gd")
    return OptimizerForm(e.func, {k.name: k.value for k in e.kwargs})


def _uses_lss(box: BoxInfo) -> bool:
    exprs = [box.values, *box.contexts.values()]
    return any(isinstance(n, ir.Name) and n.id == "lss" for e in exprs if e is not None
               for n in ir.walk_expr(e))


def repeats_update(box: BoxInfo) -> bool:
    """Whether the box's `steps N` repeats its update: an optimizer box's gradient steps on its
    objective (codegen/optimizers.py, each step from the state the previous one left, as NL Eq.
    44 does for Newton-Schulz). An in-context memory's chunk takes every gradient at its start
    state, where N steps would need a choice the paper does not make: there `steps` is refused."""
    return box.state.form == "like" and box.update is None and box.objective is not None


def runs_inner_steps(box: BoxInfo) -> bool:
    """Whether a lowering runs the box's `steps N`: Newton-Schulz's iterations, or a repeated
    update (`repeats_update`)."""
    if box.optimizer is not None and optimizer_form(box).kind == "newton_schulz":
        return True
    return repeats_update(box)


def _plan_box(box: BoxInfo, errors: Collector) -> BoxPlan | None:
    where = box.prop_pos.get("optimizer") or box.pos
    if "steps" in box.prop_pos and box.freq.inner != 1 and not runs_inner_steps(box):
        # the level graph shows the steps (NL: a level with k steps per use), but no rule runs
        # them: the general rule, where such a box went, did one step and said nothing
        errors.error(box.prop_pos["steps"], f"box `{box.name}`: `steps {box.freq.inner}` (several "
                     "inner optimizer steps per update) is not implemented: every lowering makes "
                     "one step per update", hint="remove `steps` (one step), or raise `lr`")
        return None
    if box.kind == "attention":
        return BoxPlan(box, "attention_sdpa", "softmax attention -> scaled_dot_product_attention")
    if box.kind == "weights" or box.freq.unit == "step":
        if box.kind == "memory" and box.state.form not in ("like", "matrix", "mlp", "vector"):
            errors.error(box.pos, f"box `{box.name}` updates per step but has no state")
            return None
        if box.kind == "memory" and box.state.form != "like":
            if not _uses_lss(box):
                errors.error(box.pos, f"box `{box.name}` is a {box.state.form} memory that updates "
                             "every N steps, so it learns across sequences; its values must be "
                             "`lss` (the model's loss gradient)",
                             hint="for in-context learning use `every N tokens`; for optimizer "
                                  "state use `state like(W)`")
                return None
            form = objective_form(box)
            if form.kind != "dot" or form.scale <= 0:
                errors.error(box.prop_pos.get("objective", box.pos),
                             f"box `{box.name}` learns across steps from `lss`; the compiler "
                             "supports the objective dot(M(k), v) there (one backprop step, NL Eq. 31)",
                             hint="write `objective dot(M(k), v)` with `values lss`")
                return None
            return BoxPlan(box, "cms_steps", "an MLP level trained by backprop every N steps "
                           "(NL Eq. 71 with steps as time)", objective=form, lss=True)
        if box.kind == "memory" and box.optimizer is not None and \
                optimizer_form(box).kind not in ("gd", "newton_schulz"):
            errors.error(where, f"optimizer box `{box.name}`: `optimizer "
                         f"{optimizer_form(box).kind}` is for in-context memories",
                         hint="optimizer-level boxes use gd (with an objective) or an update rule")
            return None
        ret = retention_form(box)
        if ret.kind == "proximal" or ret.grad_at == "retained":
            what = "proximal(...)" if ret.kind == "proximal" else "gate(..., grad=retained)"
            errors.error(box.prop_pos.get("retention", box.pos),
                         f"box `{box.name}`: `retention {what}` is implemented for in-context "
                         "memories (every N tokens), not for a box that updates every N steps",
                         hint="use `retention weight_decay(w)` (decoupled weight decay)"
                         if ret.kind == "proximal" else "drop `grad=retained`")
            return None
        return BoxPlan(box, "optimizer_foreach", "element-wise optimizer state -> foreach ops",
                       objective=objective_form(box), retention=retention_form(box),
                       optimizer=optimizer_form(box))
    # in-context memory
    obj, ret, opt = objective_form(box), retention_form(box), optimizer_form(box)
    lss = _uses_lss(box)
    st = box.state
    if st.form not in ("matrix", "mlp", "vector"):
        errors.error(box.pos, f"in-context memory `{box.name}` needs a matrix, mlp or vector state")
        return None
    if opt.kind == "closed_form":
        errors.error(where, f"box `{box.name}`: `optimizer closed_form` is the non-parametric "
                     "solution; for a parametric memory the compiler has no closed form",
                     hint="use `optimizer gd` (or momentum, dgd), or make the box `: attention`")
        return None
    if opt.kind == "newton_schulz":
        errors.error(where, f"box `{box.name}`: `optimizer newton_schulz` orthogonalises optimizer "
                     "state; an in-context memory learns with gd, momentum, dgd or adam")
        return None
    if box.update is None and obj.kind == "none":
        return None  # the resolver already reported it
    if ret.kind == "general" and any(c.func == "M" for c in ir.calls_in(box.retention)):
        errors.error(box.prop_pos.get("retention", box.pos),
                     f"box `{box.name}`: a retention expression scales or transforms the state M; "
                     "it cannot read the memory with M(...)",
                     hint="write reads of the memory in the objective or an `update` rule")
        return None
    if box.update is not None and ret.kind == "proximal":
        errors.error(box.prop_pos.get("retention", box.pos),
                     f"box `{box.name}`: `retention proximal(...)` adds a term to the objective, but "
                     "the box has an `update` rule instead of an objective",
                     hint="write the pull towards the initial state into the update rule, or use "
                          "`retention gate(...)` / an expression of M")
        return None
    mom = opt.args.get("momentum") if opt.kind == "dgd" else None
    if mom is not None and not (isinstance(mom, ir.Num) and mom.value == 0):
        # digest §10.3: the paper never writes this term down, and no lowering implements one
        errors.error(box.prop_pos.get("optimizer", box.pos),
                     f"box `{box.name}`: `dgd(momentum=...)` is not implemented: no lowering "
                     "carries a momentum term through delta gradient descent yet",
                     hint="use momentum=0 (the equations as printed), or `optimizer momentum(...)`")
        return None
    if ret.grad_at == "retained" and (box.freq.period != 1 or opt.kind == "dgd" or box.update is not None):
        errors.error(box.prop_pos.get("retention", box.pos),
                     f"box `{box.name}`: `grad=retained` takes each token's gradient at the gated "
                     "state, which is defined for a memory updated every token with gd, momentum or "
                     "adam" + (f", not every {box.freq.period} tokens" if box.freq.period != 1 else
                               ", not with dgd (which decays along the keys itself)"
                               if opt.kind == "dgd" else ", not with an `update` rule"),
                     hint="use `every 1 tokens`, or drop `grad=retained` (the gradient at the state "
                          "before the gate, as Titans takes it)")
        return None
    blockers = _off_the_chunked_rules(box, obj, ret, opt)
    deep_ok = not blockers
    # self-generated values are read from the state as it moves, which the deep-memory rule does
    # chunk by chunk; the delta rule and linear attention take their values as a stream
    delta_ok = (deep_ok and st.form == "matrix" and box.freq.period == 1 and opt.kind == "gd"
                and obj.kind in ("l2", "dot") and not lss and box.grad_state == "chunk_start"
                and not _self_generated_values(box))
    # the chunked deep-memory rule takes every gradient at the (chunk-start) state before the
    # gate; a gradient at the gated state (Gated DeltaNet) has rules only for the delta rule and
    # linear attention, the general per-token rule otherwise
    if ret.grad_at == "retained" and not delta_ok:
        blockers.append("`grad=retained` on a memory other than a matrix with an l2 or dot "
                        "objective and gd")
        deep_ok = False
    if delta_ok:
        if obj.kind == "l2":
            return BoxPlan(box, "delta_rule_chunked", "matrix memory + L2 objective + GD, every "
                           "token -> chunked (gated) delta rule in WY form",
                           objective=obj, retention=ret, optimizer=opt)
        return BoxPlan(box, "linear_attn_chunked", "matrix memory + dot-product objective + GD, "
                       "every token -> chunked (gated) linear attention", objective=obj,
                       retention=ret, optimizer=opt)
    if deep_ok and (box.read == "before" or box.freq.period == 1):
        return BoxPlan(box, "deep_memory_chunked", "gradients at the chunk-start state in one "
                       "batched pass; retention and momentum across tokens in closed form",
                       objective=obj, retention=ret, optimizer=opt, lss=lss)
    if box.read == "after" and box.freq.period > 1:
        errors.error(box.prop_pos.get("read", box.pos),
                     f"box `{box.name}` reads its state after each token's update but updates "
                     f"every {box.freq.period} tokens: inside a chunk the per-token states of a "
                     "non-linear memory are not computed",
                     hint="use `read before` (the chunk-start state, causal) or `every 1 token`")
        return None
    errors.warning(box.pos, f"box `{box.name}` runs token by token (the general rule, for "
                   f"{blockers[0]}): one small step per token, slower than a chunked rule's "
                   "batched work on a whole chunk; compiled, its compile grows with the sequence "
                   "(`--loops scan`: one compile for any length, slower steps)",
                   hint="for speed: an objective of M(k) with gd, momentum or dgd, and a gate (or "
                        "none) as retention")
    return BoxPlan(box, "memory_general", "general fallback: per-token recurrence with torch.func "
                   "gradients", objective=obj, retention=ret, optimizer=opt, lss=lss)


def _off_the_chunked_rules(box: BoxInfo, obj: ObjectiveForm, ret: RetentionForm,
                           opt: OptimizerForm) -> list[str]:
    """What keeps an in-context memory off the chunk-parallel rule, each said as the reason the
    general per-token rule runs it instead; empty when that rule can take it."""
    return [why for blocks, why in (
        (box.update is not None, "an `update` rule"),
        (box.state.form not in ("matrix", "mlp"), f"a {box.state.form} state"),
        (opt.kind not in ("gd", "momentum", "dgd"), f"`optimizer {opt.kind}`"),
        (ret.kind == "proximal", "`retention proximal(...)`"),
        (ret.kind == "general", "a retention expression that is not a gate (c * M)"),
        (obj.kind not in ("l2", "dot", "lp", "huber", "expr"), "an objective that reads M other "
                                                               "than as M(k)"),
        (box.freq.inner != 1, "inner steps per update"),
    ) if blocks]


def _call_start_unsupported(p: BoxPlan, errors: Collector) -> bool:
    """`grad_state call_start` is implemented by rule deep_memory_chunked for GD and momentum:
    the other rules' updates read the state they change (DGD, the per-token fallback) or learn
    across steps, where a call has no tokens to share a state."""
    box = p.box
    if box.grad_state == "chunk_start":
        return False
    opt = p.optimizer.kind if p.optimizer is not None else "gd"
    if p.rule == "deep_memory_chunked" and opt in ("gd", "momentum"):
        return False
    errors.error(box.prop_pos.get("grad_state", box.pos),
                 f"box `{box.name}`: `grad_state call_start` needs an MLP or matrix memory updated "
                 f"every N tokens with gd or momentum (rule deep_memory_chunked), but this box "
                 f"lowers to {p.rule}" + (f" with `optimizer {opt}`" if p.rule == "deep_memory_chunked" else ""),
                 hint="drop `grad_state` (gradients at each chunk's start state), or use "
                      "`optimizer gd` / `optimizer momentum(...)`")
    return True


def _block_boxes(program: Program, block) -> dict[str, BoxInfo]:
    """The boxes a block declares, by the names its statements call them by."""
    return {program.boxes[q].name: program.boxes[q] for q in block.boxes if q in program.boxes}


def _check_prefix_reads(program: Program, errors: Collector) -> None:
    """`attn(h, prefix=m)` prepends m's tokens to each segment (Titans MAC, Eqs. 21-23); without
    a `segment` there is no segment to prepend them to, and runtime/attention.py refuses it."""
    for block in program.blocks.values():
        local = _block_boxes(program, block)
        for st in block.statements:
            for c in ir.calls_in(st.value):
                b = local.get(c.func)
                if b is None or b.kind != "attention" or b.segment:
                    continue
                if any(k.name == "prefix" for k in c.kwargs):
                    errors.error(c.pos, f"attention box `{b.name}` reads prefix tokens (`prefix=`), "
                                 "which the compiler supports only in segments (Titans MAC: each "
                                 "segment attends to its own prefix tokens)",
                                 hint=f"add `segment N` to box `{b.name}`, or drop `prefix=`")


def _check_lss_reads(program: Program, errors: Collector) -> None:
    """`values lss` is the loss gradient at the box's output: with the box read at several
    places, there are several outputs, and which gradient it learns from is not implemented
    (the generated code lost the probe and failed at the first step)."""
    for block in program.blocks.values():
        local = _block_boxes(program, block)
        reads: dict[str, list[ir.Call]] = {}
        for st in block.statements:
            for c in ir.calls_in(st.value):
                name = ir.read_name(c)
                if name in local and _uses_lss(local[name]):
                    reads.setdefault(name, []).append(c)
        for name, calls in reads.items():
            for c in calls[1:]:
                errors.error(c.pos, f"box `{name}` learns from `lss`, the loss gradient at its output, "
                             f"so it can be read at one place only; it is read at line {calls[0].pos.line} too",
                             hint="read it once into a `let` to use its output at several places, or give "
                                  f"each place a box of its own (`box {name}2 : memory like {name}`)")


def plan(program: Program, errors: Collector) -> dict[str, BoxPlan]:
    _check_prefix_reads(program, errors)
    _check_lss_reads(program, errors)
    plans: dict[str, BoxPlan] = {}
    for q, b in program.boxes.items():
        p = _plan_box(b, errors)
        if p is not None and _call_start_unsupported(p, errors):
            p = None
        if p is not None:
            plans[q] = p
    for opt in program.optimizers:
        for name, b in opt.boxes.items():
            p = _plan_box(b, errors)
            if p is not None:
                plans[f"{opt.name}.{name}"] = p
    return plans


REFERENCE_RULES = ("delta_rule_chunked", "linear_attn_chunked", "deep_memory_chunked")


def reference_plan(p: BoxPlan) -> BoxPlan:
    """The plan of the general per-token rule (GeneralMemory: one token at a time, inner
    gradients by torch.func) for a box a chunked fast rule would run: the slow, obviously-correct
    reference those rules are tested against. Boxes the general rule cannot run (local surprise
    signals, self-generated values, gradients at the call's start) keep their plan."""
    box = p.box
    if p.rule not in REFERENCE_RULES or p.lss or _self_generated_values(box) or box.grad_state != "chunk_start":
        return p
    return BoxPlan(box, "memory_general", f"reference for {p.rule}: per-token recurrence with "
                   "torch.func gradients", objective=p.objective, retention=p.retention,
                   optimizer=p.optimizer, lss=p.lss)


def describe(p: BoxPlan) -> str:
    parts = [p.rule]
    if p.objective is not None and p.objective.kind not in ("none",):
        parts.append(f"objective {p.objective.kind}")
    if p.retention is not None and p.retention.kind != "none":
        parts.append(f"retention {p.retention.kind}"
                     + (f" {expr_str(p.retention.factor)}" if p.retention.factor is not None else ""))
    return ", ".join(parts)


__all__ = ["plan", "reference_plan", "BoxPlan", "objective_form", "retention_form", "optimizer_form",
           "linear_coefficient", "describe"]
