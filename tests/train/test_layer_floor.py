"""benchmarks/layer_floor.py and the benchmark layer spec it reads (benchmarks/specs/titans_layer.nest,
also timed by benchmarks/anchor_rows.py against titans-pytorch)."""

import math
import re
import subprocess
import sys
from pathlib import Path

import torch

import nestc

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_layer_takes_either_gradient_state():
    for grad_at in ("chunk_start", "call_start"):
        layer = nestc.compile(ROOT / "benchmarks" / "specs" / "titans_layer.nest",
                              {"d_model": "16", "heads": "2", "chunk": "4", "grad_at": f'"{grad_at}"'}
                              ).model().layers[0]
        assert layer.box_mem.s.grad_state == grad_at
        x = torch.randn(2, 12, 16)
        out, _ = layer(x, layer.initial_state(2), nestc.runtime.context.Ctx())
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_layer_floor_counts_both_gradient_states():
    """The script runs and prints a row per gradient state; the projections (aten.mm) are the
    same work in both, only the memory's batched products (aten.bmm) differ. With --shapes it
    also lists the compiled step's products by shape: their FLOPs are the step's (as the eager
    count has them, within what compilation may recompute), and the totals add up the rows."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "layer_floor.py"), "--threads", "1",
                          "--batch", "2", "--seq", "32", "--dim", "32", "--heads", "2", "--chunk", "8",
                          "--shapes"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = {m[0]: [float(v) for v in m[1:]] for m in
            re.findall(r"^(chunk_start|call_start)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
                       run.stdout, re.M)}
    assert set(rows) == {"chunk_start", "call_start"}
    (total_a, mm_a, bmm_a, floor_a), (total_b, mm_b, bmm_b, floor_b) = rows["chunk_start"], rows["call_start"]
    assert mm_a == mm_b > 0 and bmm_a > 0 and bmm_b > 0
    assert abs(total_a - (mm_a + bmm_a)) < 0.2 and floor_a > 0 and floor_b > 0
    products = re.findall(r"^(mm|bmm|addmm|baddbmm)\s+(\d+)\s+([\d.]+)\s+[\d.]+\s+([\d.]+)\s+[\d.]+\s+([\d.]+)"
                          r"\s+[\d.]+\s+(\[.*\]) @ (\[.*\])$", run.stdout, re.M)
    assert {p[0] for p in products} >= {"mm", "bmm"}
    flops = sum(int(p[1]) * 2 * math.prod(eval_shape(p[5])) * eval_shape(p[6])[-1] for p in products)
    assert 0.8 < flops / (total_a * 1e6) < 1.5
    total = re.search(r"^products per step: ([\d.]+) MFLOP; [\d.]+ ms inside the compiled step \(profiled\), "
                      r"([\d.]+) ms alone in cache, ([\d.]+) ms alone and cold", run.stdout, re.M)
    assert total, run.stdout
    assert abs(float(total[1]) - flops / 1e6) < 0.1
    for column, printed in ((3, total[2]), (4, total[3])):
        assert abs(sum(float(p[column]) for p in products) - float(printed)) < 0.01 * len(products) + 0.1


def eval_shape(text: str) -> list[int]:
    return [int(v) for v in text.strip("[]").split(",")]
