"""The level graph: boxes, typed knowledge-transfer edges, and levels derived from frequencies.

Levels are never declared; they follow from NL Def. 2:

* a box that updates less often sits in a higher (slower) level;
* at equal frequency, a box whose update needs another box's *current* state sits above it
  (M3: the weights need the momentum's state of this step, so the momentum is one level below);
* equal-frequency boxes that do not need each other share a level (Adam's two moments).

Edges carry NL §1.6's kinds of knowledge transfer:

* ``conditioning``  -- a box reads another's output or state (parametric, or non-parametric when
  the other is attention); ``timing`` says whether the current or the previous state is read;
* ``backprop``      -- one gradient flow through both (a box's output feeds another box);
  ``stop-gradient`` where the spec says stop_grad;
* ``meta-init``     -- the slower level learns the box's initial state (MAML-style);
* ``generation``    -- one box generates the other's context (the weights generate the gradients
  an optimizer box learns from; the model's loss generates local surprise signals).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import networkx as nx

from . import ir
from .diagnostics import Collector, NestError
from .functions import LEARNED_FUNCTIONS
from .printer import expr_str
from .program import BoxInfo, Frequency, Program

OUTER = "outer"  # the model's own weights when no optimizer spec names them


@dataclass
class LevelGraph:
    program: Program
    graph: nx.MultiDiGraph
    levels: list[list[str]]  # slowest first; each a list of node names

    def level_of(self, node: str) -> int:
        for i, lv in enumerate(self.levels, 1):
            if node in lv:
                return i
        raise KeyError(node)

    # ------------------------------------------------------------------ exports
    def to_json(self) -> dict[str, Any]:
        nodes = []
        for name in self.graph.nodes:
            d = self.graph.nodes[name]
            nodes.append({"name": name, "level": self.level_of(name), **{k: v for k, v in d.items()
                                                                       if k != "info"}})
        edges = [{"from": a, "to": b, **d} for a, b, d in self.graph.edges(data=True)]
        return {"spec": self.program.name, "title": self.program.title,
                "seq_len": self.program.seq_len,
                "levels": [{"level": i, "boxes": lv} for i, lv in enumerate(self.levels, 1)],
                "nodes": nodes, "edges": edges}

    def to_dot(self) -> str:
        lines = [f'digraph "{_dot_escape(self.program.name)}" {{', "  rankdir=TB;",
                 '  node [shape=box, style="rounded", fontname="Helvetica"];',
                 '  edge [fontname="Helvetica", fontsize=10];']
        for i, lv in enumerate(self.levels, 1):
            freq = self.graph.nodes[lv[0]]["frequency"]
            lines.append(f'  subgraph "cluster_level_{i}" {{')
            lines.append(f'    label="level {i}: {_dot_escape(freq)}"; style=dashed;')
            for n in lv:
                d = self.graph.nodes[n]
                label = f"{n}\\n{d['state']}" + (f" ×{d['count']}" if d.get("count", 1) > 1 else "")
                lines.append(f'    "{_dot_escape(n)}" [label="{_dot_escape(label)}"];')
            lines.append("  }")
        styles = {"conditioning": "solid", "backprop": "bold", "stop-gradient": "dotted",
                  "meta-init": "dashed", "generation": "solid"}
        for a, b, d in self.graph.edges(data=True):
            kind = d["kind"]
            color = {"generation": "darkgreen", "meta-init": "blue", "backprop": "red",
                     "stop-gradient": "gray"}.get(kind, "black")
            lines.append(f'  "{_dot_escape(a)}" -> "{_dot_escape(b)}" [label="{_dot_escape(d["label"])}", '
                         f'style={styles.get(kind, "solid")}, color={color}];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        ids = {n: f"n{i}" for i, n in enumerate(self.graph.nodes)}
        lines = ["flowchart TB"]
        for i, lv in enumerate(self.levels, 1):
            freq = self.graph.nodes[lv[0]]["frequency"]
            lines.append(f'  subgraph L{i}["level {i}: {_mm_escape(freq)}"]')
            for n in lv:
                d = self.graph.nodes[n]
                lines.append(f'    {ids[n]}["{_mm_escape(n)}<br/>{_mm_escape(d["state"])}"]')
            lines.append("  end")
        arrows = {"conditioning": "-->", "backprop": "==>", "stop-gradient": "-.->",
                  "meta-init": "-.->", "generation": "-->"}
        for a, b, d in self.graph.edges(data=True):
            lines.append(f'  {ids[a]} {arrows.get(d["kind"], "-->")}|"{_mm_escape(d["label"])}"| {ids[b]}')
        return "\n".join(lines) + "\n"


def _dot_escape(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def _mm_escape(s: str) -> str:
    return str(s).replace('"', "'").replace("\n", " ").replace("|", "/")


# ---------------------------------------------------------------------------------------------
# building the graph
# ---------------------------------------------------------------------------------------------


def _node_attrs(b: BoxInfo, prefix_count: int | None = None) -> dict[str, Any]:
    return {
        "kind": b.kind,
        "box": b.name,
        "block": b.block,
        "count": b.count if prefix_count is None else prefix_count,
        "heads": b.heads,
        "state": b.state.shape_str(b.heads),
        "params": b.param_count(),
        "frequency": str(b.freq),
        "unit": b.freq.unit,
        "period": b.freq.period,
        "inner_steps": b.freq.inner,
        "context": b.context_str(),
        "objective": b.objective_str(),
        "optimizer": b.optimizer_str(),
        "retention": expr_str(b.retention) if b.retention is not None else "none",
        "init": b.init[0] + (f"({b.init[1]})" if b.init[1] is not None and b.init[0] != "checkpoint" else ""),
        "reset": str(b.reset),
        "read": b.read if b.kind == "memory" else "",
        "line": b.pos.line,
        "col": b.pos.col,
        "file": b.pos.file,
    }


def _uses_learned_layers(b: BoxInfo) -> bool:
    exprs = [b.keys, b.values, b.query, b.lr, b.retention, b.optimizer, *b.contexts.values()]
    return any(c.func in LEARNED_FUNCTIONS for e in exprs if e is not None for c in ir.calls_in(e))


def build(program: Program, errors: Collector | None = None) -> LevelGraph:
    own_errors = errors is None
    errors = errors or Collector(program.sources)
    g = nx.MultiDiGraph()
    seq_len = program.seq_len

    # the outer level: the optimizer specs' boxes (their weights box is the model's weights)
    weights_nodes: list[str] = []
    opt_node: dict[tuple[str, str], str] = {}
    for opt in program.optimizers:
        for name, b in opt.boxes.items():
            node = f"{opt.name}.{name}"
            opt_node[(opt.name, name)] = node
            attrs = _node_attrs(b, prefix_count=1)
            attrs["optimizer_spec"] = opt.name
            attrs["group"] = opt.group
            if b.kind == "weights":
                weights_nodes.append(node)
                attrs["context"] = "training data (next-token loss)"
            g.add_node(node, **attrs)
        for name, b in opt.boxes.items():
            for target, role, stop in b.refs:
                if target == name:
                    continue
                _add_ref_edge(g, opt_node[(opt.name, target)], opt_node[(opt.name, name)], role,
                              stop, opt.boxes[target])
    # top-level boxes of this spec (an optimizer spec's own boxes, or extra model-level boxes)
    for q, b in program.boxes.items():
        if b.block is None:
            g.add_node(q, **_node_attrs(b))
            if b.kind == "weights":
                weights_nodes.append(q)
    if program.layers and not weights_nodes:
        g.add_node(OUTER, kind="weights", box=OUTER, block=None, count=1, heads=1,
                   state="the model's parameters", params=0, frequency="every 1 step",
                   unit="step", period=1, inner_steps=1, context="training data (next-token loss)",
                   objective="next-token cross-entropy", optimizer="(set by the train section or "
                   "--optimizer)", retention="none", init="random", reset="never", read="",
                   line=0, file=program.path)
        weights_nodes.append(OUTER)
    outer = weights_nodes[0] if weights_nodes else None

    for q, b in program.boxes.items():
        if b.block is None:
            for target, role, stop in b.refs:
                if target != q and target in program.boxes:
                    _add_ref_edge(g, target, q, role, stop, program.boxes[target])
            continue
        g.add_node(q, **_node_attrs(b))
    for q, b in program.boxes.items():
        if b.block is None:
            continue
        for target, role, stop in b.refs:
            if target == q or target not in program.boxes:
                continue
            _add_ref_edge(g, target, q, role, stop, program.boxes[target])
        if outer is not None and b.kind == "memory":
            if b.init[0] == "meta" and b.in_context:  # a level of every N steps keeps its weights
                g.add_edge(outer, q, kind="meta-init", timing="previous", grad="backprop",
                           label="meta-learned init")
            if any(n.id == "lss" for e in [b.values, *b.contexts.values()] if e is not None
                   for n in ir.names_in(e)):
                g.add_edge(outer, q, kind="generation", timing="previous", grad="stop-gradient",
                           label="generates context (local surprise)")
        if outer is not None and b.in_context and _uses_learned_layers(b):
            g.add_edge(outer, q, kind="conditioning", timing="previous", grad="backprop",
                       label="parametric: slow projections")
    # dataflow through blocks: a box whose read input comes from another box's output
    for blk in program.blocks.values():
        for a, b, stop in _block_feeds(program, blk):
            if not g.has_edge(a, b):
                g.add_edge(a, b, kind="stop-gradient" if stop else "backprop", timing="previous",
                           grad="stop-gradient" if stop else "backprop",
                           label="stop-gradient" if stop else "backprop: output feeds input")

    levels = _assign_levels(program, g, seq_len, errors)
    _check_nesting(program, g, errors)
    if own_errors:
        errors.raise_if_errors()
    return LevelGraph(program=program, graph=g, levels=levels)


def _add_ref_edge(g: nx.MultiDiGraph, src: str, dst: str, role: str, stop: bool, src_box: BoxInfo) -> None:
    """One edge per (source, target, kind, label): reading a box twice is one transfer."""
    before = g.number_of_edges(src, dst)
    _add_ref_edge_raw(g, src, dst, role, stop, src_box)
    if g.number_of_edges(src, dst) > before:
        new = list(g.get_edge_data(src, dst).items())[-1]
        for key, d in list(g.get_edge_data(src, dst).items())[:-1]:
            if d["kind"] == new[1]["kind"] and d["label"] == new[1]["label"]:
                g.remove_edge(src, dst, key=new[0])
                break


def _add_ref_edge_raw(g: nx.MultiDiGraph, src: str, dst: str, role: str, stop: bool, src_box: BoxInfo) -> None:
    if role == "context":
        g.add_edge(src, dst, kind="generation", timing="previous",
                   grad="stop-gradient" if stop else "backprop",
                   label="generates context (gradients)")
        return
    timing = "current" if role == "update" else "previous"
    if stop:
        g.add_edge(src, dst, kind="stop-gradient", timing=timing, grad="stop-gradient",
                   label="stop-gradient read")
        return
    np_ = src_box.kind == "attention"
    if timing == "current":
        what = ": current state"
    elif src_box.kind == "weights":
        what = ": previous state"
    else:
        what = ": reads output"
    label = ("non-parametric" if np_ else "parametric") + what
    g.add_edge(src, dst, kind="conditioning", timing=timing, grad="backprop", label=label,
               parametric=not np_)


def _block_feeds(program: Program, blk) -> list[tuple[str, str, bool]]:
    """(upstream box, box, stop) when a box's read argument depends on another box's output."""
    upstream: dict[str, set[tuple[str, bool]]] = {}  # stream name -> boxes whose output it carries
    x_up: set[tuple[str, bool]] = set()
    feeds = []
    local = {program.boxes[q].name: q for q in blk.boxes}

    def ups(e: ir.Expr, stop: bool = False) -> set[tuple[str, bool]]:
        out: set[tuple[str, bool]] = set()
        if isinstance(e, ir.Name):
            if e.id == "x":
                out |= {(b, s or stop) for b, s in x_up}
            elif e.id in upstream:
                out |= {(b, s or stop) for b, s in upstream[e.id]}
            return out
        if isinstance(e, ir.Call):
            inner_stop = stop or e.func == "stop_grad"
            args = list(e.args) + [k.value for k in e.kwargs]
            name = ir.read_name(e)
            box = name if name in local else None
            if box is not None:
                # everything the read takes in (its stream and, for attention, prefix tokens)
                src = set()
                for a in list(e.args[-1:]) + [k.value for k in e.kwargs]:
                    src |= ups(a, inner_stop)
                for b, s in src:
                    if b != local[box]:
                        feeds.append((b, local[box], s))
                return {(local[box], inner_stop)}
            for a in args:
                out |= ups(a, inner_stop)
            return out
        for child in _children(e):
            out |= ups(child, stop)
        return out

    for st in blk.statements:
        u = ups(st.value)
        if st.is_let:
            upstream[st.target] = u
        else:
            new = {(b, s) for b, s in u if (b, s) not in x_up}
            x_up = new or x_up
    return feeds


def _children(e: ir.Expr) -> list[ir.Expr]:
    if isinstance(e, ir.BinOp):
        return [e.left, e.right]
    if isinstance(e, ir.UnaryOp):
        return [e.operand]
    if isinstance(e, ir.IfExpr):
        return [e.cond, e.then, e.orelse]
    return []


def _rate(freq_unit: str, period: int, inner: int, seq_len: int) -> Fraction | float:
    if freq_unit == "inf":
        return float("inf")
    per = period if freq_unit == "token" else period * max(seq_len, 1)
    return Fraction(inner, per)


def _assign_levels(program: Program, g: nx.MultiDiGraph, seq_len: int, errors: Collector) -> list[list[str]]:
    rates = {n: _rate(d["unit"], d["period"], d["inner_steps"], seq_len) for n, d in g.nodes(data=True)}
    groups: dict[Any, list[str]] = {}
    for n, r in rates.items():
        groups.setdefault(r, []).append(n)
    levels: list[list[str]] = []
    for r in sorted(groups, key=lambda x: float(x)):
        members = groups[r]
        # edges inside the group where the target needs the source's current state
        needs = nx.DiGraph()
        needs.add_nodes_from(members)
        for a, b, d in g.edges(data=True):
            if a in needs and b in needs and a != b and d.get("timing") == "current" \
                    and d.get("grad") != "stop-gradient":
                needs.add_edge(a, b)
        cycles = list(nx.simple_cycles(needs))
        if cycles:
            # one report, the same on every run (networkx's cycle order depends on set order):
            # the shortest cycle, starting at the box declared first
            def where(n: str) -> tuple:
                return (g.nodes[n].get("line", 0), g.nodes[n].get("col", 0), n)

            def canonical(c: list[str]) -> list[str]:
                i = c.index(min(c, key=where))
                return c[i:] + c[:i]

            cyc = min((canonical(c) for c in cycles), key=lambda c: (len(c), [where(n) for n in c]))
            path = " -> ".join(cyc + [cyc[0]])
            node = g.nodes[cyc[0]]
            from .diagnostics import Pos

            errors.error(Pos(file=node.get("file", ""), line=node.get("line", 0),
                             col=node.get("col") or 1),
                         f"these boxes update at the same frequency and each needs the others' "
                         f"current state: {path}",
                         hint="give one of them another frequency, or read it through "
                              "stop_grad(...) so that it uses the previous state")
            levels.append(sorted(members))
            continue
        depth: dict[str, int] = {}
        for n in nx.topological_sort(needs):
            preds = list(needs.predecessors(n))
            depth[n] = 1 + max((depth[p] for p in preds), default=-1)
        by_depth: dict[int, list[str]] = {}
        for n, dpt in depth.items():
            by_depth.setdefault(dpt, []).append(n)
        # a box that needs others sits above them: deeper = slower = listed first
        for dpt in sorted(by_depth, reverse=True):
            levels.append(sorted(by_depth[dpt], key=lambda n: (g.nodes[n].get("line", 0), n)))
    return levels


def _check_nesting(program: Program, g: nx.MultiDiGraph, errors: Collector) -> None:
    """Chunk sizes of token-level boxes that exchange data must nest (one divides the other)."""
    from .diagnostics import Pos

    seen = set()
    for a, b, d in g.edges(data=True):
        na, nb = g.nodes[a], g.nodes[b]
        if na["unit"] != "token" or nb["unit"] != "token" or (a, b) in seen or (b, a) in seen:
            continue
        seen.add((a, b))
        pa, pb = na["period"], nb["period"]
        if pa % pb and pb % pa:
            errors.error(Pos(file=nb["file"], line=nb["line"], col=nb.get("col") or 1),
                         f"chunk sizes do not nest: `{b}` updates every {pb} tokens and `{a}`, "
                         f"which it exchanges data with, every {pa} tokens",
                         hint="make one chunk size divide the other (for example "
                              f"{min(pa, pb)} and {min(pa, pb) * max(1, round(max(pa, pb) / min(pa, pb)))})")


def describe_edges(lg: LevelGraph, node: str) -> list[str]:
    out = []
    for a, b, d in lg.graph.in_edges(node, data=True):
        out.append(f"← {a}: {d['label']}")
    return out


def json_dumps(lg: LevelGraph) -> str:
    return json.dumps(lg.to_json(), indent=2, default=str) + "\n"


__all__ = ["LevelGraph", "build", "json_dumps", "Frequency"]
