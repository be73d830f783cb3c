"""The A/B of ab_state_grad.py (the layout of a state's read gradient) on compiled Hope's full
training step (`nestc bench hope`'s step, batch 4 x 128, chunk loops unrolled), in one process.

    python benchmarks/results/amd_epyc/state_grad/ab_state_grad_hope.py

Each variant gets a model of its own and its compiled graphs; then the two step in turn, eight
rounds, the order flipped every round (benchmarks/ab_rounds.py). Before timing, one eager step of
each on the same weights and batch checks the same loss and gradients (eager takes einsum's
gradient in both).
"""
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
sys.path.insert(0, str(HERE))
from ab_rounds import alternating_rounds, compiled_steps, print_rounds, same_numbers
from ab_state_grad import select, variants  # noqa: E402  (the two _times, and the swap)

torch.set_num_threads(2)
same_numbers(variants, select)
steps = compiled_steps(variants, select, "unroll")
print_rounds(alternating_rounds(steps, select), "einsum_grad", "state_grad")
