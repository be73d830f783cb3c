"""A/B of Hope's compiled training step with the first pass frozen (graphs of its own, the
default) and shared (through the real pass's graphs), both in loop mode "call", in one process.

    python benchmarks/results/amd_epyc/first_pass/ab_first_pass.py

Each variant gets a model and a compiled step of its own (`nestc bench`'s step, batch 4 x 128);
then the two step in turn, the order flipped every round. The first-step times printed here are
not cold compiles: the variant built second finds the chunk bodies the first one compiled (same
classes, same options). Cold compiles come from `compile_phases.py` and `nestc bench`.
"""
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import alternating_rounds, compiled_steps, print_machine, print_rounds

torch.set_num_threads(2)
print_machine()
names = ("frozen", "shared")
steps = compiled_steps(names, lambda name: None, "call", options={n: {"first_pass": n} for n in names})
times = alternating_rounds(steps, lambda name: None, rounds=8)
print_rounds(times, "shared", "frozen")
