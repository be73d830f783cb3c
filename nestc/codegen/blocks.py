"""One block of a spec -> one nn.Module class with a readable forward().

Scheduling. A block's statements run in order, except where boxes and statements depend on one
another through time: Hope's memories produce the keys they all learn from (k = M_k(h) and M_k
learns from k). Such a cycle is a strongly connected component of the dataflow between
statements and box states; it runs as one chunk loop at the smallest chunk size in it, each box
read at its committed (chunk-start) state and updated at the end of each piece. Everything else
is computed over the whole stretch of tokens at once, and a box outside any loop processes the
whole stretch in one call (its own chunking happens inside the runtime).
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field

import networkx as nx

from .. import ir
from ..diagnostics import NestError
from ..functions import LEARNED_FUNCTIONS
from ..lower import BoxPlan
from ..printer import expr_str
from ..program import BlockInfo, BoxInfo, Program, Statement
from .boxes import BoxRef, constructor, header_comment
from .exprs import ExprEmitter, one_line_src
from .names import Sites, class_name, one_line, py_name

BOX_FIELDS = ("keys", "values", "query", "lr", "objective", "retention", "optimizer", "update")
INNER_NAMES = {"k", "v", "q", "lr", "M", "step", "lss", "in"}


@dataclass
class Fused:
    """Sibling memories generated as one stacked memory."""

    members: list[BoxRef]
    attr: str | None = None
    built: bool = False
    outs: dict[str, str] | None = None
    in_var: str | None = None


@dataclass
class Unit:
    """A piece of the schedule: one statement, or a loop over a group of statements and boxes."""

    stmts: list[int]
    boxes: list[str] = field(default_factory=list)
    period: int = 0  # > 0 for a loop


class BlockGen:
    def __init__(self, program: Program, block: BlockInfo, plans: dict[str, BoxPlan],
                 classes: dict[str, str], options: dict | None = None):
        self.options = options or {}
        self.p = program
        self.block = block
        self.plans = plans
        self.classes = classes  # qualname of a block -> its class name
        self.sites = Sites()
        self.inits: list[str] = []
        self.body: list[str] = []
        self.state_lines: list[str] = []
        self.lss_sites: list[tuple[str, int, int]] = []  # (box, width, chunk)
        # (box, why): lss boxes that a zero signal would still move off their initial state
        self.lss_moved_by_zero: list[tuple[str, str]] = []
        self.methods: list[str] = []  # chunk-loop bodies that run as methods (see `loop`)
        self.refs: dict[str, BoxRef] = {}
        self.subs: dict[str, str] = {}  # block name -> attribute
        self.uses_x_in = False
        self.ind = "        "
        self.site_cache: dict = {}
        self.stream_counts: dict = {}
        self.fusion: dict[str, "Fused"] = {}
        self._emitters: list[ExprEmitter] = []
        self.loops = 0
        self.qualnames: dict[str, str] = {}
        for q in block.boxes:
            b = program.boxes[q]
            attr = self.sites.new(f"box_{b.name}")
            self.refs[b.name] = BoxRef(b, plans[q], attr, attr)
            self.qualnames[b.name] = q

    # ----------------------------------------------------------------------------- analysis
    def _names(self, e: ir.Expr | None) -> set[str]:
        if e is None:
            return set()
        return {n.id for n in ir.names_in(e)}

    def _box_reads(self, e: ir.Expr) -> list[tuple[ir.Call, str]]:
        # (`read_before(m, e)` names a box of this block: the resolver checked it)
        return [(c, box) for c in ir.calls_in(e) if (box := ir.read_name(c)) in self.refs]

    def _box_exprs(self, b: BoxInfo) -> list[ir.Expr]:
        exprs = [getattr(b, f) for f in BOX_FIELDS] + list(b.contexts.values())
        return [e for e in exprs if e is not None]

    def _close_groups(self, loops: list[set], stmts: list[Statement], reads: dict[str, list[int]]) -> list[set]:
        """Loop groups closed under "a box read by a statement in the group is in it, and so is
        every statement that reads a box in it", overlapping groups merged into one."""
        loops = [set(c) for c in loops]
        changed = True
        while changed:
            changed = False
            for comp in loops:
                for kind, v in list(comp):
                    if kind == "s":
                        new = {("b", box) for _, box in self._box_reads(stmts[v].value)}
                    else:
                        new = {("s", i) for i in reads[v]}
                    if not new <= comp:
                        comp |= new
                        changed = True
        merged: list[set] = []
        for comp in loops:
            for m in merged:
                if m & comp:
                    m |= comp
                    break
            else:
                merged.append(set(comp))
        return merged

    def schedule(self) -> list[Unit]:
        stmts: list[Statement] = self.block.statements
        g = nx.DiGraph()
        defs: dict[str, int] = {}
        last_x: int | None = None
        reads: dict[str, list[int]] = {n: [] for n in self.refs}
        read_args: dict[str, list[ir.Expr]] = {n: [] for n in self.refs}
        for i, st in enumerate(stmts):
            g.add_node(("s", i))
            for name in self._names(st.value):
                if name == "x" and last_x is not None:
                    g.add_edge(("s", last_x), ("s", i))
                elif name in defs:
                    g.add_edge(("s", defs[name]), ("s", i))
            for call, box in self._box_reads(st.value):
                g.add_edge(("b", box), ("s", i))
                reads[box].append(i)
                read_args[box].append(call.args[-1])
            if st.is_let:
                defs[st.target] = i
            else:
                last_x = i
        for name, ref in self.refs.items():
            g.add_node(("b", name))
            b = ref.info
            used: set[str] = set()
            for e in self._box_exprs(b):
                used |= self._names(e)
            if "in" in used - {"query"}:
                for arg in read_args[name]:
                    used |= self._names(arg)
            for n in used:
                if n in defs:
                    g.add_edge(("s", defs[n]), ("b", name))
        # components with a box inside a cycle run as chunk loops
        loops: list[set] = []
        for comp in nx.strongly_connected_components(g):
            if len(comp) > 1 and any(k == "b" for k, _ in comp):
                loops.append(set(comp))
        for name, idx in reads.items():  # a box read at two places shares one state sequence
            if len(idx) > 1 and not any(("b", name) in c for c in loops):
                loops.append({("b", name)} | {("s", i) for i in idx})
        while True:
            merged = self._close_groups(loops, stmts, reads)
            owner = {node: gi for gi, comp in enumerate(merged) for node in comp}
            unit_of = {node: ("g", owner[node]) if node in owner else node for node in g.nodes}
            cond = nx.DiGraph()
            cond.add_nodes_from(unit_of.values())
            cond.add_edges_from((unit_of[a], unit_of[b]) for a, b in g.edges if unit_of[a] != unit_of[b])
            if nx.is_directed_acyclic_graph(cond):
                break
            # A loop that needs a statement outside it which needs the loop's result (a box read
            # twice with another box's read between the two): the whole cycle runs as one loop.
            # Each box in it is still read at its committed state and updated at its own chunk
            # boundaries (the chunk sizes of boxes that exchange data nest: the level graph checks).
            cycles = [c for c in nx.strongly_connected_components(cond) if len(c) > 1]
            if not any(u[0] == "g" for c in cycles for u in c):
                raise NestError.at(self.block.pos, f"block `{self.block.name}`: the statements and "
                                   "boxes cannot be put in an order that respects their data flow",
                                   hint="a statement reads a box whose loop needs that statement's result")
            loops = merged + [set().union(*(merged[u[1]] if u[0] == "g" else {u} for u in c)) for c in cycles]

        def first(u) -> int:
            if u[0] == "g":
                return min(i for k, i in merged[u[1]] if k == "s") if any(k == "s" for k, _ in merged[u[1]]) else -1
            if u[0] == "s":
                return u[1]
            return min(reads[u[1]], default=len(stmts))

        order = list(nx.lexicographical_topological_sort(cond, key=lambda u: (first(u), str(u))))
        units: list[Unit] = []
        for u in order:
            if u[0] == "s":
                units.append(Unit([u[1]]))
            elif u[0] == "g":
                comp = merged[u[1]]
                boxes = sorted(v for k, v in comp if k == "b")
                periods = [self.refs[n].info.freq.period for n in boxes
                           if self.refs[n].info.kind != "attention"]
                units.append(Unit(sorted(i for k, i in comp if k == "s"), boxes, min(periods)))
        return units

    # ----------------------------------------------------------------------------- emission
    def line(self, text: str) -> None:
        self.body.append(self.ind + text)

    def comment(self, text: str) -> None:
        self.line("# " + one_line(text))

    def emitter(self, names: dict[str, str], where: str, in_loop: bool, hoist_reads: bool = True):
        em = ExprEmitter(self.p, self.sites, self.inits, names, "block", where=where,
                         cache=self.site_cache, streams=self.stream_counts)
        em.call_hook = lambda c: self._hook(c, em, names, in_loop)
        self._emitters.append(em)
        return em

    def _hook(self, c: ir.Call, em: ExprEmitter, names: dict[str, str], in_loop: bool) -> str | None:
        box = ir.read_name(c)
        if box in self.refs:
            return self._read(box, c, em, names, in_loop)
        if c.func in self.p.blocks or any(q.endswith("." + c.func) for q in self.p.blocks):
            return self._block_call(c, em)
        return None

    def _block_call(self, c: ir.Call, em: ExprEmitter) -> str:
        qual = f"{self.block.name}.{c.func}"
        if qual not in self.classes:
            raise NestError.at(c.pos, f"block `{c.func}` was not generated")
        attr = self.subs.get(qual)
        if attr is None:
            attr = self.sites.new(c.func)
            self.subs[qual] = attr
            self.inits.append(f"self.{attr} = {self.classes[qual]}()  # {one_line_src(c)}")
        arg = em.emit(c.args[0])
        out = f"{attr}_out"
        self.line(f"{out}, state[{attr!r}] = self.{attr}({arg}, state[{attr!r}], ctx)")
        return out

    # -- box reads --
    def _read(self, name: str, c: ir.Call, em: ExprEmitter, names: dict[str, str], in_loop: bool) -> str:
        ref = self.refs[name]
        b = ref.info
        if c.func in ("read_before", "read_after"):
            self._check_read_mode(c, b, in_loop)
        arg_expr = c.args[-1]
        if in_loop and name in self.fusion and self.fusion[name].outs is not None:
            return self.fusion[name].outs[name]  # read together with its siblings already
        arg = em.emit(arg_expr)
        in_width = self.p.type_of(arg_expr).width
        if not hasattr(ref, "ctor") and not (in_loop and name in self.fusion):
            ref.ctor = constructor(b, ref.plan, in_width)  # type: ignore[attr-defined]
            self.inits.append(f"# {header_comment(b, ref.plan)}")
            self.inits.append(f"self.{ref.attr} = {ref.ctor}")
            self.state_lines.append(f"{ref.state_key!r}: self.{ref.attr}.initial_state(batch)")
        in_var = self._tmp(f"{name}_in", arg)
        if b.kind == "attention":
            prefix = next((k.value for k in c.kwargs if k.name == "prefix"), None)
            pre = f", prefix={em.emit(prefix)}" if prefix is not None else ""
            out = f"{name}_out"
            self.line(f"{out}, state[{ref.state_key!r}] = self.{ref.attr}({in_var}, state[{ref.state_key!r}]{pre})")
            return out
        if in_loop and name in self.fusion:
            return self._read_fused(self.fusion[name], name, in_var, names)
        if in_loop:
            q = self._query(ref, names, in_var)
            out = f"{name}_out"
            self.line(f"{out} = R.merge_heads(self.{ref.attr}.read(state[{ref.state_key!r}], {q}))")
            ref.loop_in = in_var  # type: ignore[attr-defined]
            return out
        if getattr(ref, "processed", False):
            raise NestError.at(c.pos, f"box `{name}` is read twice outside a chunk loop")
        ref.processed = True  # type: ignore[attr-defined]
        return self._process(ref, names, in_var)

    @staticmethod
    def _check_read_mode(c: ir.Call, b: BoxInfo, in_loop: bool) -> None:
        """read_before / read_after name the state a read sees. A box read several times (or in
        a cycle) runs in a chunk loop, where every read sees the chunk-start state; a box read
        once sees the state its `read` property names. Anything else has no lowering."""
        wanted = "before" if c.func == "read_before" else "after"
        sees = "before" if in_loop else b.read
        if wanted == sees:
            return
        where = ("it is read more than once (or in a cycle), so every read sees the state before "
                 "the current chunk's update" if in_loop else
                 f"its `read` property is `{b.read}`")
        raise NestError.at(c.pos, f"`{c.func}({b.name}, ...)` reads the state {wanted} the "
                           f"update, but box `{b.name}` cannot give that here: {where}",
                           hint=f"read box `{b.name}` once and set `read {wanted}` in it"
                           if in_loop else f"set `read {wanted}` in box `{b.name}`, or use "
                           f"`read_{sees}`")

    def _tmp(self, base: str, value: str) -> str:
        if value.isidentifier():
            return value
        var = py_name(base)
        self.line(f"{var} = {value}")
        return var

    def _gen_names(self, ref: BoxRef, names: dict[str, str], in_var: str | None) -> dict[str, str]:
        gen = dict(names)
        if in_var is not None:
            gen["in"] = in_var
        gen["x"] = "x_in"
        return gen

    def _query(self, ref: BoxRef, names, in_var) -> str:
        b = ref.info
        if b.query is None:
            return f"R.heads({in_var}, {b.heads})"
        em = self.emitter(self._gen_names(ref, names, in_var), f"{b.name}_query", False)
        return f"R.heads({em.emit(b.query)}, {b.heads})"

    def _generators(self, ref: BoxRef, names: dict[str, str], in_var: str | None,
                    with_query: bool = True) -> dict[str, str]:
        """Compute the box's generator streams; returns Python names for keys/values/lr/...."""
        b, plan = ref.info, ref.plan
        gen = self._gen_names(ref, names, in_var)
        if "x" in {n for e in self._box_exprs(b) for n in self._names(e)}:
            self.uses_x_in = True
        out: dict[str, str] = {}

        def stream(field: str, e: ir.Expr) -> str:
            em = self.emitter(gen, f"{b.name}_{field}", False)
            return self._tmp(f"{b.name}_{field}", em.emit(e))

        for field, short in (("keys", "k"), ("query", "q"), ("lr", "lr")):
            e = getattr(b, field)
            if field == "query" and not with_query:
                continue
            if e is not None:
                out[short] = stream(field, e)
                gen[short] = out[short]
        if b.values is not None and not _mentions_m(b.values) and not _mentions_lss(b.values):
            out["v"] = stream("values", b.values)
            gen["v"] = out["v"]
        for name, e in b.contexts.items():
            if not _mentions_lss(e):
                out[f"ctx_{name}"] = stream(f"context_{name}", e)
                gen[name] = out[f"ctx_{name}"]
        if plan.retention is not None and plan.retention.kind == "gate":
            out["gate"] = stream("gate", plan.retention.factor)
        if plan.retention is not None and plan.retention.kind == "proximal":
            out["proximal"] = stream("proximal", plan.retention.factor)
        if plan.optimizer is not None and plan.optimizer.kind == "momentum":
            beta = plan.optimizer.args.get("beta")
            if beta is not None:
                out["beta"] = stream("beta", beta)
        if plan.optimizer is not None and plan.optimizer.kind == "dgd":
            mom = plan.optimizer.args.get("momentum")
            if mom is not None and not (isinstance(mom, ir.Num) and mom.value == 0):
                out["beta"] = stream("beta", mom)
        ref.values_expr = b.values  # type: ignore[attr-defined]
        if b.values is not None and _mentions_m(b.values):
            # Self-generated values are computed per head, where the state is read; the parts
            # free of M that call block functions (M(linear(in, d)), + rmsnorm(in)) are streams,
            # computed here first like the other generators
            hoisted: dict[str, str] = {}

            def hoist(part: ir.Expr) -> ir.Expr:
                if not ir.calls_in(part):
                    return part  # names and arithmetic on them: the per-head emitters compute those
                key = f"M({len(hoisted)})"  # not a name a spec can write, so it shadows none
                hoisted[key] = stream(f"values_part{len(hoisted)}", part)
                return ir.Name(id=key, pos=part.pos)

            ref.values_expr = _hoist_stream_parts(b.values, hoist)  # type: ignore[attr-defined]
            gen.update(hoisted)
        ref.gen = gen  # type: ignore[attr-defined]
        return out

    def _per_token(self, var: str | None, heads: int) -> str:
        return "1.0" if var is None else f"R.per_head({var}, {heads})"

    def _process(self, ref: BoxRef, names: dict[str, str], in_var: str | None, loop_update: bool = False) -> str:
        b, plan = ref.info, ref.plan
        h = b.heads
        if not loop_update:
            self.comment(f"box {b.name} ({b.pos.file}:{b.pos.line}): {plan.rule}")
        g = self._generators(ref, names, in_var, with_query=not loop_update)
        k = f"R.heads({g['k']}, {h})" if "k" in g else None
        if loop_update:
            q = "None"
        elif b.query is not None:
            q = f"R.heads({g['q']}, {h})"
        else:
            q = f"R.heads({in_var}, {h})"
        lr = self._per_token(g.get("lr"), h)
        gate = f"R.per_head({g['gate']}, {h})" if "gate" in g else "None"
        beta = f"R.per_head({g['beta']}, {h})" if "beta" in g else "None"
        key = ref.state_key
        out = f"{b.name}_out"
        flush = "flush" if loop_update else "ctx.flush"  # in a loop: its last piece of a flushed call
        if plan.rule in ("delta_rule_chunked", "linear_attn_chunked"):
            target = self._target_stream(ref)
            self.line(f"{out}, state[{key!r}] = self.{ref.attr}(state[{key!r}], query={q}, keys={k}, "
                      f"values={target}, lr={lr}, gate={gate})")
        elif plan.rule == "cms_steps":
            if loop_update:
                return out  # it learns across steps: nothing to do inside a sequence
            self.line(f"{out} = self.{ref.attr}({q})  # learns every {b.freq.period} steps (the trainer applies it)")
        elif plan.rule == "deep_memory_chunked":
            target = self._target(ref)
            grad = self._out_grad(ref)
            if k == q:  # one tensor for both: the memory then reads what its inner forward computed
                self.line(f"{b.name}_kq = {k}  # keys and queries are one stream")
                k = q = f"{b.name}_kq"
            call = (f"self.{ref.attr}(state[{key!r}], keys={k}, target={target}, lr={lr}, gate={gate}, "
                    f"beta={beta}, query={q}, out_grad={grad}, flush={flush})")
            if plan.lss:
                self.lss_sites.append((b.qualname, b.heads * b.state.d_out, b.freq.period))
                moved = _moved_by_zero_signal(plan, gate)
                if moved:
                    self.lss_moved_by_zero.append((b.qualname, moved))
                self.line("if ctx.probing:  # first pass: the initial state; the probe's gradient is the signal")
                self.line(f"    {out} = self.{ref.attr}.apply_initial({q}) + "
                          f"R.heads(ctx.signal({b.qualname!r}), {h})")
                self.line("else:")
                self.line(f"    {out}, state[{key!r}] = {call}")
                self.line("    if ctx.probes:  # a first pass through this code (zero signals): the probe's gradient is the signal")
                self.line(f"        {out} = {out} + R.heads(ctx.probe({b.qualname!r}), {h})")
            else:
                self.line(f"{out}, state[{key!r}] = {call}")
        elif plan.rule == "memory_general":
            self._general(ref, g, q, lr, gate, beta, out, flush)
        else:
            raise NestError.at(b.pos, f"box `{b.name}`: rule {plan.rule} cannot be generated here")
        if loop_update:
            return out
        self.line(f"{out} = R.merge_heads({out})")
        return out

    def _target_stream(self, ref: BoxRef) -> str:
        """The stream a box regresses onto: its objective's target, or the values `v` for an
        objective written as an expression of M(k) (whose plan has no target of its own)."""
        b, plan = ref.info, ref.plan
        t = plan.objective.target if plan.objective.target is not None else ir.Name(id="v")
        if isinstance(t, ir.Name) and t.id == "v":
            return f"R.heads({ref.gen['v']}, {b.heads})"
        em = self.emitter(ref.gen, f"{b.name}_target", False)
        return f"R.heads({self._tmp(f'{b.name}_target', em.emit(t))}, {b.heads})"

    def _target(self, ref: BoxRef) -> str:
        """What the box regresses onto: a stream, the local surprise signal, or -- for
        self-generated values (NL Eq. 84) -- a function of the committed weights."""
        b, plan = ref.info, ref.plan
        obj = plan.objective
        target = obj.target if obj is not None and obj.kind != "expr" else ir.Name(id="v")
        values = ref.values_expr  # M(...) inputs that need block functions come in as streams
        values_m = values is not None and _mentions_m(values)
        values_lss = values is not None and _mentions_lss(values)
        if isinstance(target, ir.Name) and target.id == "v":
            if values_lss:
                return f"R.heads(ctx.signal({b.qualname!r}), {b.heads})"
            own = _own_output(values)
            if own is not None:  # v̂ = M(e): the memory reads e alongside its keys
                inputs, stop = own
                em = ExprEmitter(self.p, self.sites, self.inits,
                                 {n: f"R.heads({v}, {b.heads})" for n, v in ref.gen.items()}, "heads",
                                 where=f"{b.name}_target")
                return f"mem.SelfValues({em.emit(inputs)}, stop={stop})"
            if values_m:
                fn = f"{b.name}_target"
                hnames = {n: f"R.heads({v}, {b.heads})[:, :, s:e]" for n, v in ref.gen.items()}
                em = ExprEmitter(self.p, self.sites, self.inits, hnames, "heads", where=fn)
                em.call_hook = lambda c: (f"self.{ref.attr}.apply(W, {em.emit(c.args[0])})"
                                          if c.func == "M" else None)
                self.line(f"def {fn}(W, s, e):  # self-generated values at the chunk-start state (NL Eq. 84)")
                self.line(f"    return {em.emit(values)}")
                return fn
            if b.values is None:
                raise NestError.at(b.pos, f"box `{b.name}` regresses onto `v` but has no `values`")
        if _mentions_m(target):
            raise NestError.at(b.pos, f"box `{b.name}`: its objective's target depends on M; "
                               "write that dependence in `values` (self-generated values)")
        return self._target_stream(ref)

    def _out_grad(self, ref: BoxRef) -> str:
        """d objective / d prediction, in closed form or by torch.func."""
        b, plan = ref.info, ref.plan
        obj = plan.objective
        fn = f"{b.name}_grad"
        src = one_line(expr_str(b.objective)) if b.objective is not None else ""
        hnames = {n: f"R.tokens({v}, {b.heads}, s, e)" for n, v in ref.gen.items()}
        sc = obj.scale
        if obj.kind == "l2":
            body = f"{2.0 * sc!r} * (p - t)"
        elif obj.kind == "dot":
            body = f"({sc!r} * t).expand_as(p)"
        elif obj.kind in ("lp", "huber"):
            em = ExprEmitter(self.p, self.sites, self.inits, hnames, "heads", where=fn)
            extra = em.emit(obj.extra)
            if obj.kind == "lp":
                body = f"{sc * 1.0!r} * R.lp_grad(p - t, {extra})"
            else:
                body = f"{sc!r} * torch.clamp(p - t, -{extra}, {extra})"
        else:  # any differentiable objective of M(k): torch.func on the prediction
            names = dict(hnames)
            names["v"] = "t"
            em = ExprEmitter(self.p, self.sites, self.inits, names, "heads", where=fn)
            em.call_hook = lambda c: "p_" if c.func == "M" else None
            body = f"torch.func.grad(lambda p_: ({em.emit(b.objective)}).sum())(p)"
        self.line(f"def {fn}(p, t, s, e):  # d/dM(k) of: {src}")
        self.line(f"    return {body}")
        return fn

    def _spec_method(self, base: str, params: str, source: str, body: str) -> str:
        """One of a general-rule box's functions (objective, update, retention, DGD's layer
        inputs) as a method of the block, returning `body`: it reads only `self` and its
        arguments (z: one token's slice of each stream), so the box's compiled per-token region
        can take it by name (runtime/memory.py `_token_step`). Returns `self.<name>`."""
        name = self.sites.new(base)
        self.methods += ["", f"    def {name}(self, {params}):  # {one_line(source)}", f"        return {body}"]
        return f"self.{name}"

    def _general(self, ref, g, q, lr, gate, beta, out, flush) -> None:
        b, plan = ref.info, ref.plan
        h = b.heads
        gen = ref.gen
        # the closures read one token's slice of each stream: z[name], [B, H, 1, w] (GeneralMemory)
        znames = {n: f"z[{n!r}]" for n in gen}
        if b.values is not None and _mentions_m(b.values):
            raise NestError.at(b.pos, f"box `{b.name}`: self-generated values with this objective, "
                               "retention or optimizer are not supported yet",
                               hint="use an objective of M(k) with gd, momentum or dgd")
        if b.values is not None and _mentions_lss(b.values):
            raise NestError.at(b.pos, f"box `{b.name}`: `lss` values need the dot-product objective "
                               "and gd (one backprop step)")
        loss = "None"
        if b.objective is not None:
            em = ExprEmitter(self.p, self.sites, self.inits, znames, "heads", where=f"{b.name}_loss")
            em.call_hook = lambda c: (f"self.{ref.attr}.apply(W, {em.emit(c.args[0])})" if c.func == "M" else None)
            em.names = dict(znames, M="W[0]")
            loss = self._spec_method(f"{b.name}_loss", "W, z", expr_str(b.objective),
                                     f"({em.emit(b.objective)}).sum()")
        upd = "None"
        if b.update is not None:
            em = ExprEmitter(self.p, self.sites, self.inits, dict(znames, M="W[0]"), "heads", where=f"{b.name}_update")
            em.call_hook = lambda c: (f"self.{ref.attr}.apply(W, {em.emit(c.args[0])})" if c.func == "M" else None)
            upd = self._spec_method(f"{b.name}_update", "W, z", expr_str(b.update), f"[{em.emit(b.update)}]")
        retain = "None"
        if plan.retention is not None and plan.retention.kind == "general":
            em = ExprEmitter(self.p, self.sites, self.inits, dict(znames, M="m"), "heads", where=f"{b.name}_retain")
            retain = self._spec_method(f"{b.name}_retain", "Ms, z", expr_str(b.retention),
                                       f"[{em.emit(b.retention)} for m in Ms]")
        inputs = "None"
        if plan.optimizer is not None and plan.optimizer.kind == "dgd":
            inputs = self._spec_method(f"{b.name}_inputs", "W, z", "each layer's input at the committed state",
                                       f"[a for a, _ in mem.mlp_layer_grads(self.{ref.attr}.s.shape, W, "
                                       "z['k'], torch.zeros_like)[1]]")
        length = f"R.heads({g['k']}, {h}).shape[2]" if "k" in g else "x.shape[1]"
        prox = f", proximal=R.per_head({g['proximal']}, {h})" if "proximal" in g else ""
        read = set().union(*(self._names(e) for e in (b.objective, b.update, b.retention)))
        if inputs != "None":
            read.add("k")  # DGD's layer inputs
        streams = ", ".join(f"{n!r}: R.heads({v}, {h})" for n, v in gen.items() if n in read)
        self.line(f"{out}, state[{ref.state_key!r}] = self.{ref.attr}(state[{ref.state_key!r}], "
                  f"length={length}, loss={loss}, lr={lr}, gate={gate}, beta={beta}, retain={retain}, "
                  f"update={upd}, query={q}, flush={flush}, layer_inputs={inputs}{prox}, "
                  f"streams={{{streams}}}, owner=self)")

    # -- statements --
    def statement(self, st: Statement, names: dict[str, str], in_loop: bool) -> None:
        self.line(f"# {st.pos.file}:{st.pos.line}  "
                  + one_line(("let " if st.is_let else "") + f"{st.target} = {expr_str(st.value)}"))
        em = self.emitter(names, py_name(st.target) if st.is_let else "x", in_loop)
        value = em.emit(st.value)
        target = py_name(st.target) if st.is_let else "x"
        self.line(f"{target} = {value}")
        names[st.target] = target

    def _conv_state(self, key: str) -> None:
        # a stream through a short conv carries its last window-1 inputs (zeros at the start)
        line = f"{key!r}: self.{key.split('@')[0]}.initial_state(batch)"
        if line not in self.state_lines:
            self.state_lines.append(line)

    def loop(self, unit: Unit, names: dict[str, str]) -> None:
        """Emit a chunk loop as a function of (state, one piece of the stream) handed to
        `R.chunk_loop`, which runs it piece by piece (eager), as one scan, or as calls of one
        compiled region (torch.compile). A loop that may trace as one body is a method of the
        block rather than a closure in forward()."""
        stmts = [self.block.statements[i] for i in unit.stmts]
        boxes = [self.refs[n] for n in unit.boxes]
        self.loops += 1
        fn = self.sites.new("chunk_loop")
        # a loop that may trace as one body (scan, or a reusable compiled region) is a method: its
        # only tie to forward() is `self`, so torch.compile can key a region on (module, name)
        scan = self._scannable(stmts, boxes)
        self.comment(f"boxes {', '.join(r.info.name for r in boxes)} depend on one another through "
                     f"time: they run together, {unit.period} token(s) at a time, each read at its "
                     "chunk-start state")
        outs = [py_name(s.target) if s.is_let else "x" for s in stmts]
        outs = list(dict.fromkeys(outs))
        # the loop's pieces follow the chunks of its fastest memory (attention keeps no chunk)
        memories = [r for r in boxes if r.info.kind != "attention"]
        anchor = min(memories, key=lambda r: r.info.freq.period)
        self.fusion = self._fusion_groups(stmts, boxes)
        anchor_key = self.fusion[anchor.info.name].attr if anchor.info.name in self.fusion else anchor.state_key
        def_at = len(self.body)
        self.line(f"def {fn}({'self, ' if scan else ''}state, piece, flush):  # one piece of the stream: "
                  f"at most {unit.period} token(s)")
        outer_ind = self.ind
        self.ind += "    "
        self.line("state = dict(state)")
        unpack_at = len(self.body)
        first_emitter = len(self._emitters)
        inner = dict(names)  # inside the body each stream name is its piece
        for st in stmts:
            self.statement(st, inner, in_loop=True)
        done_groups = set()
        for ref in boxes:
            if ref.info.kind == "attention":
                continue  # its read already advanced its cache
            group = self.fusion.get(ref.info.name)
            if group is not None:
                if id(group) not in done_groups:
                    done_groups.add(id(group))
                    self._update_fused(group, inner)
                continue
            in_var = getattr(ref, "loop_in", None)
            self._process(ref, inner, in_var, loop_update=True)
        carried = [self.fusion[r.info.name].attr if r.info.name in self.fusion else r.state_key
                   for r in boxes]
        for em in self._emitters[first_emitter:]:
            carried += em.state_keys
        carried = list(dict.fromkeys(carried))
        self.fusion = {}
        self.line("return state, {" + ", ".join(f"{o!r}: {o}" for o in outs) + "}")
        # the streams the body reads from outside: the block's names, and its input as `x`
        used = set(re.findall(r"\b[A-Za-z_]\w*\b", "\n".join(
            line.split("#", 1)[0] for line in self.body[unpack_at:])))
        outside = list(dict.fromkeys(v for v in [*names.values(), "x", "x_in"]
                                     if v.isidentifier() and v in used and (v != "x_in" or self.uses_x_in)))
        self.body[unpack_at:unpack_at] = [f"{self.ind}{v} = piece[{v!r}]" for v in outside]
        self.ind = outer_ind
        if scan:  # move the body out of forward(), one level less indented
            body, self.body[def_at:] = self.body[def_at:], []
            self.methods += ["", *(line[4:] for line in body)]
        self.line(f"state, pieces = R.chunk_loop({'self.' if scan else ''}{fn}, state, {{"
                  + ", ".join(f"{v!r}: {v}" for v in outside)
                  + f"}}, period={unit.period}, anchor={anchor_key!r}, carried={carried!r}, "
                  f"outputs={tuple(outs)!r}, scannable={scan}, flush=ctx.flush)")
        self.line(", ".join(outs) + " = " + ", ".join(f"pieces[{o!r}]" for o in outs))
        for st in stmts:
            names[st.target] = py_name(st.target) if st.is_let else "x"

    def _scannable(self, stmts: list[Statement], boxes: list[BoxRef]) -> bool:
        """Whether the loop may run as a scan under torch.compile: every memory in it commits at
        each piece (so all carried state keeps its shape) and nothing in it grows or branches
        over time -- no attention cache, no sub-block, no local surprise signal, no resets every
        N tokens, no per-token general rule."""
        period = min(r.info.freq.period for r in boxes if r.info.kind != "attention")
        for r in boxes:
            b, plan = r.info, r.plan
            if b.kind == "attention" or plan.lss:
                return False
            if plan.rule not in ("deep_memory_chunked", "delta_rule_chunked", "linear_attn_chunked"):
                return False
            if b.freq.period != period:
                return False
            if isinstance(b.reset, int) and not isinstance(b.reset, bool):
                return False
        for st in stmts:
            if any(c.func in self.p.blocks or any(q.endswith("." + c.func) for q in self.p.blocks)
                   for c in ir.calls_in(st.value)):
                return False
        return True

    # -- sibling memories run as one --
    def _fusion_groups(self, stmts: list[Statement], boxes: list[BoxRef]) -> dict[str, "Fused"]:
        """Memories declared together (`box a, b : memory {...}`) that a loop reads once each with
        the same input are independent copies with shared keys, rates and gates: they run as one
        memory with their heads stacked (the same arithmetic in a quarter of the operations for
        Hope's M_k, M_v, M_eta, M_alpha). Not when their properties hold learned functions
        (`lr sigmoid(linear(in, heads))`): each member has its own parameters there, and the
        stack would run the first member's for all."""
        if not self.options.get("fuse", True):
            return {}
        reads: dict[str, list] = {}
        for st in stmts:
            for call, box in self._box_reads(st.value):
                reads.setdefault(box, []).append(ir.strip_positions(call.args[-1]))
        by_key: dict = {}
        for ref in boxes:
            b, plan = ref.info, ref.plan
            if plan.rule != "deep_memory_chunked" or b.query is not None or len(reads.get(b.name, [])) != 1:
                continue
            # each member has its own learned generators (linear(in, heads), ...): no stacking shares
            # them (any `combine`, whose weighted mode has logits, keeps the members apart too)
            if any(c.func in LEARNED_FUNCTIONS or c.func == "combine" for e in self._box_exprs(b) for c in ir.calls_in(e)):
                continue
            key = (b.pos.file, b.pos.line, b.pos.col, b.freq, b.heads, plan.lss,
                   repr(reads[b.name][0]),
                   repr([ir.strip_positions(getattr(b, f)) for f in BOX_FIELDS if getattr(b, f) is not None]))
            by_key.setdefault(key, []).append(ref)
        out: dict[str, Fused] = {}
        for members in by_key.values():
            if len(members) > 1:
                group = Fused(members, attr=self.sites.new("box_" + "_".join(m.info.name for m in members)))
                for m in members:
                    out[m.info.name] = group
        return out

    def _read_fused(self, group: "Fused", name: str, in_var: str, names: dict[str, str]) -> str:
        lead = group.members[0]
        b = lead.info
        n = len(group.members)
        if not group.built:
            import copy

            group.built = True
            stacked = copy.copy(b)
            stacked.heads = b.heads * n
            stacked.name = "_".join(m.info.name for m in group.members)
            ctor = constructor(stacked, lead.plan, None)
            self.inits.append(f"# boxes {', '.join(m.info.name for m in group.members)} "
                              f"({b.pos.file}:{b.pos.line}) share a declaration and their input: "
                              f"{n} memories stacked as {stacked.heads} heads")
            self.inits.append(f"self.{group.attr} = {ctor}")
            self.state_lines.append(f"{group.attr!r}: self.{group.attr}.initial_state(batch)")
            for m in group.members:
                m.ctor = ctor  # type: ignore[attr-defined]  (generated: as part of the stack)
        if group.outs is None:
            outs = [f"{m.info.name}_out" for m in group.members]
            self.line(f"{', '.join(outs)} = (R.merge_heads(part) for part in self.{group.attr}.read("
                      f"state[{group.attr!r}], R.heads({in_var}, {b.heads}).repeat(1, {n}, 1, 1))"
                      f".chunk({n}, dim=1))")
            group.outs = dict(zip((m.info.name for m in group.members), outs))
            group.in_var = in_var
        return group.outs[name]

    def _update_fused(self, group: "Fused", names: dict[str, str]) -> None:
        lead = group.members[0]
        b = lead.info
        n = len(group.members)
        g = self._generators(lead, names, group.in_var, with_query=False)
        rep = lambda v: f"R.heads({v}, {b.heads}).repeat(1, {n}, 1, 1)"  # noqa: E731
        rep_t = lambda v: f"R.per_head({v}, {b.heads}).repeat(1, {n}, 1)"  # noqa: E731
        lead_attr = lead.attr
        lead.attr = group.attr  # the stacked module applies the stacked weights
        values = lead.values_expr  # M(...) inputs that need block functions come in as streams
        values_m = values is not None and _mentions_m(values)
        own = _own_output(values) if values_m else None
        if own is not None:  # v̂ = M(e) for each stacked memory: read alongside the keys
            inputs, stop = own
            em = ExprEmitter(self.p, self.sites, self.inits, {k: rep(v) for k, v in lead.gen.items()}, "heads",
                             where=f"{group.attr}_target")
            target = f"mem.SelfValues({em.emit(inputs)}, stop={stop})"
        elif values_m:
            fn = f"{group.attr}_target"
            hnames = {k: f"{rep(v)}[:, :, s:e]" for k, v in lead.gen.items()}
            em = ExprEmitter(self.p, self.sites, self.inits, hnames, "heads", where=fn)
            em.call_hook = lambda c: (f"self.{group.attr}.apply(W, {em.emit(c.args[0])})"
                                      if c.func == "M" else None)
            self.line(f"def {fn}(W, s, e):  # self-generated values of each stacked memory (NL Eq. 84)")
            self.line(f"    return {em.emit(values)}")
            target = fn
        else:
            target = rep(self._target_stream(lead).removeprefix("R.heads(").rsplit(",", 1)[0])
        grad = self._out_grad(lead)
        lead.attr = lead_attr
        lr = rep_t(g["lr"]) if "lr" in g else "1.0"
        gate = rep_t(g["gate"]) if "gate" in g else "None"
        beta = rep_t(g["beta"]) if "beta" in g else "None"
        self.line(f"_, state[{group.attr!r}] = self.{group.attr}(state[{group.attr!r}], "
                  f"keys={rep(g['k'])}, target={target}, lr={lr}, gate={gate}, beta={beta}, "
                  f"query=None, out_grad={grad}, flush=flush)")

    # -- the class --
    def _in_a_loop(self, name: str) -> None:
        """A box inside a chunk loop is read at its chunk-start state between its updates, which
        the delta rule and linear attention (a whole call's tokens at once) do not keep: such a
        box runs the chunk-start rule instead (the general rule for a gradient at the gated
        state), one token per piece -- the same recurrence (tests/conformance/
        test_conf_reference_rules.py). The module's lowering list shows the change."""
        ref = self.refs[name]
        p = ref.plan
        if p.rule not in ("delta_rule_chunked", "linear_attn_chunked"):
            return
        retained = p.retention is not None and p.retention.grad_at == "retained"
        rule = "memory_general" if retained else "deep_memory_chunked"
        ref.plan = BoxPlan(p.box, rule, f"{p.rule} read inside a chunk loop: {rule} at the "
                           "chunk-start state, token by token", objective=p.objective,
                           retention=p.retention, optimizer=p.optimizer, lss=p.lss)
        self.plans[self.qualnames[name]] = ref.plan

    def generate(self) -> str:
        units = self.schedule()
        for u in units:
            for name in u.boxes if u.period else ():
                self._in_a_loop(name)
        names: dict[str, str] = {"x": "x"}
        for u in units:
            if u.period:
                self.loop(u, names)
            else:
                self.statement(self.block.statements[u.stmts[0]], names, in_loop=False)
        for ref in self.refs.values():
            if not hasattr(ref, "ctor"):
                raise NestError.at(ref.info.pos, f"box `{ref.info.name}` is never read, so it never "
                                   "learns from anything", hint=f"read it in a statement of block "
                                   f"`{self.block.name}`")
        for em in self._emitters:
            for key in em.state_keys:
                self._conv_state(key)
        for qual, attr in self.subs.items():
            self.state_lines.append(f"{attr!r}: self.{attr}.initial_state(batch)")
        return self._class_text()

    def _class_text(self) -> str:
        cls = self.classes[self.block.name]
        doc = f"block {self.block.name} ({self.block.pos.file}:{self.block.pos.line})"
        out = [f"class {cls}(nn.Module):", f'    """{one_line(doc)}"""', ""]
        sites = [f"        ({name!r}, {width})," for name, width, _ in self.lss_sites]
        periods = [f"        ({name!r}, {period})," for name, _, period in self.lss_sites]
        moved = [f"        ({name!r}, {why!r})," for name, why in self.lss_moved_by_zero]
        for qual, attr in self.subs.items():
            sites.append(f"        *{self.classes[qual]}.LSS_SITES,")
            periods.append(f"        *{self.classes[qual]}.LSS_PERIODS,")
            moved.append(f"        *{self.classes[qual]}.LSS_MOVED_BY_ZERO,")
        out.append("    LSS_SITES = (" + ("\n" + "\n".join(sites) + "\n    )" if sites else ")"))
        # the chunk size of each lss box, in tokens (signals that see no later target need it)
        out.append("    LSS_PERIODS = (" + ("\n" + "\n".join(periods) + "\n    )" if periods else ")"))
        # lss boxes a zero signal still moves off their initial state, and why (a shared first
        # pass, nestc.runtime.train.make_loss_fns, relies on zero signals moving none)
        out.append("    LSS_MOVED_BY_ZERO = (" + ("\n" + "\n".join(moved) + "\n    )" if moved else ")"))
        out += ["", "    def __init__(self):", "        super().__init__()"]
        out += ["        " + line for line in self.inits] or ["        pass"]
        out += ["", "    def initial_state(self, batch):", "        return {"]
        out += [f"            {line}," for line in self.state_lines]
        out += ["        }", "", "    def forward(self, x, state, ctx):", "        state = dict(state)"]
        if self.uses_x_in:
            out.append("        x_in = x  # the block's input, as box generators see `x`")
        out += self.body
        out += ["        return x, state"]
        out += self.methods
        out += [""]
        return "\n".join(out)


