"""Training metrics: an append-only JSONL log, a tolerant reader and a PNG plot.

A log is one JSON object per line, e.g.::

    {"step": 10, "kind": "train", "loss": 2.3, "tokens_per_s": 1234.0, "levels_updated": {...}}
    {"step": 100, "kind": "eval", "loss": 2.1, "ppl": 8.1}

:class:`MetricsLog` writes and flushes every record as one line, so a crash loses at most the line
being written; :func:`read_metrics` ignores such a torn last line. Non-finite floats are written
the way Python's ``json`` does (``NaN``, ``Infinity``) so that a diverged loss is still recorded.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from nestc.atomic import replace_file
from nestc.diagnostics import NestError, Pos

__all__ = ["MetricsLog", "plot_metrics", "read_metrics"]


def _default(x: Any) -> Any:
    """JSON fallback for tensors / numpy scalars and arrays, paths and sets."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def _parse_lines(path: Path, text: str) -> tuple[list[dict], int]:
    """(records, byte length of the valid prefix to keep when appending)."""
    records: list[dict] = []
    lines = text.split("\n")
    ends_with_newline = text.endswith("\n")
    offset = 0
    keep = 0
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        line_bytes = len(line.encode("utf-8")) + (0 if last else 1)
        if last and line == "":
            break
        stripped = line.strip()
        if stripped:
            try:
                rec = json.loads(stripped)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                if last and not ends_with_newline and stripped.startswith("{"):
                    break  # a record torn by a crash mid-write: ignore it
                raise NestError.at(
                    Pos(file=str(path), line=i + 1, col=1),
                    f"this is not a metrics log (JSON Lines): line {i + 1} is not a JSON object ({e})",
                    hint="point at a metrics.jsonl written by nestc, or move this file out of the way",
                ) from None
            records.append(rec)
        offset += line_bytes
        keep = offset
    return records, keep


