"""What AOTAutograd traces for a compiled region's backward, for the tests of loop mode "region"
(tests/runtime/test_chunk_loop.py, tests/compile/test_compile_specs.py). pytest puts tests/ on the
import path (it holds a conftest.py), so both folders import it by name."""

from __future__ import annotations

import importlib


def backward_variants(monkeypatch) -> list[tuple[str, int]]:
    """The backward variants AOTAutograd traces for each region, as (identifier, suffix) pairs in a
    list that fills while the test runs: suffix 0 for a region's first backward, 1 and up for each
    further one (torch's "traced multiple backward graphs" warning)."""
    hop = importlib.import_module("torch._higher_order_ops.invoke_subgraph")
    variants = []
    real = hop.warn_and_trace_duplicate_backward

    def spy(identifier, suffix, *args):
        variants.append((identifier, suffix))
        return real(identifier, suffix, *args)

    monkeypatch.setattr(hop, "warn_and_trace_duplicate_backward", spy)
    return variants
