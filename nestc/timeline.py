"""`nestc graph SPEC --timeline RUN`: when each level of a spec updated during a training run.

The run's metrics log (``metrics.jsonl``, written by `nestc train`) records, for every training
step, how often each box updated in that step (``levels_updated``: box name -> count; a box is a
model box's qualified name such as ``hope_layer.cms_sequential.cms_fast`` or an optimizer box such
as ``adamw.W``). This view lays those counts out against the level graph: one row per level
(slowest first, as `nestc graph` orders them), one column per logged step -- or per bucket of
steps when there are more than fit -- with a mark where the level updated, the level's total
number of updates and its updates per step. A level of every C steps shows a mark every C
columns; an in-context level of every C tokens updates T/C times in every step (T: the
sequence length).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .diagnostics import NestError, Pos
from .levels import LevelGraph

MAX_COLUMNS = 60
UPDATED, IDLE, SKIPPED = "█", "·", "×"
PARTIAL = "▁▂▃▄▅▆▇"  # a bucket in which the level updated in some of its steps (by fraction)

__all__ = ["MAX_COLUMNS", "load_run", "render_timeline", "timeline_rows"]


def _log_path(run: str | os.PathLike) -> Path:
    p = Path(os.fspath(run)).expanduser()
    if p.is_dir():
        log = p / "metrics.jsonl"
        if not log.is_file():
            raise NestError.at(Pos(file=str(p)), "this folder holds no metrics log (metrics.jsonl)",
                               hint="point --timeline at a run folder written by `nestc train --out "
                                    "FOLDER`, or at its metrics.jsonl")
        return log
    if not p.exists():
        raise NestError.at(Pos(file=str(p)), "no such run folder or metrics log",
                           hint="point --timeline at a run folder written by `nestc train --out "
                                "FOLDER`, or at its metrics.jsonl")
    return p


def load_run(run: str | os.PathLike, spec: str | None = None) -> tuple[Path, dict, list[dict]]:
    """(log path, the run record, the other records) of a `nestc train` metrics log.

    Raises NestError when the path holds no such log, or (with `spec`) when the run trained
    another spec."""
    from .runtime.metrics import read_metrics

    path = _log_path(run)
    records = read_metrics(path)
    pos = Pos(file=str(path))
    if not records:
        raise NestError.at(pos, "the metrics log is empty: the run has not started",
                           hint="wait for `nestc train` to log its first step")
    head = records[0]
    if head.get("kind") != "run" or not isinstance(head.get("spec"), str):
        raise NestError.at(pos, "this is not the metrics log of a `nestc train` run: its first "
                                "record is not a run record (kind \"run\" with the spec's name)",
                           hint="point --timeline at a run folder written by `nestc train`")
    if spec is not None and head["spec"] != spec:
        raise NestError.at(pos, f"this run trained spec `{head['spec']}`, not `{spec}`",
                           hint=f"draw its timeline with `nestc graph {head['spec']} --timeline {run}`")
    return path, head, records[1:]


def _steps(records: list[dict]) -> tuple[list[int], dict[int, dict[str, int]], set[int]]:
    """(logged steps in order, {step: levels_updated}, skipped steps)."""
    updates: dict[int, dict[str, int]] = {}
    skipped: set[int] = set()
    for r in records:
        step = r.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        if r.get("kind") == "train":
            lv = r.get("levels_updated")
            updates[step] = {str(k): int(v) for k, v in lv.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)} \
                if isinstance(lv, dict) else {}
            skipped.discard(step)
        elif r.get("kind") == "nonfinite" and r.get("action") == "skip" and step not in updates:
            skipped.add(step)
    return sorted(set(updates) | skipped), updates, skipped


def timeline_rows(lg: LevelGraph, records: list[dict]) -> list[dict[str, Any]]:
    """One dict per level of `lg` (slowest first) and one per logged box the graph lacks:
    boxes, frequency, per-step counts (None: the level is not logged), total."""
    steps, updates, skipped = _steps(records)
    logged = set().union(*updates.values()) if updates else set()
    rows = []
    in_graph = set()
    for i, level in enumerate(lg.levels, 1):
        in_graph |= set(level)
        names = [n for n in level if n in logged]
        node = lg.graph.nodes[level[0]]
        counts = None
        if names:
            counts = [max(updates.get(s, {}).get(n, 0) for n in names) if s not in skipped else None
                      for s in steps]
        rows.append({"level": str(i), "boxes": list(level), "frequency": node["frequency"],
                     "kind": node["kind"], "unit": node["unit"], "period": node["period"],
                     "counts": counts})
    extra = sorted(logged - in_graph)
    for n in extra:  # e.g. the boxes of an --optimizer override
        rows.append({"level": "—", "boxes": [n], "frequency": "not in this graph", "kind": "",
                     "unit": "", "period": 0, "counts": [updates.get(s, {}).get(n, 0) if s not in skipped else None
                                for s in steps]})
    return rows


def _buckets(n: int, max_columns: int) -> list[tuple[int, int]]:
    """[start, end) index ranges of at most `max_columns` equal buckets over n items."""
    if n <= max_columns:
        return [(i, i + 1) for i in range(n)]
    size = math.ceil(n / max_columns)
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def _strip(counts: list[int | None], buckets: list[tuple[int, int]]) -> Text:
    t = Text()
    for a, b in buckets:
        cell = counts[a:b]
        done = [c for c in cell if c is not None]
        if not done:
            t.append(SKIPPED, style="red")
            continue
        hit = sum(1 for c in done if c > 0)
        if hit == 0:
            t.append(IDLE, style="dim")
        elif hit == len(cell):
            t.append(UPDATED, style="green")
        else:
            frac = hit / len(cell)
            t.append(PARTIAL[min(len(PARTIAL) - 1, int(frac * len(PARTIAL)))], style="green")
    return t


def _rate(counts: list[int | None]) -> str:
    """Updates per step, as observed: `16` (in context), `1`, or `1 per 4 steps` (a level that
    updated once every 4 steps: counted between its updates, so a run that stops between two
    updates still shows it)."""
    done = [c for c in counts if c is not None]  # skipped steps do not count
    if not done:
        return "—"
    total = sum(done)
    if total == 0:
        return "0"
    if len(set(done)) == 1:
        return str(done[0])
    hits = [i for i, c in enumerate(done) if c]
    gaps = {b - a for a, b in zip(hits, hits[1:])}
    if len(hits) >= 2 and len(gaps) == 1 and all(done[i] == 1 for i in hits):
        return f"1 per {gaps.pop()} steps"
    r = Fraction(total, len(done))
    if r.denominator == 1:
        return str(r.numerator)
    if r.numerator == 1:
        return f"1 per {r.denominator} steps"
    return f"{float(r):.2f}"


def _disagrees(row: dict[str, Any], seq_len: int | None) -> bool:
    """Whether a level's logged updates contradict the frequency the graph gives it (the run
    was trained with other --set values than the graph was drawn with)."""
    done = [c for c in row["counts"] or [] if c is not None]
    period = row.get("period") or 0
    if not done or period < 1:
        return False
    if row["unit"] == "token" and seq_len:
        return any(c != seq_len // period for c in done)
    if row["unit"] == "step":
        return abs(sum(done) - len(done) / period) >= 1
    return False


def render_timeline(lg: LevelGraph, run: str | os.PathLike, max_columns: int = MAX_COLUMNS):
    """A rich renderable: when each level of `lg` updated in the run at `run` (a run folder
    or its metrics.jsonl)."""
    path, head, records = load_run(run, lg.program.name)
    steps, _updates, skipped = _steps(records)
    rows = timeline_rows(lg, records)
    cfg = head.get("config") if isinstance(head.get("config"), dict) else {}
    buckets = _buckets(len(steps), max_columns)
    per = buckets[0][1] - buckets[0][0] if buckets else 1

    title = Text()
    title.append(f"{lg.program.name}", style="bold")
    title.append(" — when each level updated, levels from slowest to fastest", style="dim")
    info = Text(style="dim")
    info.append(f"run {path}")
    if steps:
        info.append(f" · steps {steps[0]}–{steps[-1]} ({len(steps)} logged")
        info.append(f", {per} per column)" if per > 1 else ", one per column)")
    else:
        info.append(" · no training step logged yet")
    if cfg.get("seq_len"):
        info.append(f" · {cfg['seq_len']} tokens per sequence")
    if cfg.get("optimizer"):
        info.append(f" · optimizer {cfg['optimizer']} (--optimizer)")
    if skipped:
        info.append(f" · {len(skipped)} step{'s' if len(skipped) != 1 else ''} skipped ({SKIPPED})")

    table = Table(header_style="bold", show_edge=False, pad_edge=False, box=None, padding=(0, 2))
    table.add_column("level", justify="right", style="bold cyan", no_wrap=True)
    table.add_column("boxes")
    table.add_column("frequency", style="cyan")
    table.add_column("steps" if per == 1 else f"steps ({per} per column)", no_wrap=True)
    table.add_column("updates", justify="right", no_wrap=True)
    table.add_column("per step", justify="right", no_wrap=True)
    for r in rows:
        boxes = Text(", ".join(r["boxes"]), style="bold")
        if r["counts"] is None:
            why = "non-parametric, recomputed at every token" if r["kind"] == "attention" \
                else "not in this run's log"
            table.add_row(r["level"], boxes, r["frequency"], Text(why, style="dim italic"), "—", "—")
            continue
        total = sum(c for c in r["counts"] if c is not None)
        table.add_row(r["level"], boxes, r["frequency"], _strip(r["counts"], buckets), str(total),
                      _rate(r["counts"]))
    odd = [r for r in rows if _disagrees(r, cfg.get("seq_len"))]
    legend = Text(f"{UPDATED} updated   {IDLE} did not update", style="dim")
    if per > 1:
        legend.append(f"   {PARTIAL[1]}…{PARTIAL[-1]} updated in some of the column's steps", style="dim")
    if skipped:
        legend.append(f"   {SKIPPED} skipped (non-finite)", style="dim")
    parts = [title, info, Text(), table, Text(), legend]
    if odd:
        names = ", ".join(f"level {r['level']}" for r in odd)
        parts.append(Text(f"warning: the run's log disagrees with the frequencies of {names}: "
                          "was it trained with other --set values? Pass the run's --set values "
                          "to `nestc graph` as well.", style="yellow"))
    return Group(*parts)
