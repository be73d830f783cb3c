"""A/B of the layout of a memory state's gradient from its reads, on the compiled Titans LMM layer,
in one process.

    python benchmarks/results/amd_epyc/state_grad/ab_state_grad.py

"einsum_grad" is `_times` (runtime/memory.py) as it was at 3792d89: W x per token by einsum,
whose autograd gives W's gradient as a [in, out] buffer viewed as [out, in]. "state_grad" is the
repo's: under torch.compile, `_StateTimes`, the same product with the gradient computed as gᵀ x,
row-major like the state. The layer is anchor_rows.py's (benchmarks/ab_rounds.py
`titans_layer_step`); each variant gets a layer and graphs of its own, then the two step in
turn, the order flipped every round. An eager step of each first checks the same numbers (eager
runs take the einsum in both, so they must agree exactly; the compiled forms are compared with
eager by tests/runtime/test_state_times.py).
"""
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import print_rounds, titans_layer_rounds
import nestc.runtime.memory as mem
from nestc.runtime.inductor_setup import prepare_inductor

torch.set_num_threads(2)
prepare_inductor()
state_grad = mem._times


def einsum_grad(w, x):  # _times at 3792d89
    if isinstance(w, mem.PendingUpdates):
        return w.times(x)
    if w.stride(0) == 0:
        return torch.einsum("bhnd,hed->bhne", x, w[0])
    return torch.einsum("bhnd,bhed->bhne", x, w)


variants = {"einsum_grad": einsum_grad, "state_grad": state_grad}


def select(name):
    mem._times = variants[name]  # mlp_forward calls it by this module-level name


if __name__ == "__main__":
    print_rounds(titans_layer_rounds(variants, select), "einsum_grad", "state_grad")
