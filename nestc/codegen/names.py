"""Identifiers in generated code. Spec names pass the grammar's NAME rule (letters, digits, `_`),
so they cannot inject code; these helpers also keep them clear of Python keywords and of the
names the generated module itself uses."""

from __future__ import annotations

import keyword
import re

# names the generated forward() uses for its own purposes
TAKEN = {"self", "state", "ctx", "x", "torch", "F", "nn", "L", "R", "mem", "K", "O", "T", "B",
         "s", "e", "W", "sl", "layer", "Tensor", "math", "dict", "list", "len", "range", "min",
         "max", "float", "int", "abs", "sum", "print", "type", "id", "input", "iter", "map"}


def py_name(name: str) -> str:
    """A spec name usable as a Python local: `in` -> `in_`, `lambda` -> `lambda_`."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not an identifier: {name!r}")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in TAKEN:
        return name + "_"
    return name


# module-level names of a generated module (its imports' aliases and its own globals), which a
# class made from a block or optimizer name must not shadow: a block named `r` became class `R`
# and replaced the runtime's ops module for every later line
MODULE_NAMES = {"torch", "F", "nn", "A", "L", "mem", "R", "O", "LanguageModel", "Model", "SPEC",
                "SPEC_SHA256", "OPTIONS", "PARAMS", "TRAIN", "OPTIMIZERS"}


def class_name(qualname: str) -> str:
    """hope_layer.cms_sequential -> HopeLayer_CmsSequential; `r` -> `R_`, `none` -> `None_`."""
    parts = [re.sub(r"(^|_)([a-z0-9])", lambda m: m.group(2).upper(), p) or p for p in qualname.split(".")]
    name = "_".join(parts)
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in MODULE_NAMES:
        return name + "_"
    return name


def one_line(text: str) -> str:
    """Spec text placed in a comment or docstring: printable, one line, no quote tricks: its
    backslashes doubled (in a docstring, `\\ ` or `\\N` would be an escape sequence: invalid,
    or another character), no triple quote, and no quote at its end (where a docstring's closing
    quotes follow)."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text)
    clean = clean.replace("\\", "\\\\").replace('"""', "'''").strip()
    return clean[:-1] + '\\"' if clean.endswith('"') else clean


class Sites:
    """Unique attribute names for the modules a block instantiates."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def new(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", base).strip("_") or "site"
        if base[0].isdigit():
            base = "_" + base
        name, i = base, 2
        while name in self.used or keyword.iskeyword(name):
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name
