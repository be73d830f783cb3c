"""A spec and everything it uses, as text: what a checkpoint stores to rebuild its model.

A checkpoint never stores code. It stores the spec files (the root and every spec it `use`s, and
the optimizer specs of its train section) and the `--set` overrides; loading compiles them again
with the same compiler, which executes nothing from the file.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import loader
from .diagnostics import NestError, Pos


def make_bundle(compiled) -> dict[str, Any]:
    """{"root": name, "files": {file name: text}, "overrides": {...}} for a compiled spec."""
    from .loader import load

    ld = load(compiled.program.path if Path(compiled.program.path).is_file()
              else loader.locate(compiled.program.name))
    files: dict[str, str] = {}
    for _key, (spec, path) in ld.specs.items():
        files[path.name] = path.read_text(encoding="utf-8")
    for opt in compiled.program.optimizers:
        if opt.program is not None:
            p = Path(opt.program.path)
            p = p if p.is_file() else (loader.builtin_path(opt.name) or p)
            if p.is_file():
                files[p.name] = p.read_text(encoding="utf-8")
    root = Path(ld.path).name
    return {"root": root, "files": dict(sorted(files.items())),
            "overrides": dict(getattr(compiled, "overrides", {}) or {})}


@contextmanager
def materialized(bundle: dict[str, Any], where: str = "the checkpoint"):
    """The bundle's files in a temporary folder that `use` and optimizers look in first."""
    try:
        files = {str(k): str(v) for k, v in bundle["files"].items()}
        root = str(bundle["root"])
    except (KeyError, TypeError, AttributeError):
        raise NestError.at(Pos(file=where), "the checkpoint's spec bundle is damaged",
                           hint="this checkpoint cannot be rebuilt; train again") from None
    with tempfile.TemporaryDirectory(prefix="nestc-bundle-") as tmp:
        folder = Path(tmp)
        for name, text in files.items():
            if "/" in name or "\\" in name or name.startswith("."):
                raise NestError.at(Pos(file=where), f"the checkpoint names a spec file `{name}`",
                                   hint="a bundle holds plain file names only")
            (folder / name).write_text(text, encoding="utf-8")
        loader.PREFERRED_DIRS.insert(0, folder)
        try:
            yield folder / root
        finally:
            loader.PREFERRED_DIRS.remove(folder)


def compile_bundle(bundle: dict[str, Any], where: str = "the checkpoint"):
    """Compile the model a checkpoint was trained from."""
    import nestc

    with materialized(bundle, where) as root:
        return nestc.compile(root, dict(bundle.get("overrides") or {}))
