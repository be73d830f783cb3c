"""benchmarks/step_floor.py: a spec's training-step FLOPs, pass by pass, and the floor they set."""

import json
import subprocess
import sys
from pathlib import Path

from torch.utils.flop_counter import FlopCounterMode

from nestc.runtime.bench import build_step
from small_models import SHRINK, SMALL

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "step_floor.py"


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _sets(name: str) -> list[str]:
    return [arg for key, value in {**SMALL, **SHRINK[name]}.items() for arg in ("--set", f"{key}={value}")]


def test_the_passes_add_up_to_the_step_nestc_bench_times(tmp_path):
    """A model with local surprise signals (shrunk CMS) has both passes; their FLOPs add up to
    what torch's FlopCounterMode counts over the whole step of `nestc bench` (runtime/bench.py),
    and the floor is those FLOPs at the fastest rate the script measured."""
    out = tmp_path / "cms.json"
    run = _run("cms", *_sets("cms"), "--batch", "2", "--seq-len", "16", "--threads", "1", "--json", str(out))
    assert run.returncode == 0, run.stderr
    res = json.loads(out.read_text())
    assert [p["pass"] for p in res["passes"]] == ["first pass (lss probes)", "real pass"]
    assert all(p["flops"] > 0 for p in res["passes"])
    assert res["flops"] == sum(p["flops"] for p in res["passes"])

    overrides = {**SMALL, **SHRINK["cms"]}
    step, _ = build_step("cms", overrides, 2, 16, compile=False)
    with FlopCounterMode(display=False) as counter:
        step()
    assert counter.get_total_flops() == res["flops"]

    peak = max(res["mm_rates"].values())
    assert res["peak_flops_per_s"] == peak > 0
    assert abs(res["floor_ms"] - 1e3 * res["flops"] / peak) <= 1e-9 * res["floor_ms"]
    assert abs(res["ceiling_tokens_per_s"] - 32 * peak / res["flops"]) <= 1e-9 * res["ceiling_tokens_per_s"]
    assert "first pass (lss probes)" in run.stdout and "ceiling:" in run.stdout


def test_a_model_without_local_surprise_has_only_the_real_pass(tmp_path):
    out = tmp_path / "la.json"
    run = _run("linear_attention", *_sets("linear_attention"), "--batch", "1", "--seq-len", "8",
               "--threads", "1", "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert [p["pass"] for p in json.loads(out.read_text())["passes"]] == ["real pass"]


def test_a_spec_param_changes_the_count(tmp_path):
    """--set reaches the spec: a wider model does more arithmetic."""
    counts = []
    for width in ("16", "32"):
        out = tmp_path / f"w{width}.json"
        run = _run("linear_attention", "--set", "n_layers=1", "--set", f"d_model={width}", "--set", "heads=2",
                   "--batch", "1", "--seq-len", "8", "--threads", "1", "--json", str(out))
        assert run.returncode == 0, run.stderr
        counts.append(json.loads(out.read_text())["flops"])
    assert counts[1] > counts[0] > 0


def test_bad_arguments_and_specs_are_clear_errors(tmp_path):
    for args, says in ((("linear_attention", "--batch", "0"), "--batch 0"),
                       (("linear_attention", "--set", "d_model"), "--set d_model"),
                       (("no_such_spec",), "no_such_spec")):
        run = _run(*args, timeout=120)
        assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr, run.stderr
    bad = tmp_path / "typo.nest"
    bad.write_text("model typo {\n  box m : nonsense\n}\n")
    run = _run(str(bad), timeout=120)
    assert run.returncode == 2, run.stderr
    assert "typo.nest" in run.stderr and "Traceback" not in run.stderr
