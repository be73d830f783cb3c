"""What `nestc bench` shows while it runs: which of its processes is at work and on what.

A benchmark of Hope takes over ten minutes (its cold compile alone about five on two threads),
and its table comes at the end. Meanwhile the progress reports of `runtime/bench.py`'s child
processes arrive here, one `(stage, event)` at a time. On a terminal they drive a live line on
stderr (the stage, what it is doing, steps done, time in it), gone when the table prints; in a
log (stderr not a terminal) each new phase gets a line, and a finished phase its time, so a CI
log says how long the compile took before the table does.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .runtime.bench import STAGES


class BenchProgress:
    """A context manager; the instance is `bench`'s `on_progress(stage, event)`."""

    def __init__(self, console: Console, live: bool | None = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                            transient=True) if self.live else None
        self.task = None
        self.phase: tuple[str, str] | None = None  # (stage, what) now running
        self.phase_start = 0.0

    def __enter__(self) -> "BenchProgress":
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
        elif exc[0] is None:
            self._end_phase()

    def __call__(self, stage: str, event: dict) -> None:
        what, done, total = event["what"], event.get("done", 0), event.get("total")
        label = STAGES.get(stage, stage)
        if (stage, what) != self.phase:
            self._end_phase()
            self.phase, self.phase_start = (stage, what), time.perf_counter()
            if self.bar is None:
                steps = f" ({total})" if total else ""
                self.console.print(f"nestc bench: {label}: {what}{steps}", highlight=False)
            else:
                if self.task is not None:
                    self.bar.remove_task(self.task)
                self.task = self.bar.add_task(f"{label}: {what}", total=total)
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)

    def _end_phase(self) -> None:
        """In a log, a phase that took a while gets its time (a compile's, above all)."""
        if self.bar is None and self.phase is not None:
            took = time.perf_counter() - self.phase_start
            if took >= 1.0:
                stage, what = self.phase
                self.console.print(f"nestc bench: {STAGES.get(stage, stage)}: {what}: {took:.1f} s",
                                   highlight=False)
        self.phase = None