def _mentions_m(e: ir.Expr) -> bool:
    return any(c.func == "M" for c in ir.calls_in(e))


def _hoist_stream_parts(e: ir.Expr, fn) -> ir.Expr:
    """`e` with each largest part free of M replaced by fn(part) (fn returns the part itself to
    keep it). Nodes are copied only where something below them changed: the code generator finds
    the widths the resolver inferred by node identity."""
    if not _mentions_m(e):
        return fn(e)
    if isinstance(e, ir.Call):
        args = tuple(_hoist_stream_parts(a, fn) for a in e.args)
        kwargs = tuple(k if (v := _hoist_stream_parts(k.value, fn)) is k.value else k.model_copy(update={"value": v})
                       for k in e.kwargs)
        if all(a is b for a, b in zip(args, e.args)) and all(a is b for a, b in zip(kwargs, e.kwargs)):
            return e
        return e.model_copy(update={"args": args, "kwargs": kwargs})
    fields = {ir.BinOp: ("left", "right"), ir.UnaryOp: ("operand",), ir.IfExpr: ("cond", "then", "orelse")}
    for kind, names in fields.items():
        if isinstance(e, kind):
            new = {k: _hoist_stream_parts(getattr(e, k), fn) for k in names}
            return e if all(new[k] is getattr(e, k) for k in names) else e.model_copy(update=new)
    return e


