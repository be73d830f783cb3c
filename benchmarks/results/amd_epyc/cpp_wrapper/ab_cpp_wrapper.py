"""A/B of inductor's C++ graph wrapper (`torch._inductor.config.cpp_wrapper`) against its default
Python wrapper, on a built-in's compiled training step, in one process.

    python benchmarks/results/amd_epyc/cpp_wrapper/ab_cpp_wrapper.py [SPEC]   # titans by default

Each variant gets a model and graphs of its own (`nestc bench`'s step at the spec's batch and
length: both passes, backward, clipping, the optimizer step), compiled with the setting on or
off; the setting is read when a graph compiles, so after the first steps the two run side by
side. Prints each first step (the compile; the first variant may find graphs of an earlier run
in the FX cache, the second writes the C++ wrapper anew), then 11 alternating rounds.
"""
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import alternating_rounds, print_machine, print_rounds
import torch._inductor.config as inductor_config
from nestc.runtime.bench import build_step
from nestc.runtime.inductor_setup import prepare_inductor

torch.set_num_threads(2)
prepare_inductor()

if __name__ == "__main__":
    from nestc.resolve import resolve_ref

    spec = sys.argv[1] if len(sys.argv) > 1 else "titans"
    train = resolve_ref(spec, {}).train
    batch, seq = int(train.get("batch", 4)), int(train.get("seq_len", 128))
    print_machine()
    print(f"{spec}, compiled training step, batch {batch} x {seq}")
    steps = {}
    for name, on in (("python_wrapper", False), ("cpp_wrapper", True)):
        inductor_config.cpp_wrapper = on
        step, _ = build_step(spec, {}, batch, seq, compile=True)
        t0 = time.perf_counter()
        loss = step()
        print(f"{name}: first step (compiles) {time.perf_counter() - t0:.1f} s, loss {loss:.7f}", flush=True)
        steps[name] = step
    inductor_config.cpp_wrapper = False
    print_rounds(alternating_rounds(steps, lambda name: None, 11), "python_wrapper", "cpp_wrapper")
