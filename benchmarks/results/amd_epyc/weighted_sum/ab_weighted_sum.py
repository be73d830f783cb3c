"""A/B of how a memory's state update sums its chunk's weighted gradients, on the compiled Titans
LMM layer, in one process.

    python benchmarks/results/amd_epyc/weighted_sum/ab_weighted_sum.py

"einsum_sum" is the sum as the repo had it until this change, einsum("bhn,bhne,bhnd->bhed", w,
d, a): the weight on the errors d. "weighted_sum" is the repo's `weighted_sum`
(runtime/memory.py): dᵀ (w∘a), the weight on the layer inputs and d's transpose a view. The
layer is anchor_rows.py's (benchmarks/ab_rounds.py `titans_layer_step`); each variant gets a
layer and graphs of its own, then the two step in turn, the order flipped every round. An eager
step of each first prints how far apart their outputs and gradients are (the two multiply in a
different order, so they agree to rounding; tests/runtime/test_weighted_sum.py holds the new
form to the sum written out token by token).
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


def einsum_sum(w, d, a):  # the state updates' sums before this change
    return torch.einsum("bhn,bhne,bhnd->bhed", w, d, a)


variants = {"einsum_sum": einsum_sum, "weighted_sum": mem.weighted_sum}


def select(name):
    mem.weighted_sum = variants[name]  # _advance calls it by this module-level name


if __name__ == "__main__":
    print_rounds(titans_layer_rounds(variants, select), "einsum_sum", "weighted_sum")
