"""Where a spec's cold compile goes: torch.compile's own phase timers over the first training step.

    python benchmarks/compile_phases.py hope --loops call           # Hope, the spec's batch and length
    python benchmarks/compile_phases.py titans --batch 2 --seq-len 64 --json out.json
    python benchmarks/compile_phases.py hope --cache DIR            # warm: reuse DIR's compiled graphs
    python benchmarks/compile_phases.py hope --loops call --first-pass shared  # one set of graphs

Builds the same full training step as `nestc bench` (runtime/bench.py `build_step`), runs it twice
in this process with an empty inductor cache (a temporary one unless --cache names a folder), and
prints the timers torch keeps while it compiles (`torch._dynamo.utils.compilation_time_metrics`):
dynamo's frame compiles, AOTAutograd's joint trace and partition, inductor's per-graph codegen and
the C++ builds. The phases nest (the tree's indentation says which holds which), so only siblings
add up; the g++ builds run in worker threads, so their total can exceed their parent's. The first
step minus the second is the compile time `nestc bench` reports as cold.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench_cli import bad_first_pass, bad_loop_mode, report, run_in_cache  # benchmarks/, beside this script

# (timer name, label, depth): the pipeline in order, each child indented under its parent.
# Backward graphs compile when the first backward runs, outside dynamo's frame compiles.
PHASES = [
    ("_compile.compile_inner", "dynamo: compile a frame (holds the forward's AOT and inductor)", 0),
    ("bytecode_tracing", "trace the frame's bytecode", 1),
    ("create_aot_dispatcher_function", "AOTAutograd", 1),
    ("aot_trace_joint_graph", "trace the joint forward+backward graph", 2),
    ("_recursive_joint_graph_passes", "joint-graph passes", 2),
    ("min_cut_rematerialization_partition", "partition into forward and backward", 2),
    ("compile_fx.<locals>.fw_compiler_base", "inductor: forward graphs", 2),
    ("compile_fx.<locals>.bw_compiler", "inductor: backward graphs (at the first backward)", 0),
    ("fx_codegen_and_compile", "inductor, per graph (forward and backward)", 0),
    ("GraphLowering.run", "lower the FX graph", 1),
    ("Scheduler.__init__", "schedule and fuse", 1),
    ("GraphLowering.codegen", "write the kernels", 1),
    ("compile_file", "g++ builds", 1),
    ("PyCodeCache.load_by_key_path", "load the compiled module (waits for its builds)", 1),
]


def phase_rows(metrics: dict[str, list[float]]) -> list[dict]:
    """One row per timer of PHASES that ran: calls, total seconds, the longest call."""
    rows = []
    for name, label, depth in PHASES:
        times = metrics.get(name) or []
        if times:
            rows.append({"timer": name, "phase": label, "depth": depth, "calls": len(times),
                         "total_s": sum(times), "max_s": max(times)})
    return rows


def measure(spec: str, batch: int | None, seq_len: int | None, loops: str, threads: int,
            first_pass: str = "frozen") -> dict:
    import torch
    from torch._dynamo.utils import compilation_time_metrics

    from nestc.resolve import resolve_ref
    from nestc.runtime.bench import build_step, machine

    torch.set_num_threads(threads)
    program = resolve_ref(spec, {})
    b = batch or int(program.train.get("batch", 4))
    t = seq_len or int(program.train.get("seq_len", 128))
    step, _ = build_step(spec, {}, b, t, compile=True, loops=loops, first_pass=first_pass)
    compilation_time_metrics.clear()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    metrics = {k: list(v) for k, v in compilation_time_metrics.items()}
    t0 = time.perf_counter()
    step()
    second = time.perf_counter() - t0
    graphs = sorted(metrics.get("fx_codegen_and_compile", []), reverse=True)
    return {"spec": spec, "batch": b, "seq_len": t, "loops": loops, "first_pass": first_pass,
            "threads": threads, "machine": machine("cpu"),
            "first_step_s": first, "second_step_s": second, "phases": phase_rows(metrics),
            "graph_codegen_s": graphs}


def render(res: dict) -> str:
    m = res["machine"]
    lines = [f"compile phases: {res['spec']}, loops {res['loops']}, first pass {res.get('first_pass', 'frozen')}, batch {res['batch']} × seq {res['seq_len']}, "
             f"{res['threads']} threads",
             f"machine: {m.get('cpu', '?')} ({m.get('cpu_capability') or '?'}); torch {m.get('torch', '?')}; python {m['python']}; "
             f"commit {m['commit'] or '?'}",
             f"first step {res['first_step_s']:.1f} s, second {res['second_step_s']:.1f} s "
             f"(compile ≈ {res['first_step_s'] - res['second_step_s']:.1f} s)", "",
             f"{'phase':<66} {'calls':>5} {'total s':>8} {'max s':>7}"]
    for r in res["phases"]:
        lines.append(f"{'  ' * r['depth'] + r['phase']:<66} {r['calls']:>5} {r['total_s']:>8.1f} {r['max_s']:>7.1f}")
    graphs = res["graph_codegen_s"]
    if graphs:
        lines += ["", f"inductor per graph, longest first ({len(graphs)} graphs, {sum(graphs):.1f} s): "
                  + ", ".join(f"{s:.1f}" for s in graphs[:12]) + (" ..." if len(graphs) > 12 else "")]
    else:
        lines += ["", "no graph was compiled by inductor: every graph came from the cache"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="a spec file or a built-in name")
    ap.add_argument("--loops", default="unroll", help="unroll, call, scan or region (as nestc bench)")
    ap.add_argument("--first-pass", default="frozen", help="frozen or shared (as nestc bench)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default: the spec's)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the spec's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=None, help="inductor cache folder (default: a fresh temporary one)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if bad_loop_mode("compile_phases.py", args.loops) or bad_first_pass("compile_phases.py", args.first_pass):
        return 2
    res = run_in_cache("compile_phases.py", args.spec, args.cache, "nestc-phases-",
                       lambda: measure(args.spec, args.batch, args.seq_len, args.loops, args.threads,
                                       args.first_pass))
    if res is None:
        return 2
    return report(render(res), res, args.json)


if __name__ == "__main__":
    sys.exit(main())
