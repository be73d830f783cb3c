"""Helpers shared by the tests of nestc's inductor adjustments (runtime/inductor_*.py)."""

from __future__ import annotations

import pytest

from nestc.runtime.inductor_caches import linear_stride, torch_stride_at_vec_range

sizevars = pytest.importorskip("torch._inductor.sizevars")
cpp = pytest.importorskip("torch._inductor.codegen.cpp")


def recorded_strides(run):
    """Every distinct (index, var, vec_length) inductor asks the stride helper about while `run()`
    compiles, with torch's own answer (which is what inductor gets meanwhile: neither the
    shortcut nor the wide caches are in the way)."""
    original = torch_stride_at_vec_range()
    asked = {}

    def recording(index, var, vec_length=None):
        asked[(index, var, vec_length)] = answer = original(index, var, vec_length)
        return answer

    resized = sizevars.stride_at_vec_range
    sizevars.stride_at_vec_range = cpp.stride_at_vec_range = recording
    try:
        run()
    finally:
        sizevars.stride_at_vec_range = cpp.stride_at_vec_range = resized
    return asked


def assert_linear_stride_agrees(asked: dict) -> None:
    """`linear_stride` reads most of what a real step asks (plain strides) and, wherever it
    answers, answers as torch does, down to the type."""
    read_off = {key: (linear_stride(key[0], key[1]), answer) for key, answer in asked.items()}
    eligible = {key: pair for key, pair in read_off.items() if pair[0] is not None}
    assert len(eligible) > 0.5 * len(asked) > 10
    for (index, var, _), (mine, answer) in eligible.items():
        assert mine == answer and type(mine) is type(answer), (index, var)
