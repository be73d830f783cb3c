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
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/
from ab_rounds import alternating_rounds, print_rounds
import nestc
import nestc.runtime.memory as mem
from nestc.runtime.bench import build_step
from nestc.runtime.train import make_loss_fns, signals

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

# the same numbers first: eager, one layer, the loss and every parameter's gradient of one
# batch from the same weights (an optimizer step would hide them: Adam divides round-off in
# near-zero gradients by their own size)
runs = {}
for name, fn in variants.items():
    mem.DeepMemory._inner = fn
    torch.manual_seed(0)
    compiled = nestc.compile("hope", {"n_layers": "1"})
    model = compiled.model(vocab=256)
    fns = make_loss_fns(model)
    x, y = torch.randint(0, 256, (2, 128)), torch.randint(0, 256, (2, 128))
    loss = fns.main(x, y, signals(model, fns, x, y))
    loss.backward()
    runs[name] = (float(loss.detach()), [p.grad for p in model.parameters() if p.grad is not None])
(l1, g1), (l2, g2) = runs.values()
print("eager, 1 layer: losses", l1, l2, "largest gradient difference relative to that gradient's largest entry",
      f"{max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g1, g2)):.1e}", flush=True)

steps = {}
for name, fn in variants.items():
    mem.DeepMemory._inner = fn
    step, _ = build_step("hope", {}, 4, 128, compile=True, loops=loops)
    t0 = time.perf_counter(); step(); print(name, "first step", round(time.perf_counter() - t0, 1), "s", flush=True)
    steps[name] = step


def select(name):
    mem.DeepMemory._inner = variants[name]


print_rounds(alternating_rounds(steps, select), 'function', 'fused')
