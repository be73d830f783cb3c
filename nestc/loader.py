"""Finding and reading specs: built-in names, paths, and the `use` graph between them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from . import ir
from .diagnostics import NestError, Pos, SourceMap, did_you_mean
from .parser import parse_nest
from .yaml_io import parse_yaml

SPEC_SUFFIXES = (".nest", ".yaml", ".yml")


def builtin_dir() -> Path:
    return Path(str(resources.files("nestc.specs")))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().iterdir() if p.suffix == ".nest")


def builtin_path(name: str) -> Path | None:
    p = builtin_dir() / f"{name}.nest"
    return p if p.is_file() else None


def parse_file(path: Path, sources: SourceMap) -> ir.Spec:
    display = _display(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise NestError.at(Pos(file=display), f"cannot read the spec: {err.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise NestError.at(Pos(file=display, line=line, col=1),
                           "the spec is not UTF-8 text",
                           hint="save the file as UTF-8") from None
    if path.suffix in (".yaml", ".yml"):
        return parse_yaml(text, display, sources)
    return parse_nest(text, display, sources)


def _display(path: Path) -> str:
    """A short, stable name for diagnostics: built-ins as specs/NAME.nest, others relative."""
    try:
        rel = path.resolve().relative_to(builtin_dir().resolve())
        return f"specs/{rel}"
    except ValueError:
        pass
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def locate(ref: str) -> Path:
    """A spec given on the command line: a path, or the name of a built-in spec."""
    p = Path(ref)
    if p.suffix in SPEC_SUFFIXES or os.sep in ref or "/" in ref:
        if not p.is_file():
            raise NestError.at(Pos(file=ref), "no such spec file",
                               hint=_builtin_hint(p.stem) or "check the path")
        return p
    found = builtin_path(ref)
    if found is None:
        if p.is_file():
            return p
        raise NestError.at(Pos(file=ref), f"`{ref}` is neither a spec file nor a built-in spec",
                           hint=_builtin_hint(ref) or "`nestc specs` lists the built-in specs")
    return found


def _builtin_hint(name: str) -> str | None:
    guess = did_you_mean(name, builtin_names())
    return f"{guess} (a built-in spec)" if guess else None


@dataclass
class Loaded:
    """A spec and, recursively, every spec it uses (each parsed once)."""

    root: ir.Spec
    path: Path
    specs: dict[str, tuple[ir.Spec, Path]] = field(default_factory=dict)  # key: resolved path
    sources: SourceMap = field(default_factory=SourceMap)

    def used(self, spec: ir.Spec, path: Path) -> list[tuple[ir.Use, ir.Spec, Path]]:
        out = []
        for u in spec.uses:
            target = _use_path(u, path)
            out.append((u, *self.specs[str(target.resolve())]))
        return out


# Where `use NAME` looks before the built-ins: a checkpoint restores its own copies of the
# specs it was trained from here (nestc/bundle.py), so a newer built-in cannot change it.
PREFERRED_DIRS: list[Path] = []


def _use_path(u: ir.Use, from_path: Path) -> Path:
    if u.is_path:
        return (from_path.parent / u.target)
    for folder in PREFERRED_DIRS:
        for suffix in SPEC_SUFFIXES:
            candidate = folder / f"{u.target}{suffix}"
            if candidate.is_file():
                return candidate
    found = builtin_path(u.target)
    if found is not None:
        return found
    # a sibling file next to the using spec also counts
    for suffix in SPEC_SUFFIXES:
        sibling = from_path.parent / f"{u.target}{suffix}"
        if sibling.is_file():
            return sibling
    raise NestError.at(u.pos, f"`use {u.target}`: no built-in spec or file of that name",
                       hint=_builtin_hint(u.target) or "`nestc specs` lists the built-ins; a file "
                            "is used with `use \"path/to/file.nest\"`")


def load(ref: str | Path, sources: SourceMap | None = None) -> Loaded:
    path = locate(str(ref)) if not isinstance(ref, Path) else ref
    sources = sources or SourceMap()
    loaded = Loaded(root=None, path=path, sources=sources)  # type: ignore[arg-type]
    loaded.root = _load_rec(path, loaded, stack=[])
    return loaded


def load_text(text: str, file: str, suffix: str = ".nest", base: Path | None = None) -> Loaded:
    """Load a spec given as text (tests, `nestc check -`); `use` paths resolve against `base`."""
    sources = SourceMap()
    spec = parse_yaml(text, file, sources) if suffix in (".yaml", ".yml") else parse_nest(text, file, sources)
    path = (base or Path.cwd()) / file
    loaded = Loaded(root=spec, path=path, sources=sources)
    loaded.specs[str(path.resolve())] = (spec, path)
    for u in spec.uses:
        try:
            target = _use_path(u, path)
        except NestError as err:
            raise sources.attach(err) from None
        _load_rec(target, loaded, stack=[(str(path.resolve()), u)])
    return loaded


def _load_rec(path: Path, loaded: Loaded, stack: list[tuple[str, ir.Use]]) -> ir.Spec:
    where = stack[-1][1].pos if stack else Pos(file=_display(path))
    what = f"`use {stack[-1][1].target}`" if stack else "the spec"
    try:
        key = str(path.resolve())
        is_file = path.is_file()
    except (OSError, ValueError) as err:  # a NUL byte, a name too long for the file system...
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise loaded.sources.attach(NestError.at(where, f"{what}: this path cannot be opened "
                                                 f"({reason})")) from None
    chain = [k for k, _ in stack]
    if key in chain:
        u = stack[-1][1]
        names = " -> ".join([Path(k).stem for k in chain[chain.index(key):]] + [path.stem])
        raise loaded.sources.attach(NestError.at(
            u.pos, f"`use` cycle: {names}", hint="a spec cannot use itself, directly or through "
            "other specs; move the shared parts into a third spec that both use"))
    if key in loaded.specs:
        return loaded.specs[key][0]
    if not is_file:
        if not stack:
            raise NestError.at(where, "no such spec file")
        u = stack[-1][1]
        raise loaded.sources.attach(NestError.at(u.pos, f"`use`: no such file `{u.target}`",
                                                 hint="paths are relative to the using spec"))
    spec = parse_file(path, loaded.sources)
    loaded.specs[key] = (spec, path)
    for u in spec.uses:
        try:
            target = _use_path(u, path)
        except NestError as err:
            raise loaded.sources.attach(err) from None
        _load_rec(target, loaded, stack + [(key, u)])
    return spec
