#!/usr/bin/env bash
# Create (or bring up to date) the two peer virtualenvs that anchor_bench.py measures:
#
#   $PEERS_DIR/titans-venv   titans-pytorch==0.5.5  (lucidrains)
#   $PEERS_DIR/nl-venv       nested-learning==0.2.0 (kmccleary3301)
#
# each with torch==2.13.0 (CPU build) and nestc's import-time dependencies, at the exact
# versions in *.lock.txt next to this script. Idempotent: an existing venv is reused and pip
# only installs what is missing or at another version. PEERS_RECREATE=1 deletes and rebuilds.
#
# The venvs live OUTSIDE the repository, and nothing here is, or may become, a dependency of
# nestc: do not add these packages to pyproject.toml.
#
# Environment:
#   PEERS_DIR        where the venvs go                       (default /work/peers)
#   PYTHON           interpreter used to create the venvs     (default python3; tested 3.11.7)
#   TORCH_SPEC       torch requirement installed first        (default torch==2.13.0)
#   PEERS_RECREATE   1 = delete the venvs first               (default 0)
#   PEERS_ONLY       titans | nl = set up only that one       (default both)
#
# torch goes in FIRST and stays pinned (-c) while the peer is installed: an unpinned torch
# would pull the multi-GB CUDA wheels. On the project's build machine, pip's global config
# (find-links /opt/wheels) makes `torch==2.13.0` resolve to the local 2.13.0+cpu wheel.
# Elsewhere, get the CPU build with e.g.
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu TORCH_SPEC=torch==2.13.0+cpu
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS_DIR="${PEERS_DIR:-/work/peers}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PEERS_RECREATE="${PEERS_RECREATE:-0}"
PEERS_ONLY="${PEERS_ONLY:-}"

export PIP_DISABLE_PIP_VERSION_CHECK=1
PIN="$(mktemp)"
trap 'rm -f "$PIN"' EXIT
echo "$TORCH_SPEC" >"$PIN"

setup_venv() {
    local name="$1" lock="$2" check="$3"
    local venv="$PEERS_DIR/$name"

    if [[ "$PEERS_RECREATE" == "1" && -d "$venv" ]]; then
        echo "== $name: removing $venv"
        rm -rf "$venv"
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "== $name: creating $venv"
        mkdir -p "$PEERS_DIR"
        "$PYTHON" -m venv "$venv"
    else
        echo "== $name: reusing $venv"
    fi

    "$venv/bin/python" -m pip install --quiet "$TORCH_SPEC"
    "$venv/bin/python" -m pip install --quiet -c "$PIN" \
        -r "$HERE/$lock" -r "$HERE/nestc-deps.lock.txt"

    "$venv/bin/python" - "$check" <<'PY'
import importlib, sys
from importlib import metadata
import torch
mods = sys.argv[1].split(",")
for mod in mods:
    importlib.import_module(mod)
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"   ok: torch {torch.__version__}; imported {', '.join(mods)}")
PY
    "$venv/bin/python" -m pip check
}

if [[ -z "$PEERS_ONLY" || "$PEERS_ONLY" == "titans" ]]; then
    setup_venv titans-venv titans.lock.txt \
        "titans_pytorch,lark,pydantic,networkx,typer,rich,yaml,safetensors"
fi
if [[ -z "$PEERS_ONLY" || "$PEERS_ONLY" == "nl" ]]; then
    setup_venv nl-venv nl.lock.txt \
        "nested_learning.training,nested_learning.model,omegaconf,hydra,lark,pydantic,networkx,typer,rich,yaml,safetensors"
fi
echo "== peers ready in $PEERS_DIR"
