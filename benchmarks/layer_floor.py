"""The matrix-product floor of the Titans LMM layer benchmark (benchmarks/specs/titans_layer.nest).

    python benchmarks/layer_floor.py [--threads 2] [--batch 4 --seq 512 --dim 256 --heads 4]

Counts the floating-point operations of one timed step of the layer (a fresh memory state,
forward, out.sum().backward(), as benchmarks/anchor_rows.py times it) with
torch.utils.flop_counter, for each `grad_state`, then measures how fast this machine's `torch.mm`
runs at a few sizes. FLOPs divided by the fastest rate is the time the step's matrix products
need at the least; anything else (element-wise kernels, reductions, launches) comes on top.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import nestc
from nestc.runtime.context import Ctx

SPEC = Path(__file__).resolve().parent / "specs" / "titans_layer.nest"
MM_SHAPES = [(2048, 2048, 2048), (2048, 256, 256), (8192, 64, 256)]


def step_flops(overrides: dict, batch: int, seq: int, dim: int) -> tuple[int, dict]:
    torch.manual_seed(0)
    layer = nestc.compile(SPEC, overrides).model().layers[0]
    x = torch.randn(batch, seq, dim)
    with FlopCounterMode(display=False) as counter:
        out, _ = layer(x, layer.initial_state(batch), Ctx())
        out.sum().backward()
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


def mm_rate(m: int, k: int, n: int, iters: int = 10) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()} | {args.threads} threads | torch {torch.__version__} "
          f"| cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"# titans_layer B{args.batch} T{args.seq} d{args.dim} h{args.heads} chunk {args.chunk}, fp32")
    rates = []
    for m, k, n in MM_SHAPES:
        rates.append(mm_rate(m, k, n))
        print(f"torch.mm {m}x{k} @ {k}x{n}: {rates[-1] / 1e9:7.1f} GFLOP/s (best of 10)")
    peak = max(rates)
    print(f"{'grad_state':12s} {'MFLOP/step':>10s} {'mm':>9s} {'bmm':>9s} {'floor ms':>9s}")
    for grad_at in ("chunk_start", "call_start"):
        overrides = {"d_model": str(args.dim), "heads": str(args.heads), "chunk": str(args.chunk),
                     "grad_at": f'"{grad_at}"'}
        total, by_op = step_flops(overrides, args.batch, args.seq, args.dim)
        print(f"{grad_at:12s} {total / 1e6:10.1f} {by_op.get('aten.mm', 0) / 1e6:9.1f} "
              f"{by_op.get('aten.bmm', 0) / 1e6:9.1f} {total / peak * 1e3:9.3f}")


if __name__ == "__main__":
    main()
