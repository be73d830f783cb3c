"""A `kill` (SIGTERM) ends a nestc command as Ctrl-C does (nestc/signals.py, and
runtime/interrupts.py in the training loop): a training run stops at a step's end, writes its
checkpoint and says where it stopped; a benchmark stops its child process and removes its
temporary inductor cache. Real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from train_helpers import ROOT, TRANSFORMER, cli_env, sets

from nestc.runtime.checkpoint import load_checkpoint


def _start(args: list, tmp_path) -> subprocess.Popen:
    """`nestc ARGS...` started (as train_helpers.nestc_cli runs it), its temporary files in tmp_path."""
    return subprocess.Popen([sys.executable, "-m", "nestc.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(TMPDIR=str(tmp_path)))


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 240) -> None:
    end = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


def _children(pid: int) -> list[str]:
    """The processes whose parent is `pid` (from /proc: no pgrep needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(stat.parent.name)
    return found


def test_a_killed_training_run_writes_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = _start(["train", "transformer", "--steps", "100000", "--batch", "2", "--seq-len", "16",
                   "--eval-every", "0", "--checkpoint-every", "0", "--out", run, *sets(TRANSFORMER)], tmp_path)
    metrics = run / "metrics.jsonl"
    # some steps done (no periodic checkpoint: only the interrupt can write one)
    _wait_for(lambda: metrics.is_file() and metrics.read_text().count('"kind": "train"') >= 3, proc)
    assert not (run / "last.safetensors").exists()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in out + err, err
    assert proc.returncode == 0, err
    assert "interrupted at step" in err
    stopped_at = int(err.split("interrupted at step ")[1].split()[0])
    _, meta = load_checkpoint(run / "last.safetensors")
    assert meta["step"] == stopped_at >= 3


def test_a_killed_benchmark_leaves_no_process_and_no_cache(tmp_path):
    proc = _start(["bench", "titans", "--batch", "1", "--seq-len", "16", "--iters", "2", "--threads", "1",
                   "--set", "d_model=32", "--set", "heads=2", "--set", "n_layers=1", "--set", "chunk=8"], tmp_path)
    said = []
    for line in proc.stderr:  # until the compiling child is at work
        said.append(line)
        if "first step (compiles)" in line:
            break
    children = _children(proc.pid)
    caches = list(tmp_path.glob("nestc-inductor-*"))
    assert len(children) == 1 and len(caches) == 1, (children, caches, said)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in out + err, err
    assert not os.path.exists(f"/proc/{children[0]}"), "the child process outlived the benchmark"
    assert not list(tmp_path.glob("nestc-inductor-*")), "the temporary inductor cache was left behind"
