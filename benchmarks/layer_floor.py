"""The matrix-product floor of the Titans LMM layer benchmark (benchmarks/specs/titans_layer.nest).

    python benchmarks/layer_floor.py [--threads 2] [--batch 4 --seq 512 --dim 256 --heads 4]

Counts the floating-point operations of one timed step of the layer (a fresh memory state,
forward, out.sum().backward(), as benchmarks/anchor_rows.py times it) with
torch.utils.flop_counter, for each `grad_state`, then measures how fast this machine's `torch.mm`
runs at a few sizes. FLOPs divided by the fastest rate is the time the step's matrix products
need at the least; anything else (element-wise kernels, reductions, launches) comes on top.

    python benchmarks/layer_floor.py --shapes       # and the products at the step's own shapes

With --shapes, the compiled step (`grad_state chunk_start`, as anchor_rows.py times it) runs under
torch.profiler with input shapes recorded, and every matrix product it makes (mm, bmm, addmm,
baddbmm) is then timed alone at its shapes: fresh operands in each of the four layouts (either
factor stored transposed or not), the fastest of the four, best of a few calls. The products'
calls per step times those times is what they need at their own sizes, which for small batched
products (K = 64) is well above the FLOPs at the big `torch.mm` rate; the step's measured time
and the products' time inside it are printed beside it.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import nestc
from ab_rounds import titans_layer_step  # benchmarks/, beside this script
from nestc.runtime.context import Ctx
from step_profile import PRODUCTS, aten_by_shape

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


def stored(shape: list[int], transposed: bool) -> torch.Tensor:
    """A random [..., r, c] tensor, stored as is or as the transpose of a contiguous [..., c, r]."""
    if not transposed:
        return torch.randn(shape)
    return torch.randn(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)


def product_time(op: str, shapes: list[list[int]], iters: int = 20) -> tuple[float, float]:
    """Seconds of one call of `op` on operands of these shapes, at the fastest of the four layouts
    of its two factors (best of `iters` calls each): with its operands in cache (called again and
    again), and cold (a 64 MB buffer written before each call pushes them out of every cache)."""
    fn = {"aten::mm": torch.mm, "aten::bmm": torch.bmm,
          "aten::addmm": torch.addmm, "aten::baddbmm": torch.baddbmm}[op]
    i, j = PRODUCTS[op]
    flush = torch.empty(16 * 2**20)
    hot = cold = float("inf")
    for ta in (False, True):
        for tb in (False, True):
            args = [torch.randn(s) for s in shapes[:j + 1]]  # (the profiler may list an out= last)
            args[i], args[j] = stored(shapes[i], ta), stored(shapes[j], tb)
            for _ in range(3):
                fn(*args)
            for _ in range(iters):
                start = time.perf_counter()
                fn(*args)
                hot = min(hot, time.perf_counter() - start)
            for _ in range(iters // 2):
                flush.fill_(1.0)
                start = time.perf_counter()
                fn(*args)
                cold = min(cold, time.perf_counter() - start)
    return hot, cold


def step_products(overrides: dict, batch: int, seq: int, steps: int = 3) -> tuple[list[dict], float, float]:
    """The compiled step's matrix products, grouped by op and input shapes, with calls per step and
    the profiled milliseconds per step; and the step's median milliseconds without the profiler."""
    from torch.profiler import ProfilerActivity, profile

    from nestc.runtime.inductor_setup import prepare_inductor

    prepare_inductor()  # as anchor_rows.py does
    _, step = titans_layer_step(True, batch=batch, seq=seq, overrides=overrides)
    for _ in range(3):
        step()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    rows = [r for r in aten_by_shape(prof, steps) if r["op"] in PRODUCTS]
    return rows, 1e3 * sorted(times)[len(times) // 2], sum(r["ms_per_step"] for r in rows)


def print_shapes(args, overrides: dict) -> None:
    rows, step_ms, in_step_ms = step_products(overrides, args.batch, args.seq)
    for r in rows:
        r["hot_s"], r["cold_s"] = product_time(r["op"], r["shapes"])
    rows.sort(key=lambda r: -r["calls_per_step"] * r["hot_s"])
    print("\nthe compiled step's products (grad_state chunk_start), each timed alone at its shapes:")
    print("in cache, and cold (operands pushed out of the caches first); ms are per step (all its calls)")
    print(f"{'op':<11} {'calls':>5} {'step ms':>8} {'GFLOP/s':>8} {'hot ms':>7} {'GFLOP/s':>8} "
          f"{'cold ms':>8} {'GFLOP/s':>8}  factors")
    for r in rows:
        i, j = PRODUCTS[r["op"]]
        a, b, gflop = r["shapes"][i], r["shapes"][j], r["gflop_per_step"]
        ms = {k: 1e3 * r["calls_per_step"] * r[k] for k in ("hot_s", "cold_s")} | {"step": r["ms_per_step"]}
        print(f"{r['op'].removeprefix('aten::'):<11} {r['calls_per_step']:>5.0f} {ms['step']:>8.2f} {gflop / ms['step'] * 1e3:>8.1f} "
              f"{ms['hot_s']:>7.2f} {gflop / ms['hot_s'] * 1e3:>8.1f} {ms['cold_s']:>8.2f} "
              f"{gflop / ms['cold_s'] * 1e3:>8.1f}  {a} @ {b}")
    hot, cold = (1e3 * sum(r["calls_per_step"] * r[k] for r in rows) for k in ("hot_s", "cold_s"))
    print(f"products per step: {sum(r['gflop_per_step'] for r in rows) * 1e3:.1f} MFLOP; {in_step_ms:.1f} ms inside the compiled step (profiled), {hot:.1f} ms alone "
          f"in cache, {cold:.1f} ms alone and cold; the step without the profiler: {step_ms:.1f} ms "
          f"(median of 5)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--shapes", action="store_true",
                    help="also time the compiled step's products alone at their own shapes")
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
    if args.shapes:
        print_shapes(args, {"d_model": str(args.dim), "heads": str(args.heads), "chunk": str(args.chunk),
                            "grad_at": '"chunk_start"'})


if __name__ == "__main__":
    main()
