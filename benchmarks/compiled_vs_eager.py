"""Every built-in model spec, shrunk (tests/small_models.py), in every loop mode and first-pass
mode: the compiled two-pass training loss and every parameter's gradient against eager, in float64
so that rounding stays far below a wrong gradient. Prints one row per combination.

    python benchmarks/compiled_vs_eager.py                          # every spec, mode, first pass
    python benchmarks/compiled_vs_eager.py hope scan,region frozen  # a subset
    python benchmarks/compiled_vs_eager.py titans all all --layers 1 --seq-len 20 --float32

The tests compare compiled and eager steps for the cases each change touched; this sweeps them
all, at two layers (a later layer's compiled backward feeds an earlier layer's gradients and
signals) and 16 tokens. A row is BAD when the loss or a gradient differs by more than --rtol of
its largest entry (1e-10 in float64, 1e-3 in float32), ERR when a step fails. In float64 every
spec agrees to about 1e-15 (worst 4e-15), and a wrong gradient shows as 1e-4 or more (the scan
carry bug runtime/ops.py `scan` mends: 5.6e-4). Until rope's angle tables followed a float64
model's precision, the specs with attention differed by ~1e-7 (float32 sin/cos, inductor's
against ATen's), which is why the threshold was 1e-6 before. Minutes per spec on
two CPU threads (Hope's modes compile longest); each combination compiles from a reset dynamo.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # small_models

import nestc  # noqa: E402
from nestc.runtime.bench import machine  # noqa: E402
from nestc.runtime.ops import LOOP_MODES, set_loop_mode  # noqa: E402
from nestc.runtime.train import FIRST_PASSES, make_loss_fns, signals  # noqa: E402
from small_models import SHRINK, SMALL, loss_and_grads  # noqa: E402


def compare(name: str, loops: str, first_pass: str, layers: int, seq_len: int, dtype) -> tuple[float, float, str]:
    """(relative loss difference, worst relative gradient difference, the parameter it is in)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nestc.compile(name, {**SMALL, **SHRINK[name], "n_layers": str(layers)}).model().to(dtype)
    x, y = torch.randint(0, 256, (3, seq_len)), torch.randint(0, 256, (3, seq_len))
    loss_e, grads_e = loss_and_grads(model, x, y)
    fns = make_loss_fns(model, compile=True, loops=loops, first_pass=first_pass)
    loss_c = fns.main(x, y, signals(model, fns, x, y))
    grads_c = torch.autograd.grad(loss_c, list(model.parameters()), allow_unused=True)
    worst, where = 0.0, "-"
    for (n, _), a, b in zip(model.named_parameters(), grads_e, grads_c):
        if (a is None) != (b is None):
            return float("inf"), float("inf"), f"{n} (a gradient on one side only)"
        if a is not None:
            err = ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
            if err > worst:
                worst, where = err, n
    return abs(loss_e.item() - loss_c.item()) / abs(loss_e.item()), worst, where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="?", default="all", help="comma-separated built-in model specs, or all")
    ap.add_argument("loops", nargs="?", default="all", help=f"comma-separated of {', '.join(LOOP_MODES)}, or all")
    ap.add_argument("first_pass", nargs="?", default="all", help="frozen, shared or all (shared: models with lss boxes)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--float32", action="store_true", help="float32 instead of float64")
    ap.add_argument("--rtol", type=float, default=None, help="default 1e-10 (float64), 1e-3 (float32)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = torch.float32 if a.float32 else torch.float64
    rtol = a.rtol if a.rtol is not None else (1e-3 if a.float32 else 1e-10)
    specs = sorted(SHRINK) if a.specs == "all" else a.specs.split(",")
    modes = list(LOOP_MODES) if a.loops == "all" else a.loops.split(",")
    firsts = list(FIRST_PASSES) if a.first_pass == "all" else a.first_pass.split(",")
    m = machine()
    print(f"compiled vs eager: {m['cpu']} ({m['cpu_capability']}), {a.threads} threads, torch {m['torch']}, "
          f"commit {m['commit']}; {a.layers} layers, batch 3 x {a.seq_len} tokens, {str(dtype)[6:]}, "
          f"rtol {rtol:g}", flush=True)
    print(f"{'':4} {'spec':16} {'loops':7} {'first':7} {'loss diff':>9} {'grad diff':>9}  worst parameter  (s)")
    bad = 0
    for name in specs:
        has_lss = bool(nestc.compile(name, {**SMALL, **SHRINK[name]}).model().lss_sites())
        for loops in modes:
            for first in firsts:
                if first == "shared" and not has_lss:
                    continue
                t0 = time.perf_counter()
                try:
                    dl, dg, where = compare(name, loops, first, a.layers, a.seq_len, dtype)
                    status = "OK" if dl <= rtol and dg <= rtol else "BAD"
                    row = f"{dl:9.1e} {dg:9.1e}  {where}"
                except Exception as e:  # noqa: BLE001 - a row per failure, the sweep goes on
                    status, row = "ERR", f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                finally:
                    set_loop_mode("unroll")
                bad += status != "OK"
                print(f"{status:4} {name:16} {loops:7} {first:7} {row}  ({time.perf_counter() - t0:.0f})", flush=True)
    print(f"{bad} of the rows BAD or ERR")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
