"""A/B of Hope's compiled training step in loop mode "call" with a memory's own chunk loop unrolled
into the layer's graph (as before DeepMemory._call_chunks) and run as calls of one compiled chunk
step (the repo now), first pass frozen, in one process.

    python benchmarks/results/amd_epyc/first_pass/ab_memory_calls.py

"unrolled" patches `DeepMemory._can_call` to refuse every call; "chunk_calls" is the repo's.
Each variant gets a model and a compiled step of its own (`nestc bench`'s step, batch 4 x 128);
then the two step in turn, the order flipped every round. The first-step times printed are not
clean cold compiles (the second variant finds the block loop bodies the first compiled).
"""
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import alternating_rounds, compiled_steps, print_machine, print_rounds
from nestc.runtime.memory import DeepMemory

torch.set_num_threads(2)
print_machine()
repo_can_call = DeepMemory._can_call
variants = {"unrolled": lambda self, *a: False, "chunk_calls": repo_can_call}


def select(name):
    DeepMemory._can_call = variants[name]


steps = compiled_steps(variants, select, "call")
times = alternating_rounds(steps, select, rounds=8)
print_rounds(times, "unrolled", "chunk_calls")