def _own_output(values: ir.Expr | None) -> tuple[ir.Expr, bool] | None:
    """(e, stop) when `values` is M(e) or stop_grad(M(e)) with e free of M: self-generated values
    the runtime takes as `mem.SelfValues(e)`; None for any other expression (a function of the
    weights then)."""
    stop = isinstance(values, ir.Call) and values.func == "stop_grad" and len(values.args) == 1
    inner = values.args[0] if stop else values
    if (isinstance(inner, ir.Call) and inner.func == "M" and len(inner.args) == 1 and not inner.kwargs
            and not _mentions_m(inner.args[0])):
        return inner.args[0], stop
    return None


def _moved_by_zero_signal(plan, gate: str) -> str | None:
    """Why a zero local surprise signal would still change a deep memory (None when it leaves it
    at its initial state): only the dot objective's gradient vanishes with its target, and a
    retention gate or DGD's decay changes the state without any gradient."""
    obj = plan.objective
    if obj is None or obj.kind != "dot":
        return f"its objective ({obj.kind if obj else 'none'}) has a gradient at a zero signal"
    if gate != "None":
        return "its retention gate decays the state without a signal"
    opt = plan.optimizer.kind if plan.optimizer else "gd"
    if opt not in ("gd", "momentum"):
        return f"its optimizer ({opt}) changes the state without a signal"
    return None


def _mentions_lss(e: ir.Expr) -> bool:
    return any(n.id == "lss" for n in ir.names_in(e))


__all__ = ["BlockGen", "class_name"]
