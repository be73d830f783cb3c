"""A/B of Hope's compiled training step with chunk loops unrolled (the default) against the same
step with each chunk a call of one compiled region (`--loops region`), in one process.

    python benchmarks/results/amd_epyc/hope_modes/ab_region_unroll.py [ROUNDS]   # 8 by default

Each variant gets its own model (same seed, so the same weights) and graphs: `nestc bench`'s
step at batch 4 x 128 (both passes, the first one frozen; backward, clipping, the optimizer
step), compiled by a first step whose time and loss are printed. The loop mode is read while a
graph is traced, so `select` sets it before each variant's step and each runs the graphs it
compiled. Then the two step in alternating rounds, the order flipped every round.
"""
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import alternating_rounds, compiled_steps, print_machine, print_rounds
from nestc.runtime.inductor_setup import prepare_inductor
from nestc.runtime.ops import set_loop_mode

torch.set_num_threads(2)
prepare_inductor()

if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    print_machine()
    print("hope, compiled training step, batch 4 x 128, first pass frozen")
    modes = ("unroll", "region")
    steps = compiled_steps(modes, set_loop_mode, "unroll", options={m: {"loops": m} for m in modes})
    with torch._dynamo.config.patch(error_on_recompile=True):  # each runs its own graphs
        times = alternating_rounds(steps, set_loop_mode, rounds)
    print_rounds(times, "unroll", "region")
