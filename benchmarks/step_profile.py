"""Where a spec's training step spends its time: matrix products, inductor's kernels, the rest.

    python benchmarks/step_profile.py titans                      # compiled, the spec's batch and length
    python benchmarks/step_profile.py titans --mode eager --top 20
    python benchmarks/step_profile.py hope --loops call --steps 3 --json out.json
    python benchmarks/step_profile.py --anchor-layer                # the Titans layer of the peer comparison

Builds the same full training step as `nestc bench` (runtime/bench.py `build_step`), or with
--anchor-layer the Titans LMM layer step that benchmarks/anchor_rows.py times against
titans-pytorch (benchmarks/ab_rounds.py `titans_layer_step`: B 4, T 512, d 256, 4 heads, chunk 64;
a fresh memory state, forward, out.sum().backward(), no optimizer), runs it until
it is compiled and warm, times a few steps without the profiler, then runs --steps more under
torch.profiler with input shapes recorded. Inductor is told to record each generated C++ kernel
(`torch._inductor.config.cpp.enable_kernel_profile`), so a compiled step is seen kernel by
kernel; that setting is part of inductor's cache key, so the step compiles afresh once.

Every op's self time (its time minus the ops it called) lands in one of these groups:
* matrix products: mm, bmm, addmm, baddbmm (with FLOPs from their shapes: 2·m·k·n per product)
  and the attention kernels;
* inductor's kernels: the fused C++ (or Triton) code torch.compile generated;
* compiled-graph wrappers: the Python of each compiled graph between its kernels;
* other ATen ops: whatever ran outside a kernel inductor wrote (all element-wise work in eager);
* autograd, optimizer, other: the autograd engine's nodes, the optimizer's step (its Python;
  its ATen ops count above) and other named regions.
A compiled step's kernels are also checked for loops that run one float at a time: the
generated C++ in the inductor cache is read (benchmarks/scalar_loops.py), and the kernels with a
loop nest of SCALAR_NEST_MIN or more iterations without vector operations are listed with their
times (inductor leaves a nest scalar when too many of its loads are not contiguous).
What the profiler saw on no op (the step's own Python, the optimizer's loop) is the remainder
of the step's wall time. The profiler adds a cost to every op, so the profiled step is slower
than the unprofiled one; both are printed. Where the step is many small ops (eager Hope: 10.1 s
profiled against 3.8 s), the small ops' times are inflated, and so is their share: a bmm shape of
eager Hope that the profiler put at 3.5 ms per call took 0.3 ms timed call by call without it
(benchmarks/results/amd_epyc/profile/hope_eager.txt and bmm_timed_calls.txt).
With shapes recorded, an eager step costs the profiler gigabytes of memory (Hope: 7.2 GB peak
for one step), so keep --steps small there.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

from bench_cli import bad_first_pass, bad_loop_mode, report, run_in_cache  # benchmarks/, beside this script
from scalar_loops import kernel_sources, scalar_iterations

# a kernel counts as running scalar when a loop nest of at least this many iterations has no
# vector operation (smaller nests are the reductions' epilogues and per-row scalars)
SCALAR_NEST_MIN = 4096

# ATen's matrix products, and the positions of the two factors among their inputs
PRODUCTS = {"aten::mm": (0, 1), "aten::bmm": (0, 1), "aten::addmm": (1, 2), "aten::baddbmm": (1, 2)}
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_flash_attention_forward",
             "aten::_scaled_dot_product_efficient_attention", "aten::_efficient_attention_forward",
             "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
             "aten::_flash_attention_backward", "aten::_efficient_attention_backward")
GROUPS = ["matrix products", "inductor's kernels", "compiled-graph wrappers", "other ATen ops",
          "autograd, optimizer, other"]


def group_of(name: str) -> str:
    if name in PRODUCTS or name in ATTENTION:
        return "matrix products"
    if "cpp_fused" in name or name.startswith("triton_") or "_triton_" in name:
        return "inductor's kernels"
    if name.startswith("## Call CompiledFxGraph") or name.startswith("Torch-Compiled Region"):
        return "compiled-graph wrappers"
    if name.startswith("aten::"):
        return "other ATen ops"
    return "autograd, optimizer, other"


def product_flops(name: str, shapes: list) -> int | None:
    """2·m·k·n per product (times the batch for bmm), from the profiler's input shapes."""
    where = PRODUCTS.get(name)
    if where is None or len(shapes) <= max(where):
        return None
    a, b = shapes[where[0]], shapes[where[1]]
    if len(a) < 2 or len(b) < 2:
        return None
    return 2 * math.prod(a) * b[-1]  # a [..., m, k] @ b [..., k, n]


ANCHOR_LAYER = "the anchor Titans layer"  # what --anchor-layer profiles, as results name it


