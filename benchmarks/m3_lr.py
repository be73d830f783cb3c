"""Which learning rates `--optimizer m3` trains at: a small Titans, the same steps and data for
each, the held-out loss at the end (or the step where the loss went non-finite).

    python benchmarks/m3_lr.py                        # the default sweep below
    python benchmarks/m3_lr.py --lrs 0.02 1e-4 --steps 100

M3's update (NL Algorithm 1, line 10) divides an orthogonalised momentum, whose entries are about
1/sqrt(d) whatever the gradients' size, by the root of a sum of squared gradients: the step per
entry scales as lr / |g|, so a learning rate that suits Muon (0.02) is far too large for it. The
paper reports none of M3's hyperparameters; this is how specs/m3.nest's default was chosen. AdamW
(the spec's own optimizer) runs alongside for scale. Each run is `nestc train` in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = ["titans", "--set", "n_layers=1", "--set", "d_model=64", "--set", "chunk=16"]


def run(optimizer: str | None, lr: float | None, steps: int, seq_len: int, folder: Path) -> dict:
    args = [sys.executable, "-m", "nestc.cli", "train", *SPEC, "--steps", str(steps), "--seq-len",
            str(seq_len), "--eval-every", str(steps), "-o", str(folder)]
    if optimizer:
        args += ["--optimizer", optimizer]
    if lr is not None:
        args += ["--lr", repr(lr)]
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    bad = next((r for r in rows if r["kind"] == "nonfinite"), None)
    if proc.returncode != 0 and bad is None:
        raise SystemExit(f"nestc train failed:\n{proc.stderr[-2000:]}")
    return {"optimizer": optimizer or "adamw (spec)", "lr": lr, "steps_done": len(train),
            "first_loss": train[0]["loss"] if train else None,
            "heldout": evals[-1]["loss"] if evals else None,
            "note": f"non-finite at step {bad['step']}: {bad['where']}" if bad else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.02, 1e-3, 3e-4, 1e-4, 1e-5])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seq-len", type=int, default=64)
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from nestc.runtime.bench import machine

    m = machine()
    print(f"M3 learning rates: titans n_layers=1 d_model=64 chunk=16, batch 4 (the spec's), seq {a.seq_len}, "
          f"{a.steps} steps (warmup and schedule from the spec)")
    print(f"machine: {m['cpu']} ({m['cpu_capability']}); torch {m['torch']}; commit {m['commit']}")
    print(f"{'optimizer':14s} {'lr':>8s} {'steps':>6s} {'first loss':>11s} {'held-out':>9s}  note")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (opt, lr) in enumerate([("m3", lr) for lr in a.lrs] + [(None, None)]):
            r = run(opt, lr, a.steps, a.seq_len, Path(tmp) / f"run{i}")
            held = f"{r['heldout']:.4f}" if r["heldout"] is not None else "-"
            first = f"{r['first_loss']:.4f}" if r["first_loss"] is not None else "-"
            lr_text = f"{r['lr']:g}" if r["lr"] is not None else "1e-3"
            print(f"{r['optimizer']:14s} {lr_text:>8s} {r['steps_done']:>6d} {first:>11s} {held:>9s}  {r['note']}",
                  flush=True)


if __name__ == "__main__":
    main()
