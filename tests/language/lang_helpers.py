"""Helpers shared by the language tests (tests/language/test_lang_*.py).

The file name is unique on purpose: the test folders have no `__init__.py`, so pytest puts this
folder on sys.path and `import lang_helpers` finds it without clashing with other test folders.
"""

from __future__ import annotations

from pathlib import Path

from nestc import compat, levels
from nestc.diagnostics import Diagnostic, NestError
from nestc.levels import LevelGraph
from nestc.loader import load_text
from nestc.resolve import resolve


def check_text(text: str, suffix: str = ".nest", base: Path | None = None,
               overrides: dict[str, str] | None = None, name: str = "bad") -> LevelGraph:
    """The whole pipeline `nestc check` runs: parse, resolve, level graph, compiler support."""
    loaded = load_text(text, name + suffix, suffix=suffix, base=base)
    program = resolve(loaded, overrides)
    graph = levels.build(program)
    compat.unsupported(program)
    return graph


def diagnose(text: str, suffix: str = ".nest", base: Path | None = None,
             overrides: dict[str, str] | None = None) -> list[Diagnostic]:
    """The diagnostics of the whole pipeline on `text` ([] when it checks clean)."""
    try:
        check_text(text, suffix, base, overrides)
    except NestError as err:
        return err.diagnostics
    return []


def triples(diags: list[Diagnostic]) -> list[tuple[int, int, str]]:
    return [(d.pos.line, d.pos.col, d.message) for d in diags]


# A model section for small test specs: one layer of block `layer`, width 16.
MODEL_16 = """
model {
    dim 16
    repeat 1 { layer }
}
"""
