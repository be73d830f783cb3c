"""`nestc bench`: the table's rows as JSON, the chunk-loop mode reaching the compiled step's
process (and the first-pass mode), the progress its processes report while it runs, and a clean
error for a mode that does not exist. Tiny sizes: this is about plumbing,
not speed (timings are benchmarks, never assertions)."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest

from small_models import ADAM_CHUNKS
from train_helpers import assert_user_error, nestc_cli, sets

TINY_TITANS = {"d_model": "32", "heads": "2", "n_layers": "1", "chunk": "8"}


def test_bench_writes_eager_and_compiled_rows_with_the_loop_mode(tmp_path):
    loops = "region"  # not the defaults, so the rows show that the options reached the child process
    out = tmp_path / "bench.json"
    r = nestc_cli("bench", "titans", "--batch", "1", "--seq-len", "16", "--warmup", "0", "--iters", "2",
                  "--threads", "1", "--loops", loops, "--first-pass", "shared", "--json", out,
                  *sets(TINY_TITANS), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"chunk loops: {loops} | first pass: shared" in r.stdout
    res = json.loads(out.read_text())
    eager, compiled = res["rows"]
    assert (eager["mode"], eager["loops"], eager["first_pass"]) == ("eager", None, None)
    # what the child process ran
    assert (compiled["mode"], compiled["loops"], compiled["first_pass"]) == ("compiled", loops, "shared")
    assert res["overrides"] == TINY_TITANS and res["batch"] * res["seq_len"] == 16
    for row in (eager, compiled):
        assert row["median_s"] > 0 and row["tokens_per_s"] == pytest.approx(16 / row["median_s"])
        # the step times are the alternating rounds' (one process for both modes)
        assert len(row["round_times_s"]) == 2 and row["median_s"] == pytest.approx(
            statistics.median(row["round_times_s"])) and row["alone_median_s"] > 0
    assert compiled["compile_cold_s"] > 0 and "compile_warm_s" in compiled
    ratios = [e / c for e, c in zip(eager["round_times_s"], compiled["round_times_s"])]
    assert compiled["speedup"] == pytest.approx(statistics.median(ratios))
    assert (compiled["rounds"], compiled["rounds_faster"]) == (2, sum(r > 1 for r in ratios))
    assert "median of 2 alternating rounds" in r.stdout
    assert f"{min(ratios):.2f}–{max(ratios):.2f}×" in r.stdout
    # while it ran, stderr (not a terminal here) said where it was, one line per phase, in order;
    # stdout has the table only
    assert "nestc bench:" not in r.stdout
    said = [line for line in r.stderr.splitlines() if line.startswith("nestc bench: ")]
    expected = ["eager step: building the model", "eager step: timed steps (2)",
                "compiled step, empty inductor cache: first step (compiles)",
                "both steps, alternating rounds (inductor cache warm): first compiled step (a warm compile)",
                "both steps, alternating rounds (inductor cache warm): timed rounds (2)"]
    at = [next(i for i, line in enumerate(said) if line == "nestc bench: " + e) for e in expected]
    assert at == sorted(at), said
    # a finished phase that took a second or more gets its time: the cold compile always does
    took = [line for line in said if line.startswith(
        "nestc bench: compiled step, empty inductor cache: first step (compiles): ")]
    assert len(took) == 1 and float(took[0].rsplit(": ", 1)[1].removesuffix(" s")) >= 1.0, said
    # the results name the code they measured: this checkout's commit
    head = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short=10", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert head and res["machine"]["commit"] in (head, head + "+dirty")


def test_bench_rejects_an_unknown_loop_mode():
    r = nestc_cli("bench", "titans", "--loops", "weave")
    assert_user_error(r, "--loops", "weave", "unroll", "scan", "region")


def test_bench_refuses_scan_loops_in_bf16():
    """torch 2.13 cannot compile a scan's or a region's body under autocast: a user error up front,
    not an error from inside torch.compile after minutes (runtime/ops.py NO_AUTOCAST_LOOPS)."""
    r = nestc_cli("bench", "hope", "--loops", "scan", "--precision", "bf16")
    assert_user_error(r, "--loops scan", "--precision bf16", "unroll", "call")


def test_bench_rejects_an_unknown_first_pass():
    r = nestc_cli("bench", "hope", "--first-pass", "thawed")
    assert_user_error(r, "--first-pass", "thawed", "frozen", "shared")


def test_alternating_rounds_swap_the_order_every_round():
    from nestc.runtime.bench import alternating_rounds

    calls = []
    heard = []
    times = alternating_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               rounds=3, warmup=1, select=lambda name: calls.append(name.upper()),
                               report=lambda what, done, total: calls.append(str(done)) or heard.append((what, done, total)))
    # warm-up, then ab, ba, ab; each call after its select, each round after its report
    assert "".join(calls) == "0AaBb" + "0AaBb" + "1BbAa" + "2AaBb"
    assert heard == [("warm-up rounds", 0, 1), ("timed rounds", 0, 3), ("timed rounds", 1, 3), ("timed rounds", 2, 3)]
    assert [len(t) for t in times.values()] == [3, 3] and all(x >= 0 for t in times.values() for x in t)


def test_a_failing_child_reports_its_own_error_not_its_progress_lines():
    from nestc.runtime.bench import _child

    events = []
    args = dict(spec="no_such_spec_anywhere", overrides={}, batch=1, seq_len=8, compile=False, warmup=0,
                iters=1, threads=1, loops="unroll", device="cpu", precision="fp32", first_pass="frozen")
    with pytest.raises(RuntimeError) as err:
        _child(args, on_progress=events.append)
    # the child said what it was doing before it failed, and the error is the child's last line
    assert events and events[0] == {"what": "building the model", "done": 0, "total": None}
    assert "no_such_spec_anywhere" in str(err.value) and "nestc-bench-progress" not in str(err.value)


def test_the_log_view_prints_each_phase_once_and_the_time_of_a_long_one(monkeypatch):
    import io

    from rich.console import Console

    import nestc.bench_progress as view

    # the clock as each phase starts or ends: building 0.0-0.2, compiling 0.3-30.3, timed steps 30.3-31.0
    clock = iter([0.0, 0.2, 0.3, 30.3, 30.3, 31.0])
    monkeypatch.setattr(view.time, "perf_counter", lambda: next(clock))
    buf = io.StringIO()
    with view.BenchProgress(Console(file=buf, width=200), live=False) as shown:
        shown("cold", {"what": "building the model", "done": 0, "total": None})
        shown("cold", {"what": "first step (compiles)", "done": 0, "total": None})
        shown("cold", {"what": "timed steps", "done": 0, "total": 3})
        shown("cold", {"what": "timed steps", "done": 1, "total": 3})  # the same phase: no line
    stage = "nestc bench: compiled step, empty inductor cache: "
    assert buf.getvalue().splitlines() == [
        stage + "building the model",  # 0.2 s: no time line
        stage + "first step (compiles)",
        stage + "first step (compiles): 30.0 s",
        stage + "timed steps (3)"]  # 0.7 s until the end: no time line




def test_bench_refuses_a_spec_without_an_optimizer_up_front(tmp_path):
    """It was an internal error from the eager step's process ("RuntimeError: ... NestError"),
    whose hint named train's --optimizer, which bench does not have."""
    spec = tmp_path / "adam_chunks.nest"
    spec.write_text(ADAM_CHUNKS)
    out = assert_user_error(nestc_cli("bench", str(spec), "--no-compile"), "has no optimizer", "train {")
    assert "--optimizer" not in out


def test_train_and_bench_refuse_call_loops_for_adam_on_chunks(tmp_path):
    spec = tmp_path / "adam_chunks.nest"
    spec.write_text(ADAM_CHUNKS.replace("model {", "train {\n    optimizer adamw(lr=1e-3)\n}\nmodel {"))
    for r in (nestc_cli("bench", str(spec), "--loops", "call"),
              nestc_cli("train", str(spec), "--compile", "--loops", "call", "--steps", "2", "-o", str(tmp_path / "run"))):
        assert_user_error(r, "`--loops call` cannot compile box `mem`", "--loops unroll")
    assert not (tmp_path / "run").exists()
