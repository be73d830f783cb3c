"""The carried-state update of Hope's fused memories on its own, outside any step or profiler:
baddbmm of a [64, R, S] state with a rank-8 product, against its parts (the bmm, a plain clone).

    python benchmarks/results/amd_epyc/profile/microbench_baddbmm.py
"""
import time

import torch

torch.set_num_threads(2)


def ms(f, n=50):
    for _ in range(5):
        f()
    start = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - start) / n * 1e3


for r, s in [(64, 256), (256, 64)]:
    state, a, b = torch.randn(64, r, s), torch.randn(64, 8, r).transpose(-1, -2), torch.randn(64, 8, s)
    print(f"state [64, {r}, {s}]: baddbmm {ms(lambda: torch.baddbmm(state, a, b)):.2f} ms, "
          f"bmm {ms(lambda: torch.bmm(a, b)):.2f} ms, state + bmm {ms(lambda: state + torch.bmm(a, b)):.2f} ms, "
          f"clone {ms(lambda: state.clone()):.2f} ms")
