"""A/B of delta_rule_step's output layout on compiled Hope, in one process, steps alternating.

    python benchmarks/results/amd_epyc/profile/ab_delta_layout.py [call|unroll]

"main" is a362a88's delta_rule_step (the new state as a transposed view of S_Cᵀ), "own_layout"
the version that landed after it (S_C formed in its own [Dv, Dk] layout). Both are written out
here, so the script keeps measuring the same pair after the repo moves on. Each variant gets a
model of its own and its compiled graphs; then the two step in turn, eight rounds, the order
flipped every round, so that a drift of the machine weighs on both alike. The first round is
left out of the medians.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/
from ab_rounds import alternating_rounds, compiled_steps, print_rounds
import nestc.runtime.memory as mem
from nestc.runtime.kernels import delta as D
torch.set_num_threads(2)

def _chunk_solve(k, v, b, log_g, state_keys):
    """What both versions share: the chunk's decay, W = U - M S_0ᵀ [B, H, T, Dv] and K̃ [B, H, T, Dk]."""
    batch, heads, length, d_k = k.shape
    d_v = v.shape[-1]
    k_c = k.unsqueeze(2)
    b_c = b.expand(batch, heads, length).unsqueeze(2)
    idx = torch.arange(length, device=k.device)
    strict = idx[:, None] > idx[None, :]
    decay = None if log_g is None else D._ChunkDecay(log_g.expand(batch, heads, length).unsqueeze(2))
    lower = D._system(k_c, b_c, decay, strict)
    start = b_c if decay is None else b_c * decay.prev_from_start()
    end = k_c if decay is None else k_c * decay.end_minus()[..., None]
    rhs = torch.cat([v.unsqueeze(2), start[..., None] * state_keys.unsqueeze(2)], dim=-1)
    solved = D._solve_unit_lower(lower, rhs)
    pseudo = (solved[..., :d_v] - solved[..., d_v:])[:, :, 0]
    return decay, pseudo, end[:, :, 0]


def transposed(k, v, b, log_g, initial_state, state_keys):  # a362a88's delta_rule_step
    decay, pseudo, end = _chunk_solve(k, v, b, log_g, state_keys)
    state_t = initial_state.transpose(-1, -2)
    if decay is not None:
        state_t = decay.total()[..., None, None][:, :, 0] * state_t
    return D._plus_low_rank(state_t, end.transpose(-1, -2), pseudo).transpose(-1, -2)


def own_layout(k, v, b, log_g, initial_state, state_keys):  # the version that landed after it
    decay, pseudo, end = _chunk_solve(k, v, b, log_g, state_keys)
    carried = initial_state if decay is None else decay.total()[..., None, None][:, :, 0] * initial_state
    return D._plus_low_rank(carried, pseudo.transpose(-1, -2), end)


def select(name):
    mem.delta_rule_step = variants[name]


variants = {"main": transposed, "own_layout": own_layout}

if __name__ == "__main__":  # benchmarks/results/amd_epyc/one_rhs/ab_one_rhs.py imports own_layout
    # same result first (eager, random inputs)
    torch.manual_seed(0)
    B, H, T, dk, dv = 2, 3, 8, 16, 12
    k = torch.nn.functional.normalize(torch.randn(B, H, T, dk), dim=-1); v = torch.randn(B, H, T, dv)
    b = torch.rand(B, H, T); lg = -torch.rand(B, H, T) * 0.1; S0 = torch.randn(B, H, dv, dk)
    pres = S0 @ k.transpose(-1, -2)
    pres = pres.transpose(-1, -2)
    print("max diff", float((transposed(k, v, b, lg, S0, pres) - own_layout(k, v, b, lg, S0, pres)).abs().max()))

    loops = sys.argv[1] if len(sys.argv) > 1 else "call"  # nestc loop mode
    steps = compiled_steps(variants, select, loops)
    print_rounds(alternating_rounds(steps, select), 'main', 'own_layout')
