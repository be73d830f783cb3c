"""Make ``import nestc`` work from a peer's virtualenv, without installing nestc there.

The peer benchmarks run under the peer's own Python (``$PEERS_DIR/titans-venv`` or
``$PEERS_DIR/nl-venv``), where nestc is not installed. Putting the repository root on
``sys.path`` is not enough: pyproject.toml maps the subpackages ``nestc.runtime``,
``nestc.grammar`` and ``nestc.specs`` to the top-level folders ``runtime/``, ``grammar/`` and
``specs/`` (``[tool.setuptools] package-dir``), so only ``nestc`` itself would be found. It
would also expose ``runtime``, ``grammar``, ``tests`` ... as stray top-level packages.

``ensure_nestc()`` installs a small meta-path finder that reads that same ``package-dir``
table and maps each listed package to its folder, as setuptools' editable install does. The
repository root never goes on ``sys.path``. If ``nestc`` is already importable (for example
when the harness runs under nestc's own venv), nothing is changed.

nestc's import-time dependencies (lark, pydantic, ...) must be installed in the peer venv;
``setup_peers.sh`` does that.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import tomllib
from pathlib import Path

# benchmarks/peers/nestc_import.py -> repository root; override with NESTC_ROOT.
DEFAULT_ROOT = Path(__file__).resolve().parents[2]


class _PackageDirFinder(importlib.abc.MetaPathFinder):
    """Finds the packages named in a package-dir mapping; children resolve via __path__."""

    def __init__(self, mapping: dict[str, Path]):
        self.mapping = mapping

    def find_spec(self, fullname, path=None, target=None):
        folder = self.mapping.get(fullname)
        if folder is None:
            return None
        init = folder / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(folder)]
        )


def _package_dirs(root: Path) -> dict[str, Path]:
    with open(root / "pyproject.toml", "rb") as handle:
        pyproject = tomllib.load(handle)
    setuptools_cfg = pyproject.get("tool", {}).get("setuptools", {})
    mapping = {name: root / rel for name, rel in setuptools_cfg.get("package-dir", {}).items()}
    mapping.setdefault("nestc", root / "nestc")
    return mapping


def ensure_nestc(root: str | os.PathLike[str] | None = None) -> str:
    """Make ``nestc`` importable; return where it is imported from."""
    if "nestc" not in sys.modules and importlib.util.find_spec("nestc") is None:
        base = Path(root or os.environ.get("NESTC_ROOT") or DEFAULT_ROOT).resolve()
        if not (base / "pyproject.toml").is_file():
            raise ImportError(f"nestc source tree not found at {base} (set NESTC_ROOT)")
        sys.meta_path.insert(0, _PackageDirFinder(_package_dirs(base)))
    import nestc

    return os.path.dirname(nestc.__file__)
