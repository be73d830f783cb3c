"""A/B of a compiled training step with its optimizer step eager (foreach, as before) or
compiled per tensor (LevelOptimizer.compile_steps), in one process, and what the optimizer adds
to the cold compile.

    python benchmarks/results/amd_epyc/optimizer_per_tensor/ab_optimizer.py [SPEC] [ROUNDS]

The step is `nestc bench`'s (runtime/bench.py build_step, the spec's batch and length, a fresh
inductor cache). "eager_optimizer" patches LevelOptimizer.compile_steps to do nothing, so its
step is the repo's before this change. Built in this order: eager_optimizer (its first step is
the model's cold compile), a second eager_optimizer (the model's graphs from the warm cache),
then compiled_optimizer (the model from the warm cache + the optimizer's cold compile): the
last two first steps' difference is what compiling the optimizer adds. Then the two variants'
steps alternate, the order flipped every round; the optimizer's own step (LevelOptimizer.step,
timed inside each training step) is printed too, as it is less noisy than the whole step.
"""
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="nestc-ab-opt-")
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import alternating_rounds, print_machine, print_rounds
from nestc.resolve import resolve_ref
from nestc.runtime.bench import build_step
from nestc.runtime.train import LevelOptimizer

torch.set_num_threads(2)
real_compile_steps = LevelOptimizer.compile_steps
real_step = LevelOptimizer.step
optimizer_ms: dict[str, list[float]] = {}
current = [None]


def timed_step(self, closure=None):  # LevelOptimizer.step, timed for the variant running
    t0 = time.perf_counter()
    out = real_step(self, closure)
    if current[0] is not None:
        optimizer_ms.setdefault(current[0], []).append(1e3 * (time.perf_counter() - t0))
    return out


LevelOptimizer.step = timed_step


def build(spec: str, compile_optimizer: bool):
    train = resolve_ref(spec, {}).train
    LevelOptimizer.compile_steps = real_compile_steps if compile_optimizer else (lambda self: self)
    try:
        step, _ = build_step(spec, {}, int(train.get("batch", 4)), int(train.get("seq_len", 128)), compile=True)
    finally:
        LevelOptimizer.compile_steps = real_compile_steps
    t0 = time.perf_counter()
    loss = step()
    return step, time.perf_counter() - t0, loss


def main() -> None:
    spec = sys.argv[1] if len(sys.argv) > 1 else "titans"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    print_machine()
    _, cold, loss_a = build(spec, False)
    eager_step, warm, loss_b = build(spec, False)
    compiled_step, warm_plus_opt, loss_c = build(spec, True)
    print(f"{spec}: first step, eager optimizer, cold cache {cold:.1f} s; warm cache {warm:.1f} s; "
          f"compiled optimizer, warm model cache {warm_plus_opt:.1f} s (the optimizer's cold compile: "
          f"{warm_plus_opt - warm:+.1f} s); first losses {loss_a:.6f} {loss_b:.6f} {loss_c:.6f}", flush=True)
    steps = {"eager_optimizer": eager_step, "compiled_optimizer": compiled_step}
    print_rounds(alternating_rounds(steps, lambda name: current.__setitem__(0, name), rounds),
                 "eager_optimizer", "compiled_optimizer")
    for name, ms in optimizer_ms.items():
        ms = ms[1:]  # the first round, still warming, left out as in print_rounds
        print(f"{name}: the optimizer's step, median {sorted(ms)[len(ms) // 2]:.1f} ms, all {[round(m, 1) for m in ms]}")


if __name__ == "__main__":
    main()
