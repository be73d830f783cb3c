"""A/B of delta_rule_step's solve: two right-hand sides then a difference, or their difference
solved once, on compiled Hope, in one process.

    python benchmarks/results/amd_epyc/one_rhs/ab_one_rhs.py [unroll|call]

"two_rhs" is delta_rule_step as it was at ca24947 (`own_layout` of ../profile/ab_delta_layout.py):
it solved (I + A) X = [V, diag(b Γ) K S_0ᵀ] for both blocks, of width 2 Dv, and subtracted the
halves. "one_rhs" is the repo's: the same W = (I + A)⁻¹ (V - diag(b Γ) K S_0ᵀ), by linearity
one solve of width Dv, with no concatenation.
Each variant gets a model of its own and its compiled graphs; then the two step in turn, eight
rounds, the order flipped every round (benchmarks/ab_rounds.py). Before timing, one eager step of
each on the same weights and batch checks that they compute the same loss and gradients.
"""
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
sys.path.insert(0, str(HERE.parent / "profile"))
from ab_delta_layout import own_layout as two_rhs  # ca24947's delta_rule_step, written out there
from ab_rounds import alternating_rounds, compiled_steps, print_rounds, same_numbers
import nestc.runtime.memory as mem
from nestc.runtime.kernels import delta

torch.set_num_threads(2)
loops = sys.argv[1] if len(sys.argv) > 1 else "unroll"  # nestc loop mode
variants = {"two_rhs": two_rhs, "one_rhs": delta.delta_rule_step}


def select(name):
    mem.delta_rule_step = variants[name]  # memory.py calls it by this module-level name


same_numbers(variants, select)  # the same loss and gradients first (eager, one layer)
steps = compiled_steps(variants, select, loops)
print_rounds(alternating_rounds(steps, select), "two_rhs", "one_rhs")
