"""runtime/cpu_load.py: the share of the CPUs other processes keep busy, which `nestc bench`
records and warns about. Real processes: busy loops in children, and this process's own work,
which must not count as someone else's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from nestc.runtime.cpu_load import OtherLoad, busy_warning, machine_busy_s, other_load
from train_helpers import nestc_cli, sets

pytestmark = pytest.mark.skipif(machine_busy_s() is None, reason="needs Linux /proc/stat")
CPUS = os.cpu_count() or 1
SPIN = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass\n"


@contextmanager
def spinning(n: int):
    """n child processes that each keep one core busy (for at most 30 s)."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
    try:
        time.sleep(0.5)  # let them start
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _spin_here(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.skipif(CPUS > 8, reason="keeping every core busy is too much on a large machine")
def test_busy_children_of_another_process_count():
    with spinning(CPUS):
        share = other_load(1.0)
    assert share is not None and share >= 0.6  # every core spun; allow for the start-up


@pytest.mark.alone  # any other busy process (a second test worker) adds to the share
def test_this_process_and_its_children_do_not_count():
    meter = OtherLoad().start()
    _spin_here(1.0)
    subprocess.run([sys.executable, "-c", SPIN.replace("30", "1")], check=True)  # a waited-for child
    share = meter.share()
    # without the subtraction this would be about 1 / CPUS of the machine (0.5 on two cores)
    assert share is not None and share < 0.6 / CPUS + 0.05


def test_warning_only_above_the_threshold():
    assert busy_warning(None, "now") is None
    assert busy_warning(0.1, "now") is None
    text = busy_warning(0.9, "while this benchmark ran")
    assert text and "90%" in text and "while this benchmark ran" in text


@pytest.mark.skipif(CPUS > 8, reason="keeping every core busy is too much on a large machine")
def test_bench_warns_on_a_busy_machine(tmp_path):
    tiny = {"d_model": "32", "heads": "2", "n_layers": "1", "chunk": "8"}
    out = tmp_path / "bench.json"
    with spinning(CPUS):
        r = nestc_cli("bench", "titans", "--batch", "1", "--seq-len", "16", "--warmup", "0", "--iters", "1",
                      "--threads", "1", "--no-compile", "--json", out, *sets(tiny), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "just before this benchmark" in r.stderr and "not reliable" in r.stderr
    load = json.loads(out.read_text())["machine"]["other_cpu_load"]
    assert load is not None and load > 0.25  # the spinners ran for the whole benchmark


def _bench_builtins():
    """benchmarks/bench_builtins.py, loaded as a module."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_builtins.py"
    spec = importlib.util.spec_from_file_location("bench_builtins", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_builtins_table_flags_a_busy_run(tmp_path):
    """benchmarks/bench_builtins.py marks a spec whose run recorded a busy machine, and only it."""
    builtins = _bench_builtins()
    row = {"mode": "eager", "params": 1000, "tokens_per_s": 100.0, "median_s": 0.1}
    machine = {"cpu": "test cpu", "threads": 2, "torch": "t", "python": "p", "nestc": "n"}
    for name, load in (("quiet", 0.01), ("busy", 0.7), ("old", None)):
        m = dict(machine, **({} if load is None else {"other_cpu_load": load}))
        (tmp_path / f"bench_{name}.json").write_text(json.dumps(
            {"batch": 1, "seq_len": 8, "machine": m, "rows": [row]}))
    text = builtins.table(["quiet", "busy", "old"], tmp_path)
    assert "| busy ⚠ |" in text and "| quiet |" in text and "| old |" in text
    assert "busy: other processes kept 70% of the CPUs busy" in text and "quiet:" not in text


def test_builtins_table_names_a_compiled_row_of_other_than_the_default_modes(tmp_path):
    """benchmarks/bench_builtins.py puts a compiled row's loop and first-pass modes after its
    spec's name where they are not nestc's defaults, and refuses an unknown mode (exit 2)."""
    import subprocess
    import sys

    builtins = _bench_builtins()
    script = builtins.__file__
    eager = {"mode": "eager", "params": 1000, "tokens_per_s": 100.0, "median_s": 0.1}
    machine = {"cpu": "test cpu", "threads": 2, "torch": "t", "python": "p", "nestc": "n"}
    for name, loops, first in (("plain", "unroll", "frozen"), ("short", "call", "shared"), ("old", None, None)):
        comp = {"mode": "compiled", "tokens_per_s": 150.0, "median_s": 0.05, "compile_cold_s": 9.0,
                "compile_warm_s": 1.0, **({"loops": loops, "first_pass": first} if loops else {})}
        (tmp_path / f"bench_{name}.json").write_text(json.dumps(
            {"batch": 1, "seq_len": 8, "machine": machine, "rows": [eager, comp]}))
    text = builtins.table(["plain", "short", "old"], tmp_path)
    assert "| plain |" in text and "| old |" in text
    assert "| 2.00× |" in text  # the ratio of the medians where a row has no rounds' speed-up
    # the median of alternating rounds' ratios (2.0, 1.5, 1.6), and their range, when there are rounds
    rounds = [dict(eager, round_times_s=[0.2, 0.3, 0.4]),
              dict(comp, round_times_s=[0.1, 0.2, 0.25], speedup=1.6)]
    (tmp_path / "bench_paired.json").write_text(json.dumps(
        {"batch": 1, "seq_len": 8, "machine": machine, "rows": rounds}))
    assert "| 1.60× (1.50–2.00) |" in builtins.table(["paired"], tmp_path)
    assert "| short (loops call, first pass shared) |" in text
    for flag, value in (("--loops", "sideways"), ("--first-pass", "twice")):
        run = subprocess.run([sys.executable, str(script), "--specs", "transformer", flag, value,
                              "--results", str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and f"{flag} {value}" in run.stderr and "Traceback" not in run.stderr
