"""`nestc bench SPEC`: how fast a spec's full training step is, eager and compiled.

One row per mode: median step time over timed steps after warm-up, tokens/s, and peak resident
memory. Compile time is measured in fresh processes: "cold" with an empty inductor cache (what a
first run pays), "warm" with the cache the cold run left (what every later run pays). The machine,
thread count and versions are printed with the table, and the share of the CPUs other processes
kept busy while it ran (`runtime/cpu_load.py`): a benchmark on a busy machine says so.

The step times of both rows come from one process that alternates them, an eager step and a
compiled step per round (`measure_pair`, the warm-cache process): a VM whose speed drifts from
one minute to the next slows both modes alike, where timing each mode in a process of its own
put a drift between them. The speed-up is the median of the rounds' ratios. On the AVX-512 AMD
VM, separate processes gave the Titans step 1.06× in one run and 1.72× a few minutes later.

A benchmark runs for minutes (Hope's cold compile alone takes about five on two threads), so the
child processes say where they are: a line on stderr, tagged `PROGRESS_TAG`, at each step
(`progress`), which `bench` reads as it comes and hands to its caller (`nestc bench` shows it).
"""

from __future__ import annotations

import collections
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from .cpu_load import OtherLoad


def machine(device: str = "cpu") -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import nestc

    from .devices import describe

    # "AMD EPYC" names VMs with and without AVX-512, which compile and run at different speeds
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: None)()
    return {"cpu": cpu, "cpu_capability": capability, "logical_cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "device": describe(torch.device(device)), "torch": torch.__version__,
            "python": platform.python_version(), "nestc": nestc.__version__,
            "commit": source_commit()}


