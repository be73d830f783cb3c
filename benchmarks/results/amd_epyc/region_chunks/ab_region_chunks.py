"""A/B of Hope's compiled training step in loop mode "region": the loop as it was at 28c3e2f
(the first chunk inlined into the graph, the last chunk with a backward of its own) against the
loop in which every chunk calls one region, forward and backward (`runtime/ops.py`
`_region_loop`, `_TiedToState`, `_ContiguousGrad`), in one process.

    python benchmarks/results/amd_epyc/region_chunks/ab_region_chunks.py [ROUNDS] [FIRST_PASS]

ROUNDS 8 by default; FIRST_PASS frozen (default) or shared. Each variant gets its own model
(same seed, so the same weights) and graphs: `nestc bench`'s step at batch 4 x 128, compiled by
a first step whose time (a cold compile for the first variant only if the inductor cache is
empty; kernels the two share come from the cache for the second) and loss are printed. The
chunk loop is read while a graph is traced, so `select` puts the variant's loop in place before
each step. Both variants compile with `subgraph_donation`'s fix (prepare_inductor), which the
earlier loop did not need in Hope's graphs but does not change.
"""
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import alternating_rounds, compiled_steps, print_machine, print_rounds
from nestc.runtime import ops
from nestc.runtime.inductor_setup import prepare_inductor

torch.set_num_threads(2)
prepare_inductor()
NEW_LOOP = ops._region_loop


@torch.compiler.nested_compile_region
def _region_call_28c3e2f(owner, name: str, state: dict, piece: dict, carried: tuple, outputs: tuple, same: tuple):
    """ops._region_call as at 28c3e2f."""
    st, out = getattr(owner, name)(state, piece, False)
    before = ops._Carry(state, carried).tensors()
    new = ops._Carry(st, carried).tensors()
    new = [x.clone() if any(x is y for y in before) else x for x in ops._distinct(new, same)]
    return (*new, *(out[k] for k in outputs))


def _region_loop_28c3e2f(body, state, inputs, period, carried, outputs):
    """ops._region_loop as at 28c3e2f: the first chunk reads the initial state as it is."""
    t = next(iter(inputs.values())).shape[1]
    tree = ops._Carry(state, carried)
    carry = {k: state[k] for k in carried}
    pattern = ops._alias_pattern(tree.tensors())
    n = sum(p == j for j, p in enumerate(pattern))
    parts = {k: [] for k in outputs}
    for piece in ops._whole_chunks(inputs, period):
        flat = _region_call_28c3e2f(body.__self__, body.__name__, dict(state, **carry), piece, tuple(carried),
                                    outputs, pattern)
        carry = tree.rebuild(ops._with_aliases(flat[:n], pattern))
        for k, v in zip(outputs, flat[n:]):
            parts[k].append(v * 1.0)
    return ops._loop_result(state, carry, carried, t, parts)


def select(name: str) -> None:
    ops._region_loop = NEW_LOOP if name == "one_region" else _region_loop_28c3e2f


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    first_pass = sys.argv[2] if len(sys.argv) > 2 else "frozen"
    print_machine()
    print(f"hope, compiled training step, loops region, batch 4 x 128, first pass {first_pass}")
    names = ("at_28c3e2f", "one_region")
    steps = compiled_steps(names, select, "region", options={n: {"first_pass": first_pass} for n in names})
    with torch._dynamo.config.patch(error_on_recompile=True):  # each runs its own graphs
        times = alternating_rounds(steps, select, rounds)
    print_rounds(times, "at_28c3e2f", "one_region")
