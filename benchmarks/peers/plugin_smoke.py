"""Smoke plugin for /work/shared/tools/anchor_bench.py, run under a *peer's* venv.

Checks two things and adds one trivial row:

* ``import nestc`` works from the peer's Python (see nestc_import.py for how), including the
  subpackages that pyproject.toml maps to other folders (``nestc.runtime``, ``nestc.grammar``).
* a plugin row is built from ``ctx`` and timed in the harness's round-robin.

The row is a plain ``torch.nn.Linear(dim, dim)`` forward + ``out.sum().backward()`` at the
first Titans config (B4 T512 d256). It measures nothing about nestc; it only proves the plumbing.

    $PEERS_DIR/titans-venv/bin/python /work/shared/tools/anchor_bench.py --which titans \
        --threads 2 --plugin benchmarks/peers/plugin_smoke.py --out /tmp/smoke.json
"""

from __future__ import annotations

import importlib
import sys
from importlib import resources
from pathlib import Path

import torch

from anchor_bench import BenchContext, BenchRow, count_params  # resolved by the harness

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nestc_import import ensure_nestc  # noqa: E402

NESTC_DIR = ensure_nestc()
import nestc  # noqa: E402,F401  (must succeed; ensure_nestc already imported it)

importlib.import_module("nestc.runtime")
GRAMMAR_CHARS = len(resources.files("nestc.grammar").joinpath("nest.lark").read_text("utf-8"))


def anchor_bench_rows(ctx: BenchContext) -> list[BenchRow]:
    cfg = ctx.titans_configs[0]
    torch.manual_seed(ctx.seed)
    layer = torch.nn.Linear(cfg["dim"], cfg["dim"])
    x = torch.randn(cfg["batch"], cfg["seq_len"], cfg["dim"])

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    warmup, iters = ctx.steps(3, 10)
    return [
        BenchRow(
            anchor="nestc",
            name=f"smoke Linear B{cfg['batch']} T{cfg['seq_len']} d{cfg['dim']}",
            tokens_per_step=cfg["batch"] * cfg["seq_len"],
            step=step,
            params=count_params(layer),
            config={
                **cfg,
                "nestc_imported_from": NESTC_DIR,
                "nestc_grammar_chars": GRAMMAR_CHARS,
                "python": sys.executable,
            },
            measured="plumbing smoke test: Linear(dim, dim) forward + out.sum().backward()",
            warmup=warmup,
            iters=iters,
        )
    ]
