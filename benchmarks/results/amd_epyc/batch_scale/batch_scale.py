"""The compiled Titans LMM layer of the peer comparison at batch 4, 1 and 2 (T 512, d 256, 4
heads, chunk 64): does a step run faster per sequence when each batched product holds fewer
(sequence, head) items, whose memory states then fit in the L2 caches?

    python benchmarks/results/amd_epyc/batch_scale/batch_scale.py

Each batch size gets its own layer and graphs (ab_rounds.titans_layer_step), then the three
step in turn, 7 rounds; medians and the time per four sequences are printed.
"""
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import titans_layer_step

torch.set_num_threads(2)
steps = {}
for b in (4, 1, 2):
    _, step = titans_layer_step(True, batch=b)
    t = time.perf_counter()
    step()
    print(f"B{b} first {time.perf_counter() - t:.1f}s", flush=True)
    for _ in range(3):
        step()
    steps[b] = step
res = {b: [] for b in steps}
for r in range(7):
    for b, step in steps.items():
        t = time.perf_counter()
        step()
        res[b].append((time.perf_counter() - t) * 1000)
for b, v in res.items():
    v.sort()
    print(f"B{b}: median {v[3]:.1f} ms; per 4 items {v[3] * 4 / b:.1f} ms; all {[round(x, 1) for x in v]}")
