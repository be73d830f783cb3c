"""Plugin for anchor_bench.py that turns on flush-to-zero / denormals-are-zero and adds no rows.

Why: in nested-learning's hope_selfmod online step, the fast self-mod memories are multiplied
by a retention gate alpha = sigmoid(.) (about 0.5 at init) at every token, so within one
128-token sequence their weights decay into the float32 subnormal range. Intel CPUs process
subnormal operands very slowly, which makes the measured step several times slower and the
number depend on the CPU vendor (see results/SUMMARY.md). Loading this plugin gives the
number with ``torch.set_flush_denormal(True)``; the argv recorded in the JSON shows it.

It runs at plugin load, before any row is built and before torch's intra-op thread pool
starts, so the worker threads inherit the setting.
"""

from __future__ import annotations

import torch

if not torch.set_flush_denormal(True):
    raise RuntimeError("torch.set_flush_denormal(True) is not supported on this CPU")


def anchor_bench_rows(ctx):  # noqa: ARG001 - no rows, only the side effect above
    return []
