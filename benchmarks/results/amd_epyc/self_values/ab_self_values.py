"""A/B of self-generated values read alongside the keys, on compiled Hope, in one process.

    python benchmarks/results/amd_epyc/self_values/ab_self_values.py [call|unroll]

"function" reads a memory the way the code before `SelfValues` did: the self-generated values
v̂ = M(v) through a function of the weights, and a separate query through a product of its own,
each its own pass over the state. "fused" is the repo's `DeepMemory._inner`: the values' inputs
and the query go through the keys' products (`mlp_forward`'s extra tokens). Each variant gets a
model of its own and its compiled graphs; then the two step in turn, eight rounds, the order
flipped every round, so that a drift of the machine weighs on both alike. The first round is
left out of the medians. Before timing, one eager step of each on the same weights and batch
checks that they compute the same loss and gradients.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/
from ab_rounds import alternating_rounds, compiled_steps, print_rounds, same_numbers
import nestc.runtime.memory as mem

torch.set_num_threads(2)
loops = sys.argv[1] if len(sys.argv) > 1 else "call"  # nestc loop mode
fused = mem.DeepMemory._inner


def function(self, W, k, target, grad, query=None):
    """The reads as separate products: v̂ = M(v) by a function of W, the query by its own read."""
    if isinstance(target, mem.SelfValues):
        inputs, stop = target.inputs, target.stop
        target = lambda W: self.apply(W, inputs).detach() if stop else self.apply(W, inputs)  # noqa: E731
    pred, layers, pres, _ = fused(self, W, k, target, grad, None)
    return pred, layers, pres, (self.apply(W, query) if query is not None else None)


variants = {"function": function, "fused": fused}


def select(name):
    mem.DeepMemory._inner = variants[name]


same_numbers(variants, select)  # the same loss and gradients first (eager, one layer)
steps = compiled_steps(variants, select, loops)
print_rounds(alternating_rounds(steps, select), 'function', 'fused')
