"""The work of inductor's retention-scaling kernel in Hope's call-mode chunk step, alone: two
weight states [64, 16384] (4 MB each) scaled by a per-row factor, into fresh tensors and into
preallocated ones, 200 calls after 20 untimed, alternated twice (2 threads).

    python benchmarks/results/amd_epyc/profile/microbench_scaling.py
"""

from __future__ import annotations

import time

import torch


def main() -> None:
    torch.set_num_threads(2)
    a, b, s = torch.randn(64, 16384), torch.randn(64, 16384), torch.rand(64, 1)
    out_a, out_b = torch.empty_like(a), torch.empty_like(b)

    def fresh():
        return a * s, b * s

    def preallocated():
        torch.mul(a, s, out=out_a)
        torch.mul(b, s, out=out_b)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per call (two states)")
    for fn in (fresh, preallocated, fresh, preallocated):
        for _ in range(20):
            fn()
        t = time.perf_counter()
        for _ in range(200):
            fn()
        print(f"{fn.__name__:>12}  {(time.perf_counter() - t) / 200 * 1e3:.3f}")


if __name__ == "__main__":
    main()