def source_commit() -> str | None:
    """The git commit nestc runs from ("+dirty" with uncommitted changes to tracked files), or
    None for an installed copy outside a checkout: a results file says which code it measured."""
    import nestc

    where = Path(nestc.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short=10", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def build_step(spec: str, overrides: dict, batch: int, seq_len: int, compile: bool, seed: int = 0,
               loops: str = "unroll", device: str = "cpu", precision: str = "fp32",
               first_pass: str = "frozen"):
    """One full training step of the spec (two-pass loss when it has lss boxes, backward, clip,
    optimizer step), on random byte tokens; returns (step function, model). `loops`: how a
    compiled step traces chunk loops (nestc.runtime.ops.LOOP_MODES); `first_pass`: how it compiles
    the first pass of a model with lss boxes (nestc.runtime.train.FIRST_PASSES). The model is built on the
    CPU (the same weights everywhere) and moved to `device`; the step returns once the device's
    queued work is done, so a host clock around it times the work. `precision`: fp32, or bf16
    (the forward passes under autocast, as `nestc train --precision bf16` runs them)."""
    from .devices import autocast, synchronize

    import nestc
    from nestc.runtime.train import make_loss_fns, make_optimizer, signals

    torch.manual_seed(seed)
    compiled = nestc.compile(spec, overrides)
    dev = torch.device(device)
    model = compiled.model(vocab=256).to(dev)
    optimizer = make_optimizer(compiled, model)
    fns = make_loss_fns(model, compile=compile, loops=loops, first_pass=first_pass)
    if compile:
        optimizer.compile_steps()
    gen = torch.Generator().manual_seed(seed)

    def step():
        x = torch.randint(0, 256, (batch, seq_len), generator=gen).to(dev)
        y = torch.randint(0, 256, (batch, seq_len), generator=gen).to(dev)
        with autocast(dev, precision):
            loss = fns.main(x, y, signals(model, fns, x, y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        synchronize(dev)
        return value

    return step, model


# A child process of `bench` tells its parent where it is with lines "<PROGRESS_TAG>{json}" on
# stderr, when the parent asks for them (PROGRESS_ENV=1); anything else on stderr is the child's own.
PROGRESS_TAG = "nestc-bench-progress "
PROGRESS_ENV = "NESTC_BENCH_PROGRESS"


def progress(what: str, done: int = 0, total: int | None = None) -> None:
    """Report `what` the process is doing (`done` of `total` steps so far; total None: one step of
    unknown length, such as a first step that compiles) to a parent `bench` that asked for it."""
    if os.environ.get(PROGRESS_ENV) == "1":
        sys.stderr.write(PROGRESS_TAG + json.dumps({"what": what, "done": done, "total": total}) + "\n")
        sys.stderr.flush()


def time_steps(step, warmup: int, iters: int, first_label: str = "first step") -> tuple[float, list[float]]:
    progress(first_label)
    t0 = time.perf_counter()
    step()  # the first call: includes compilation when compiled
    first = time.perf_counter() - t0
    for i in range(warmup):  # `warmup` untimed steps after the first (nestc bench --warmup)
        progress("warm-up steps", i, warmup)
        step()
    times = []
    for i in range(iters):
        progress("timed steps", i, iters)
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return first, times


def measure(spec: str, overrides: dict, batch: int, seq_len: int, compile: bool, warmup: int,
            iters: int, loops: str = "unroll", device: str = "cpu", precision: str = "fp32",
            first_pass: str = "frozen") -> dict:
    progress("building the model")
    step, model = build_step(spec, overrides, batch, seq_len, compile, loops=loops, device=device,
                             precision=precision, first_pass=first_pass)
    first, times = time_steps(step, warmup, iters, "first step (compiles)" if compile else "first step")
    med = statistics.median(times)
    gpu = {"peak_gpu_mb": torch.cuda.max_memory_allocated(torch.device(device)) / 2**20} \
        if torch.device(device).type == "cuda" else {}
    return {"mode": "compiled" if compile else "eager", "loops": loops if compile else None,
            "first_pass": first_pass if compile else None,
            "precision": precision, **gpu,
            "first_step_s": first, "median_s": med,
            "min_s": min(times), "max_s": max(times), "tokens_per_s": batch * seq_len / med,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params": sum(p.numel() for p in model.parameters())}


def alternating_rounds(steps: dict, rounds: int, warmup: int = 0, select=None,
                       report: Callable[[str, int, int], None] | None = None) -> dict[str, list[float]]:
    """`warmup` untimed calls of each step, then `rounds` rounds of one timed call of each, the
    order reversed every other round (no step always runs in the other's wake). `steps`: {name:
    a function of no arguments}; `select(name)`, if given, runs untimed before each of that
    step's calls (benchmarks/ab_rounds.py's scripts swap the code under test there); `report(what,
    done, total)`, if given, hears of each warm-up and round before it runs. Returns
    {name: [seconds per round]}."""
    def run(name, step):
        if select is not None:
            select(name)
        t = time.perf_counter()
        step()
        return time.perf_counter() - t

    report = report or (lambda what, done, total: None)
    for i in range(warmup):
        report("warm-up rounds", i, warmup)
        for name, step in steps.items():
            run(name, step)
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps.items())
    for i in range(rounds):
        report("timed rounds", i, rounds)
        for name, step in order if i % 2 == 0 else order[::-1]:
            times[name].append(run(name, step))
    return times


def measure_pair(spec: str, overrides: dict, batch: int, seq_len: int, warmup: int, iters: int,
                 loops: str = "unroll", device: str = "cpu", precision: str = "fp32",
                 first_pass: str = "frozen") -> dict:
    """The compiled step's first step (its compile, from whatever inductor cache this process
    has) and the eager step's, then `alternating_rounds` of the two. Both models start from the
    same weights and see the same batches. Returns {"first_step_s": the compiled step's first,
    "eager": [s...], "compiled": [s...]} (seconds per round)."""
    kw = dict(loops=loops, device=device, precision=precision, first_pass=first_pass)
    progress("building the models")
    compiled_step, _ = build_step(spec, overrides, batch, seq_len, True, **kw)
    progress("first compiled step (a warm compile)")
    t0 = time.perf_counter()
    compiled_step()
    first = time.perf_counter() - t0
    eager_step, _ = build_step(spec, overrides, batch, seq_len, False, **kw)
    progress("first eager step")
    eager_step()
    times = alternating_rounds({"eager": eager_step, "compiled": compiled_step}, iters, warmup,
                               report=progress)
    return {"first_step_s": first, **times}


def _paired_row(row: dict, times: list[float], tokens: int) -> dict:
    """A row's step times replaced by the alternating rounds' (its own process's median kept as
    `alone_median_s`)."""
    med = statistics.median(times)
    return dict(row, alone_median_s=row["median_s"], median_s=med, min_s=min(times), max_s=max(times),
                tokens_per_s=tokens / med, round_times_s=times)


def round_ratios(eager: dict, compiled: dict) -> list[float] | None:
    """Eager / compiled step time, round by round, from two rows of one `bench` result; None
    for results from before the modes ran in alternating rounds."""
    if "round_times_s" not in eager or "round_times_s" not in compiled:
        return None
    return [e / c for e, c in zip(eager["round_times_s"], compiled["round_times_s"])]


def _child(args: dict, fn: str = "measure", on_progress: Callable[[dict], None] | None = None) -> dict:
    """Run `measure` (or `measure_pair`) in a fresh Python process (for memory and compile-time
    isolation). `on_progress(event)` hears each of the child's `progress` reports as it comes
    ({"what", "done", "total"}); the child's other stderr lines are kept for its error message."""
    env = dict(os.environ)
    if args.get("cache_dir"):
        env["TORCHINDUCTOR_CACHE_DIR"] = args["cache_dir"]
    env.pop(PROGRESS_ENV, None)
    if on_progress is not None:
        env[PROGRESS_ENV] = "1"
    if fn == "measure":
        call = ("measure(a['spec'], a['overrides'], a['batch'], a['seq_len'], a['compile'], a['warmup'], "
                "a['iters'], a['loops'], a['device'], a['precision'], a['first_pass'])")
    else:
        call = ("measure_pair(a['spec'], a['overrides'], a['batch'], a['seq_len'], a['warmup'], a['iters'], "
                "a['loops'], a['device'], a['precision'], a['first_pass'])")
    code = ("import json, sys, torch; from nestc.runtime.bench import measure, measure_pair; "
            "a = json.loads(sys.argv[1]); torch.set_num_threads(a['threads']); "
            f"print(json.dumps({call}))")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    stdout: list[str] = []
    # stdout drains on a thread of its own, so that a child filling that pipe cannot stall its stderr
    drain = threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True)
    drain.start()
    stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
    try:
        for line in proc.stderr:
            if line.startswith(PROGRESS_TAG) and on_progress is not None:
                on_progress(json.loads(line[len(PROGRESS_TAG):]))
            else:
                stderr_tail.append(line)
        proc.wait()
    finally:
        if proc.poll() is None:  # the parent was interrupted: the child goes with it
            proc.kill()
            proc.wait()
    drain.join()
    if proc.returncode != 0:
        raise RuntimeError(_child_error(list(stderr_tail)))
    return json.loads("".join(stdout).strip().splitlines()[-1])


def _child_error(stderr: list[str]) -> str:
    """What a failed child died of: the exception its traceback ends with (its message may span
    lines, as a spec error's hint does), else its last line of stderr."""
    lines = [line.rstrip() for line in stderr if line.strip()]
    starts = [i for i, line in enumerate(lines) if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line)]
    if starts:
        return "\n".join(lines[starts[-1]:])
    return lines[-1] if lines else "benchmark failed"


