"""benchmarks/compile_phases.py: torch.compile's phase timers over a spec's first training step."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "compile_phases.py"


def _run(*args, timeout=900):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_cold_then_warm_first_steps_report_their_compile_phases(tmp_path):
    """A fresh cache: dynamo compiles frames, inductor compiles a forward and a backward graph
    of each, and the timers sit inside the first step (the compile the step paid). A second run
    on that cache finds every graph there: dynamo still traces, inductor generates nothing (what
    `nestc bench` calls the warm compile)."""
    cache = tmp_path / "cache"
    args = ("linear_attention", "--batch", "1", "--seq-len", "8", "--threads", "1", "--cache", str(cache))
    run = _run(*args, "--json", str(tmp_path / "cold.json"))
    assert run.returncode == 0, run.stderr
    res = json.loads((tmp_path / "cold.json").read_text())
    rows = {r["timer"]: r for r in res["phases"]}
    frames = rows["_compile.compile_inner"]
    assert frames["calls"] >= 1
    # every compiled frame of a training step has a backward: forward and backward graphs
    assert rows["compile_fx.<locals>.bw_compiler"]["calls"] >= 1
    graphs = res["graph_codegen_s"]
    assert len(graphs) == rows["fx_codegen_and_compile"]["calls"] >= 2
    assert graphs == sorted(graphs, reverse=True) and all(s > 0 for s in graphs)
    compiled = frames["total_s"] + rows["compile_fx.<locals>.bw_compiler"]["total_s"]
    assert 0 < compiled <= res["first_step_s"]
    assert res["second_step_s"] < res["first_step_s"]
    # the printed table carries the same rows
    assert "inductor, per graph (forward and backward)" in run.stdout
    assert f"{len(graphs)} graphs" in run.stdout

    again = _run(*args, "--json", str(tmp_path / "warm.json"))
    assert again.returncode == 0, again.stderr
    warm = json.loads((tmp_path / "warm.json").read_text())
    assert warm["graph_codegen_s"] == [] and "every graph came from the cache" in again.stdout
    assert any(r["timer"] == "bytecode_tracing" for r in warm["phases"])


def test_a_bad_loop_mode_is_a_clear_error():
    run = _run("linear_attention", "--loops", "sideways", timeout=120)
    assert run.returncode == 2
    assert "--loops sideways" in run.stderr and "unroll" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_spec_that_does_not_exist_is_a_clear_error(tmp_path):
    bad = tmp_path / "typo.nest"
    bad.write_text("model typo {\n  box m : nonsense\n}\n")
    run = _run(str(bad), timeout=120)
    assert run.returncode == 2, run.stderr
    assert "typo.nest" in run.stderr and "Traceback" not in run.stderr
