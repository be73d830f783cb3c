"""The cadence audit: record every commit of every in-context memory during a run, to show that
each level really updates at its frequency (a declared frequency that is never enforced is a
known failure mode of Nested Learning reimplementations)."""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

from torch import nn

from .memory import DeepMemory


@contextmanager
def record_commits(model: nn.Module):
    """Yield {(layer module path, box name): [token positions of its commits]} while active."""
    log: dict[tuple[str, str], list[int]] = defaultdict(list)
    touched = []
    for path, module in model.named_modules():
        if isinstance(module, DeepMemory):
            module.recorder = (lambda name, pos, path=path: log[(path, name)].append(pos))
            touched.append(module)
    try:
        yield log
    finally:
        for module in touched:
            module.recorder = None