# What each child process of `bench` does, as its progress reports name it.
STAGES = {"eager": "eager step", "cold": "compiled step, empty inductor cache",
          "pair": "both steps, alternating rounds (inductor cache warm)"}


def bench(spec: str, overrides: dict, batch: int, seq_len: int, warmup: int, iters: int,
          threads: int, compile: bool = True, loops: str = "unroll", device: str = "cpu",
          precision: str = "fp32", first_pass: str = "frozen",
          on_progress: Callable[[str, dict], None] | None = None) -> dict:
    """The rows of `nestc bench`: eager in a process of its own; with `compile`, the compiled step
    in a process with an empty inductor cache (its cold compile), then both in one process on the
    cache it left (warm compile, alternating rounds). `on_progress(stage, event)`: each child's
    progress as it comes, `stage` a key of STAGES (event {"what": "starting a process", ...} first)."""
    def child(stage: str, child_args: dict, fn: str = "measure") -> dict:
        if on_progress is None:
            return _child(child_args, fn)
        on_progress(stage, {"what": "starting a process", "done": 0, "total": None})
        return _child(child_args, fn, lambda event: on_progress(stage, event))

    base = dict(spec=spec, overrides=overrides, batch=batch, seq_len=seq_len, warmup=warmup,
                iters=iters, threads=threads, loops=loops, device=device, precision=precision,
                first_pass=first_pass)
    if compile and first_pass == "shared":  # refused here, as one error, not in a child process
        import nestc
        from nestc.runtime.train import check_shared_first_pass

        check_shared_first_pass(nestc.compile(spec, overrides).model(vocab=256))
    meter = OtherLoad().start()
    rows = [child("eager", dict(base, compile=False))]
    if compile:
        with tempfile.TemporaryDirectory(prefix="nestc-inductor-") as cache:
            cold = child("cold", dict(base, compile=True, cache_dir=cache))
            pair = child("pair", dict(base, cache_dir=cache), fn="measure_pair")
        cold["compile_cold_s"] = cold["first_step_s"] - cold["median_s"]
        tokens = batch * seq_len
        eager = _paired_row(rows[0], pair["eager"], tokens)
        compiled = _paired_row(cold, pair["compiled"], tokens)
        compiled["compile_warm_s"] = pair["first_step_s"] - compiled["median_s"]
        # the median of the rounds' ratios, and in how many rounds compiled was the faster
        ratios = round_ratios(eager, compiled)
        compiled["speedup"] = statistics.median(ratios)
        compiled["rounds"] = len(ratios)
        compiled["rounds_faster"] = sum(r > 1 for r in ratios)
        rows = [eager, compiled]
    torch.set_num_threads(threads)
    # how much of the CPUs other processes took meanwhile (None where it cannot be read)
    return {"spec": spec, "overrides": overrides, "batch": batch, "seq_len": seq_len,
            "warmup": warmup, "iters": iters, "precision": precision,
            "machine": dict(machine(device), other_cpu_load=meter.share()), "rows": rows}
