"""The one error type of nestc.

Every problem a user can cause -- a malformed spec, a bad CLI flag, a broken data file or
checkpoint -- becomes a :class:`NestError` holding one or more :class:`Diagnostic`s. Each
diagnostic names a file, a line and a column, says what is wrong in the language's own words and
how to fix it. The CLI prints them (all of them, not only the first) and exits with code 2.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from pydantic import BaseModel, ConfigDict


class Pos(BaseModel):
    """A place in a source file (1-based line and column)."""

    model_config = ConfigDict(frozen=True)

    file: str = "<input>"
    line: int = 0
    col: int = 0
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}" if self.line else self.file


NOWHERE = Pos()


@dataclass
class Diagnostic:
    message: str
    pos: Pos = NOWHERE
    hint: str | None = None
    severity: str = "error"  # "error" or "warning"
    source_line: str | None = None  # the text of pos.line, for the caret excerpt

    def excerpt(self) -> str | None:
        """The offending line with a caret under the column, or None without source."""
        if not self.source_line or not self.pos.line:
            return None
        line = self.source_line.rstrip("\r\n").expandtabs(4)
        col = max(self.pos.col, 1)
        width = 1
        if self.pos.end_line == self.pos.line and self.pos.end_col > self.pos.col:
            width = self.pos.end_col - self.pos.col
        width = max(1, min(width, max(len(line) - col + 1, 1)))
        return f"{line}\n{' ' * (col - 1)}{'^' * width}"

    def render_plain(self) -> str:
        parts = [f"{self.pos}: {self.severity}: {self.message}"]
        ex = self.excerpt()
        if ex:
            parts.append("\n".join("    " + ln for ln in ex.split("\n")))
        if self.hint:
            parts.append(f"  hint: {self.hint}")
        return "\n".join(parts)


@dataclass
class NestError(Exception):
    """One or more diagnostics. Raised for every user-caused problem."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.render_plain())

    @classmethod
    def at(cls, pos: Pos | None, message: str, hint: str | None = None) -> "NestError":
        return cls([Diagnostic(message, pos or NOWHERE, hint)])

    @property
    def first(self) -> Diagnostic:
        return self.diagnostics[0]

    def render_plain(self) -> str:
        return "\n".join(d.render_plain() for d in self.diagnostics)

    def __str__(self) -> str:  # dataclass would otherwise print the field list
        return self.render_plain()


class Collector:
    """Gathers diagnostics through a pass so that all errors are reported, not only the first."""

    def __init__(self, sources: "SourceMap | None" = None) -> None:
        self.items: list[Diagnostic] = []
        self.sources = sources

    def error(self, pos: Pos | None, message: str, hint: str | None = None) -> None:
        self.items.append(self._make(pos, message, hint, "error"))

    def warning(self, pos: Pos | None, message: str, hint: str | None = None) -> None:
        self.items.append(self._make(pos, message, hint, "warning"))

    def extend(self, err: NestError) -> None:
        for d in err.diagnostics:
            if self.sources and d.source_line is None:
                d.source_line = self.sources.line(d.pos)
            self.items.append(d)

    def _make(self, pos, message, hint, severity) -> Diagnostic:
        pos = pos or NOWHERE
        line = self.sources.line(pos) if self.sources else None
        return Diagnostic(message, pos, hint, severity, line)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "warning"]

    def raise_if_errors(self) -> None:
        errs = self.errors
        if errs:
            # One place, one error: a declaration shared by several boxes (`box a, b : ...`,
            # `like`) would otherwise report the same mistake once per box.
            seen, unique = set(), []
            for d in errs:
                key = (d.pos.file, d.pos.line, d.pos.col) if d.pos.line else (d.pos.file, d.message)
                if key not in seen:
                    seen.add(key)
                    unique.append(d)
            # stable order: by file, line, column, then message
            unique.sort(key=lambda d: (d.pos.file, d.pos.line, d.pos.col, d.message))
            raise NestError(unique)


_YAML_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def source_lines(text: str, yaml: bool = False) -> list[str]:
    """The lines of a source text, numbered as its parser numbers them: lark ends a line only at
    `\n` (str.splitlines would also break at U+2028, form feeds and others, shifting every later
    line), PyYAML also at `\r`, U+0085, U+2028 and U+2029. A final line break ends the last line
    rather than starting an empty one, and a `\r` before `\n` is not part of the line."""
    lines = _YAML_BREAKS.split(text) if yaml else text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


class SourceMap:
    """Text of every source file seen, so diagnostics can quote the offending line."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}

    def add(self, file: str, text: str, yaml: bool = False) -> None:
        self._lines[file] = source_lines(text, yaml)

    def line(self, pos: Pos) -> str | None:
        lines = self._lines.get(pos.file)
        if not lines or not (1 <= pos.line <= len(lines)):
            return None
        return lines[pos.line - 1]

    def attach(self, err: NestError) -> NestError:
        for d in err.diagnostics:
            if d.source_line is None:
                d.source_line = self.line(d.pos)
        return err


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A "did you mean" hint for an unknown name, or None when nothing is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    if not close:
        return None
    if len(close) == 1:
        return f"did you mean `{close[0]}`?"
    return "did you mean " + ", ".join(f"`{c}`" for c in close[:-1]) + f" or `{close[-1]}`?"


def plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}" + ("es" if word.endswith(("s", "x", "sh", "ch")) else "s")


def format_list(items: Sequence[str]) -> str:
    items = [f"`{i}`" for i in items]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]
