"""The installed package is complete: a wheel built from pyproject.toml holds every subpackage the
source tree has (a missing entry in `packages` passes every other test under the editable
install, which finds the folders directly, and breaks `pip install nestc`)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _listed() -> tuple[set[str], dict[str, str]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(cfg["packages"]), cfg["package-dir"]


def test_every_source_package_is_listed():
    listed, dirs = _listed()
    found = set()
    for name, folder in dirs.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found, "no packages found under package-dir"
    missing = sorted(found - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"


def test_every_listed_package_exists():
    listed, dirs = _listed()
    for name in listed:
        # the longest package-dir entry that is the package or one of its parents
        root = max((p for p in dirs if name == p or name.startswith(p + ".")), key=len)
        folder = ROOT / dirs[root] / Path(*name[len(root):].lstrip(".").split(".") if name != root else ())
        assert (folder / "__init__.py").exists(), f"{name}: no {folder / '__init__.py'}"
