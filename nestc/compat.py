"""What the compiler can lower: checked by `nestc check` before any code is generated, so that an
unsupported combination is an error naming the box and the spec line, never a failure halfway
through training. The lowering rules themselves live in nestc/lower.py; this module asks them."""

from __future__ import annotations

from .diagnostics import Collector
from .program import Program


def unsupported(program: Program, errors: Collector | None = None) -> list:
    """Raise (or collect) what no rule can lower; returns the lowering's warnings (a box that
    runs token by token, say)."""
    from .lower import plan

    own = errors is None
    errors = errors or Collector(program.sources)
    plan(program, errors)
    if own:
        errors.raise_if_errors()
    return errors.warnings
