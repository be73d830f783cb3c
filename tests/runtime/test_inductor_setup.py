"""The two adjustments of runtime/inductor_setup.py that reach into inductor's code generation
(skipping empty vector tails, runtime/inductor_tails.py; the plain-stride shortcut and wide index
caches, runtime/inductor_caches.py) must leave the code of a real compiled training step as it
is. Each module's own tests check small graphs; this checks a built-in's whole step, the one with
the most loops (Titans MAC), with one compile per setting."""

from __future__ import annotations

import pytest

from inductor_helpers import assert_linear_stride_agrees, recorded_strides
from nestc.runtime import inductor_tails
from nestc.runtime.inductor_caches import set_cache_size, widen
from small_models import compiled_step_code

SEQ = 8  # two of the shrunk model's 4-token chunks: every kernel of the unrolled loop, once


@pytest.mark.slow
def test_tails_and_the_stride_shortcut_leave_a_built_in_steps_generated_code_unchanged():
    both_on = compiled_step_code("titans_mac", SEQ)  # as every nestc compile runs
    inductor_tails.restore()
    try:
        tails_written = compiled_step_code("titans_mac", SEQ)
    finally:
        assert inductor_tails.skip_empty_tails()
    found = {}
    try:
        assert set_cache_size(1 << 16, shortcut=False)
        # torch's own stride answers throughout, each question recorded
        asked = recorded_strides(lambda: found.update(code=compiled_step_code("titans_mac", SEQ)))
    finally:
        widen()
    assert "cpp_fused" in both_on
    assert tails_written == both_on
    assert found["code"] == both_on
    assert_linear_stride_agrees(asked)  # ... on every question this step asks
