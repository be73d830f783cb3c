"""`nestc bench`: the table's rows as JSON, the chunk-loop mode reaching the compiled step's
process (and the first-pass mode), and a clean error for a mode that does not exist. Tiny sizes: this is about plumbing,
not speed (timings are benchmarks, never assertions)."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest

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
    # the results name the code they measured: this checkout's commit
    head = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short=10", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert head and res["machine"]["commit"] in (head, head + "+dirty")


def test_bench_rejects_an_unknown_loop_mode():
    r = nestc_cli("bench", "titans", "--loops", "weave")
    assert_user_error(r, "--loops", "weave", "unroll", "scan", "region")


def test_bench_rejects_an_unknown_first_pass():
    r = nestc_cli("bench", "hope", "--first-pass", "thawed")
    assert_user_error(r, "--first-pass", "thawed", "frozen", "shared")


def test_alternating_rounds_swap_the_order_every_round():
    from nestc.runtime.bench import alternating_rounds

    calls = []
    times = alternating_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               rounds=3, warmup=1, select=lambda name: calls.append(name.upper()))
    # warm-up, then ab, ba, ab; each call after its select
    assert "".join(calls) == "AaBb" + "AaBb" + "BbAa" + "AaBb"
    assert [len(t) for t in times.values()] == [3, 3] and all(x >= 0 for t in times.values() for x in t)
