"""Eager Hope's bmm calls timed one by one without the profiler (a dispatch mode around one
training step), per input shape and strides: what the profiler's per-op times are checked against.

    python benchmarks/results/amd_epyc/profile/bmm_timed_calls.py
"""
import collections
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from nestc.runtime.bench import build_step  # noqa: E402

torch.set_num_threads(2)
step, _ = build_step("hope", {}, 4, 128, compile=False)
step()
step()
stats = collections.defaultdict(lambda: [0, 0.0])


class TimeBmm(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is not torch.ops.aten.bmm.default:
            return func(*args, **(kwargs or {}))
        a, b = args[:2]
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        entry = stats[(tuple(a.shape), a.stride(), tuple(b.shape), b.stride())]
        entry[0] += 1
        entry[1] += time.perf_counter() - start
        return out


with TimeBmm():
    step()
for (sa, ta, sb, tb), (n, total) in sorted(stats.items(), key=lambda kv: -kv[1][1])[:12]:
    print(f"{total * 1e3:8.1f} ms {n:4d} calls {total / n * 1e3:6.2f} ms/call  A{sa} strides {ta}  B{sb} strides {tb}")
