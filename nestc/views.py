"""Terminal views (rich): diagnostics, the level tree, the spec list."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .diagnostics import Diagnostic, NestError
from .levels import LevelGraph


def render_diagnostic(d: Diagnostic) -> Text:
    color = "red" if d.severity == "error" else "yellow"
    t = Text()
    t.append(f"{d.severity}", style=f"bold {color}")
    t.append(f": {d.message}\n", style="bold")
    t.append("  --> ", style="blue")
    t.append(f"{d.pos}\n")
    ex = d.excerpt()
    if ex:
        src, caret = ex.split("\n")
        num = str(d.pos.line)
        pad = " " * len(num)
        t.append(f" {pad} |\n", style="blue")
        t.append(f" {num} | ", style="blue")
        t.append(src + "\n")
        t.append(f" {pad} | ", style="blue")
        t.append(caret + "\n", style=f"bold {color}")
    if d.hint:
        t.append("  = hint: ", style="cyan")
        t.append(d.hint + "\n")
    return t


def print_error(console: Console, err: NestError) -> None:
    errors = [d for d in err.diagnostics if d.severity == "error"]
    for d in err.diagnostics:
        console.print(render_diagnostic(d))
    n = len(errors)
    console.print(Text(f"{n} error{'s' if n != 1 else ''}", style="bold red"))


def print_warnings(console: Console, warnings: list[Diagnostic]) -> None:
    for d in warnings:
        console.print(render_diagnostic(d))


def _fmt_params(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def level_tree(lg: LevelGraph) -> Tree:
    p = lg.program
    title = Text(p.name, style="bold")
    if p.title:
        title.append(f" — {p.title}", style="dim")
    title.append(f"   (levels from slowest to fastest; context length {p.seq_len} tokens)", style="dim")
    root = Tree(title)
    g = lg.graph
    for i, lv in enumerate(lg.levels, 1):
        freq = g.nodes[lv[0]]["frequency"]
        branch = root.add(Text.assemble(("level ", "bold cyan"), (str(i), "bold cyan"),
                                        (f" · {freq}", "cyan")))
        for n in lv:
            d = g.nodes[n]
            head = Text()
            head.append(n, style="bold green" if d["kind"] == "memory" else
                        ("bold magenta" if d["kind"] == "attention" else "bold yellow"))
            head.append(f"  {d['kind']}", style="dim")
            if d.get("count", 1) > 1:
                head.append(f" ×{d['count']} layers", style="dim")
            if d.get("group"):
                head.append(f" (on {d['group']})", style="dim")
            node = branch.add(head)
            params = f" · {_fmt_params(d['params'])} params per sequence" if d["params"] else ""
            node.add(Text.assemble(("state      ", "dim"), d["state"], params))
            node.add(Text.assemble(("context    ", "dim"), d["context"]))
            if d["kind"] != "weights" or d["objective"] not in ("—", ""):
                node.add(Text.assemble(("objective  ", "dim"), d["objective"]))
            node.add(Text.assemble(("optimizer  ", "dim"), d["optimizer"]))
            if d.get("retention") not in (None, "none"):
                node.add(Text.assemble(("retention  ", "dim"), d["retention"]))
            if d["kind"] == "memory":
                extra = f"init {d['init']} · reset {d['reset']} · read {d['read']}"
                node.add(Text.assemble(("state life ", "dim"), extra))
    edges = root.add(Text("knowledge transfer", style="bold cyan"))
    for a, b, d in sorted(g.edges(data=True), key=lambda e: (e[0], e[1], e[2]["kind"])):
        style = {"generation": "green", "meta-init": "blue", "backprop": "red",
                 "stop-gradient": "bright_black"}.get(d["kind"], "white")
        edges.add(Text.assemble((a, "bold"), " → ", (b, "bold"), "  ", (d["kind"], style),
                                (f": {d['label']}", "dim")))
    return root


def specs_table(rows: list[tuple[str, str, str]]) -> Table:
    t = Table(title="built-in specs", show_lines=False, header_style="bold")
    t.add_column("name", style="bold green")
    t.add_column("kind")
    t.add_column("what it is")
    for name, kind, title in rows:
        t.add_row(name, kind, title)
    return t


def functions_table() -> Group:
    from .functions import FUNCTIONS, INIT_FORMS, NAMES, OPTIMIZER_FORMS, RETENTION_FORMS, STATE_FORMS

    names = Table(title="names", header_style="bold")
    names.add_column("name", style="green")
    names.add_column("where")
    names.add_column("meaning")
    for name, (where, doc) in NAMES.items():
        names.add_row(name, where, doc)
    tables = [names]
    for title, table in (("functions", FUNCTIONS), ("state", STATE_FORMS), ("init", INIT_FORMS),
                         ("retention", RETENTION_FORMS), ("optimizer", OPTIMIZER_FORMS)):
        t = Table(title=title, header_style="bold")
        t.add_column("signature", style="green")
        if title == "functions":
            t.add_column("where")
        t.add_column("meaning")
        for fn in table.values():
            if title == "functions":
                t.add_row(fn.signature(), ", ".join(sorted(fn.scopes)), fn.doc)
            else:
                t.add_row(fn.signature(), fn.doc)
        tables.append(t)
    return Group(*tables)
