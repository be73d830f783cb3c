"""A/B of a general-rule box's compiled training step: its tokens as one scan (the default,
loop mode "unroll") against one region call per token (loop mode "region"), in one process.

    python benchmarks/results/amd_epyc/general_rule/ab_scan_region.py [SEQ_LEN] [ROUNDS]

SEQ_LEN 64 and ROUNDS 10 by default. Each variant gets its own model (same seed, so the same
weights) and graphs: `nestc bench`'s step of examples/adam_memory.nest at batch 4 x SEQ_LEN,
compiled by a first step whose time and loss are printed. The loop mode is read while a graph
is traced, so `select` puts the variant's mode in place before each of its steps.
"""
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import alternating_rounds, print_machine, print_rounds
from nestc.runtime import ops
from nestc.runtime.bench import build_step

torch.set_num_threads(2)
seq_len = int(sys.argv[1]) if len(sys.argv) > 1 else 64
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
spec = str(HERE.parents[3] / "examples" / "adam_memory.nest")
modes = {"scan": "unroll", "region": "region"}


def select(name: str) -> None:
    ops.set_loop_mode(modes[name])


print_machine()
print(f"examples/adam_memory.nest, batch 4 x {seq_len}, {rounds} rounds")
steps = {}
for name in modes:
    step, _ = build_step(spec, {}, 4, seq_len, compile=True, loops=modes[name])
    t0 = time.perf_counter()
    loss = step()
    print(f"{name}: first step {time.perf_counter() - t0:.1f} s, loss {loss:.7f}")
    steps[name] = step
times = alternating_rounds(steps, select, rounds=rounds)
print_rounds(times, slower="scan", faster="region")