def aten_by_shape(prof, steps: int) -> list[dict]:
    """Every ATen op outside inductor's kernels that `steps` profiled steps ran (recorded with
    input shapes), one row per op and input shapes: calls, self milliseconds and, for the
    matrix products, GFLOP per step; slowest first."""
    rows = []
    for ev in prof.key_averages(group_by_input_shape=True):
        if not ev.key.startswith("aten::"):
            continue
        flops = product_flops(ev.key, ev.input_shapes)
        rows.append({"op": ev.key, "shapes": [list(s) for s in ev.input_shapes],
                     "calls_per_step": ev.count / steps, "ms_per_step": ev.self_cpu_time_total / 1e3 / steps,
                     "gflop_per_step": None if flops is None else flops * ev.count / steps / 1e9})
    return sorted(rows, key=lambda r: -r["ms_per_step"])


def profile_step(spec: str, mode: str, batch: int | None, seq_len: int | None, loops: str,
                 threads: int, steps: int, first_pass: str = "frozen") -> dict:
    """`spec` ANCHOR_LAYER profiles ab_rounds.titans_layer_step (its own size: batch, seq_len and
    loops do not apply; the layer has no chunk loop of the code generator's)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from nestc.runtime.bench import machine

    torch.set_num_threads(threads)
    compiled = mode == "compiled"
    if compiled:
        torch._inductor.config.cpp.enable_kernel_profile = True
    if spec == ANCHOR_LAYER:
        from ab_rounds import titans_layer_step  # benchmarks/, beside this script
        from nestc.runtime.inductor_setup import prepare_inductor

        if compiled:
            prepare_inductor()  # as anchor_rows.py does
        model, step = titans_layer_step(compiled)
        b, t = 4, 512
    else:
        from nestc.resolve import resolve_ref
        from nestc.runtime.bench import build_step

        program = resolve_ref(spec, {})
        b = batch or int(program.train.get("batch", 4))
        t = seq_len or int(program.train.get("seq_len", 128))
        step, model = build_step(spec, {}, b, t, compile=compiled, loops=loops,
                                 first_pass=first_pass)
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    step()  # the optimizer's state now exists, every graph is loaded
    plain = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        plain.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        profiled = (time.perf_counter() - t0) / steps

    per_step = 1e-3 / steps  # profiler microseconds over all steps -> ms per step
    groups = {g: {"ms": 0.0, "ops": 0} for g in GROUPS}
    ops = []
    for ev in prof.key_averages():
        g = group_of(ev.key)
        ms = ev.self_cpu_time_total * per_step
        groups[g]["ms"] += ms
        groups[g]["ops"] += 1
        ops.append({"op": ev.key, "group": g, "calls_per_step": ev.count / steps, "ms_per_step": ms})
    ops.sort(key=lambda r: -r["ms_per_step"])
    if compiled:  # which kernels loop one float at a time (benchmarks/scalar_loops.py)
        sources = kernel_sources(_cache_dir())
        for r in ops:
            if r["group"] == "inductor's kernels":
                r["scalar_iterations"] = scalar_iterations(r["op"], sources)
    by_shape = aten_by_shape(prof, steps)
    products = [r for r in by_shape if r["op"] in PRODUCTS or r["op"] in ATTENTION]
    seen = sum(g["ms"] for g in groups.values())
    return {"spec": spec, "mode": mode, "loops": loops if compiled else None,
            "first_pass": first_pass if compiled else None, "batch": b, "seq_len": t,
            "threads": threads, "steps": steps, "machine": machine("cpu"),
            "params": sum(p.numel() for p in model.parameters()),
            "first_step_s": first, "median_step_ms": 1e3 * statistics.median(plain),
            "profiled_step_ms": 1e3 * profiled, "groups": groups,
            "unseen_ms": 1e3 * profiled - seen, "ops": ops, "products": products,
            "aten_by_shape": by_shape}


def _cache_dir() -> str:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def _share(ms: float, total: float) -> str:
    return f"{100 * ms / total:5.1f}%" if total > 0 else "    -"


def render(res: dict, top: int) -> str:
    m = res["machine"]
    total = res["profiled_step_ms"]
    how = (f"compiled, loops {res['loops']}, first pass {res.get('first_pass') or 'frozen'}"
           if res["mode"] == "compiled" else "eager")
    lines = [f"step profile: {res['spec']} ({res['params'] / 1e6:.2f}M params), {how}, batch {res['batch']} × "
             f"seq {res['seq_len']}, {res['threads']} threads, {res['steps']} profiled steps",
             f"machine: {m.get('cpu', '?')} ({m.get('cpu_capability') or '?'}); torch {m.get('torch', '?')}; "
             f"commit {m.get('commit') or '?'}",
             f"step: {res['median_step_ms']:.1f} ms unprofiled (median of {res['steps']}), "
             f"{total:.1f} ms profiled; first step {res['first_step_s']:.1f} s"]
    if total > 1.25 * res["median_step_ms"]:
        lines.append(f"note: the profiler made the step {total / res['median_step_ms']:.2f}× slower; its cost per op "
                     "weighs most on small ops, so their times below are inflated (time one op outside "
                     "the profiler before acting on its share)")
    lines.append("")
    prod = [p for p in res["products"] if p["gflop_per_step"] is not None]
    gflop = sum(p["gflop_per_step"] for p in prod)
    prod_ms = sum(p["ms_per_step"] for p in prod)
    lines.append(f"{'where the time goes':<28} {'ms/step':>8} {'share':>6}  ")
    for g in GROUPS:
        row = res["groups"][g]
        extra = ""
        if g == "matrix products" and prod_ms > 0:
            extra = f"  {gflop:.2f} GFLOP in mm/bmm/addmm/baddbmm, {gflop / prod_ms * 1e3:.0f} GFLOP/s"
        elif g == "inductor's kernels" and row["ops"]:
            extra = f"  {row['ops']} kernels"
        lines.append(f"{g:<28} {row['ms']:>8.1f} {_share(row['ms'], total)}{extra}")
    lines.append(f"{'no op (Python between ops)':<28} {res['unseen_ms']:>8.1f} {_share(res['unseen_ms'], total)}")
    kernels = [r for r in res["ops"] if r["group"] == "inductor's kernels"]
    if kernels:
        scalar = [r for r in kernels if (r.get("scalar_iterations") or 0) >= SCALAR_NEST_MIN]
        unknown = sum(r.get("scalar_iterations") is None for r in kernels)
        ms = sum(r["ms_per_step"] for r in scalar)
        lines += ["", f"inductor's kernels with a scalar loop nest of {SCALAR_NEST_MIN:,}+ iterations: "
                      f"{len(scalar)} of {len(kernels)}, {ms:.1f} ms/step ({_share(ms, total).strip()})"
                      + (f"; {unknown} kernels' source not found or ambiguous" if unknown else "")]
        for r in scalar[:top]:
            name = r["op"] if len(r["op"]) <= 80 else r["op"][:77] + "..."
            lines.append(f"{r['ms_per_step']:>8.2f} {r['scalar_iterations']:>10,}  {name}")
    lines += ["", f"top {top} ops by self time", f"{'ms/step':>8} {'share':>6} {'calls':>6}  op"]
    for r in res["ops"][:top]:
        name = r["op"] if len(r["op"]) <= 90 else r["op"][:87] + "..."
        lines.append(f"{r['ms_per_step']:>8.2f} {_share(r['ms_per_step'], total)} {r['calls_per_step']:>6.0f}  {name}")
    if res["aten_by_shape"]:
        lines += ["", "ATen ops by input shapes (GFLOP/s for matrix products)",
                  f"{'ms/step':>8} {'calls':>6} {'GFLOP/s':>8}  op  input shapes"]
        for p in res["aten_by_shape"][:top]:
            rate = (f"{p['gflop_per_step'] / p['ms_per_step'] * 1e3:8.0f}" if p["gflop_per_step"] and p["ms_per_step"] > 0
                    else f"{'-':>8}")
            lines.append(f"{p['ms_per_step']:>8.2f} {p['calls_per_step']:>6.0f} {rate}  {p['op']}  {p['shapes']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", nargs="?", help="a spec file or a built-in name")
    ap.add_argument("--anchor-layer", action="store_true",
                    help="profile the Titans LMM layer step of the peer comparison instead of a spec's "
                         "training step (B 4, T 512, d 256, 4 heads, chunk 64; forward and backward)")
    ap.add_argument("--mode", choices=["compiled", "eager"], default="compiled")
    ap.add_argument("--loops", default="unroll", help="unroll, call, scan or region (as nestc bench)")
    ap.add_argument("--first-pass", default="frozen", help="frozen or shared (as nestc bench)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default: the spec's)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the spec's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="steps timed, and then profiled (default 5)")
    ap.add_argument("--top", type=int, default=15, help="rows in the op and shape tables (default 15)")
    ap.add_argument("--cache", default=None, help="inductor cache folder (default: a fresh temporary one)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    for flag, value in (("--steps", args.steps), ("--top", args.top), ("--threads", args.threads)):
        if value < 1:
            print(f"step_profile.py: error: {flag} {value}: use a whole number from 1", file=sys.stderr)
            return 2
    if bad_loop_mode("step_profile.py", args.loops) or bad_first_pass("step_profile.py", args.first_pass):
        return 2
    if (args.spec is None) == (not args.anchor_layer):
        print("step_profile.py: error: name a spec or give --anchor-layer (one of the two)", file=sys.stderr)
        return 2
    if args.anchor_layer and (args.batch or args.seq_len or args.loops != "unroll"
                              or args.first_pass != "frozen"):
        print("step_profile.py: error: --anchor-layer has its own size, no chunk loop and no first "
              "pass: drop --batch, --seq-len, --loops and --first-pass", file=sys.stderr)
        return 2
    spec = ANCHOR_LAYER if args.anchor_layer else args.spec
    res = run_in_cache("step_profile.py", spec, args.cache, "nestc-profile-",
                       lambda: profile_step(spec, args.mode, args.batch, args.seq_len, args.loops,
                                            args.threads, args.steps, args.first_pass))
    if res is None:
        return 2
    return report(render(res, args.top), res, args.json)


if __name__ == "__main__":
    sys.exit(main())