def _read_raw(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise NestError.at(
            Pos(file=str(path)),
            f"cannot read the metrics log: {e.strerror or e}",
            hint="check the path and permissions",
        ) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # a multi-byte character cut at the very end is a torn last line, not a foreign file
        if e.start >= len(raw) - 3 and b"\n" not in raw[e.start :]:
            return raw[: e.start].decode("utf-8", errors="replace")
        raise NestError.at(
            Pos(file=str(path), line=raw.count(b"\n", 0, e.start) + 1),
            "this is not a metrics log (JSON Lines): it is not UTF-8 text",
            hint="point at a metrics.jsonl written by nestc",
        ) from None


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL metrics log, in file order. A torn (truncated, unparsable,
    newline-less) last line is ignored; any other bad line is a :class:`NestError`."""
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise NestError.at(
            Pos(file=str(p)),
            "metrics log does not exist",
            hint="check the path; training writes metrics.jsonl into its output folder",
        )
    if p.is_dir():
        raise NestError.at(
            Pos(file=str(p)), "metrics log path is a folder", hint="point at the metrics.jsonl file inside it"
        )
    return _parse_lines(p, _read_raw(p))[0]


class MetricsLog:
    """Append-only JSONL writer: ``log.write({...})`` appends one line and flushes it.

    Opening an existing log checks that it is one (:class:`NestError` otherwise: nothing else is
    ever appended to) and cuts off a torn last line, so the next record starts on a fresh line.
    ``resume_step=k`` (for a run resumed from a checkpoint of step ``k``) also drops the records
    with ``step > k`` that the interrupted run wrote after that checkpoint (an atomic rewrite),
    so the log describes one consistent run. ``fsync=True`` also fsyncs every line (survives a
    power loss, not only a process crash). Usable as a context manager.
    """

    def __init__(self, path: str | os.PathLike, *, resume_step: int | None = None, fsync: bool = False) -> None:
        self.path = Path(os.fspath(path)).expanduser()
        self.fsync = fsync
        pos = Pos(file=str(self.path))
        if self.path.is_dir():
            raise NestError.at(pos, "metrics log path is a folder", hint="give a file name, e.g. `metrics.jsonl`")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size:
                text = _read_raw(self.path)
                records, keep = _parse_lines(self.path, text)
                if resume_step is not None and any(_step(r) > resume_step for r in records):
                    kept = [r for r in records if _step(r) <= resume_step]
                    data = "".join(_dumps(r) + "\n" for r in kept).encode("utf-8")
                    replace_file(self.path, data)
                elif keep != len(text.encode("utf-8")):
                    with open(self.path, "r+b") as f:
                        f.truncate(keep)
            self._f = open(self.path, "a", encoding="utf-8")
            size = self.path.stat().st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":  # a complete last record without its newline
                        self._f.write("\n")
                        self._f.flush()
        except OSError as e:
            raise NestError.at(
                pos,
                f"cannot open the metrics log for writing: {e.strerror or e}",
                hint="choose a writable output folder",
            ) from None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one JSON line and flush it."""
        line = _dumps(dict(record))
        if "\n" in line:  # cannot happen with json.dumps, but the format depends on it
            raise ValueError("metrics record serialised to more than one line")
        self._f.write(line + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, default=_default, separators=(", ", ": "))


def _step(r: Mapping[str, Any]) -> float:
    s = r.get("step")
    return s if isinstance(s, (int, float)) and not isinstance(s, bool) else -math.inf


def _series(records: Iterable[Mapping[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get("kind") != kind:
            continue
        s, v = r.get("step"), r.get(key)
        if isinstance(s, (int, float)) and isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(float(s))
            ys.append(float(v))
    return xs, ys


def _smooth(ys: list[float], span: int) -> list[float]:
    """Exponential moving average (bias-corrected) over finite values; NaN/Inf stay gaps."""
    alpha = 2.0 / (span + 1)
    out, avg, w = [], 0.0, 0.0
    for y in ys:
        if math.isfinite(y):
            avg = (1 - alpha) * avg + alpha * y
            w = (1 - alpha) * w + alpha
            out.append(avg / w)
        else:
            out.append(float("nan"))
    return out


def plot_metrics(
    records: Iterable[Mapping[str, Any]] | str | os.PathLike, out_png: str | os.PathLike, title: str | None = None
) -> Path:
    """Write a PNG of train and held-out loss vs step (and tokens/s below, when recorded).

    ``records``: metrics records, or the path of a metrics log. Rendered off-screen (matplotlib
    Agg canvas, no display and no pyplot state) and written atomically. Returns the PNG path.
    """
    if isinstance(records, (str, os.PathLike)):
        records = read_metrics(records)
    records = list(records)
    out = Path(os.fspath(out_png)).expanduser()
    tx, ty = _series(records, "train", "loss")
    ex, ey = _series(records, "eval", "loss")
    sx, sy = _series(records, "train", "tokens_per_s")
    if not tx and not ex:
        raise NestError.at(
            Pos(file=str(out)),
            f"nothing to plot: none of the {len(records)} metrics records is a train or eval record with a loss",
            hint='records need "step", "kind" ("train" or "eval") and "loss"',
        )

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 2 if sx else 1
    fig = Figure(figsize=(8, 3.4 * panels + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    if tx:
        if len(tx) > 50:
            ax.plot(tx, ty, color="tab:blue", alpha=0.25, linewidth=0.8)
            smooth = _smooth(ty, max(5, len(tx) // 50))
            ax.plot(tx, smooth, color="tab:blue", linewidth=1.5, label="train loss (smoothed)")
        else:
            ax.plot(tx, ty, color="tab:blue", linewidth=1.2, label="train loss")
    if ex:
        ax.plot(ex, ey, color="tab:orange", marker="o", markersize=3.5, linewidth=1.5, label="held-out loss")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    if sx:
        axes[1].plot(sx, sy, color="tab:green", linewidth=1.0)
        axes[1].set_ylabel("tokens/s")
        axes[1].grid(True, alpha=0.3)
    axes[-1].set_xlabel("step")

    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        replace_file(out, buf.getvalue())
    except OSError as e:
        raise NestError.at(
            Pos(file=str(out)), f"cannot write the plot: {e.strerror or e}", hint="choose a writable output folder"
        ) from None
    return out
