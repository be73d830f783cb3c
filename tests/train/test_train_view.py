"""`nestc train`'s live panel: the time left comes from the steps after the run's first one (a
compiled step's first step is its compile; a resumed run's earlier steps took no time here), and
a compiled run says it is compiling until its first step is done."""

from __future__ import annotations

from rich.console import Console

import nestc.runtime_cli as runtime_cli
from nestc.runtime_cli import COMPILING, TrainView

from train_helpers import TRANSFORMER, nestc_cli, sets


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def render(view: TrainView) -> str:
    console = Console(record=True, width=400, force_terminal=False)
    console.print(view)
    return console.export_text()


def step(n: int) -> dict:
    return {"step": n, "loss": 2.0, "ppl": 7.4, "lr": 1e-3, "tokens_per_s": 100.0, "levels_updated": {}}


def test_time_left_leaves_out_the_first_step(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(runtime_cli.time, "perf_counter", clock)
    view = TrainView(100, "hope", compiling=True)
    assert COMPILING in " ".join(render(view).split())
    clock.now += 300.0  # the first step: a 300 s cold compile
    view.update(step(1))
    assert view.seconds_left(1) is None
    text = render(view)
    assert "after the next step" in text and "compiling" not in text
    clock.now += 4.0  # then 2 s per step
    view.update(step(3))
    assert view.seconds_left(3) == 97 * 2.0  # not (304 / 3) * 97


def test_time_left_after_resume(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(runtime_cli.time, "perf_counter", clock)
    view = TrainView(300, "titans")  # resumed at step 200: its steps are not this run's
    clock.now += 1.0
    view.update(step(201))
    clock.now += 10.0
    view.update(step(206))
    assert view.seconds_left(206) == 94 * 2.0
    assert "compiling" not in render(view)  # not a compiled run
    assert "~ 188s left" in render(view)


def test_a_skipped_step_counts_as_done(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(runtime_cli.time, "perf_counter", clock)
    view = TrainView(10, "hope", compiling=True)
    clock.now += 50.0
    view.update({"kind": "nonfinite", "where": "the loss", "step": 1})
    assert "compiling" not in render(view)
    clock.now += 3.0
    view.update(step(2))
    assert view.seconds_left(2) == 8 * 3.0


def test_a_compiled_train_run_says_it_is_compiling(tmp_path):
    """Through the CLI (not a terminal: the note is printed before the first step)."""
    r = nestc_cli("train", "transformer", "--compile", "--steps", "2", "--batch", "2", "--seq-len", "16",
                  "--out", tmp_path / "run", *sets(TRANSFORMER))
    assert r.returncode == 0, r.stdout + r.stderr
    assert COMPILING in " ".join(r.stderr.split())
    r = nestc_cli("train", "transformer", "--steps", "1", "--batch", "2", "--seq-len", "16",
                  "--out", tmp_path / "eager", *sets(TRANSFORMER))
    assert r.returncode == 0 and "compiling" not in r.stderr, r.stderr
