"""nestc's rows for the shared anchor harness (/work/shared/tools/anchor_bench.py --plugin).

Runs inside a peer's virtualenv (see benchmarks/peers/README.md) so that nestc and the peer are
timed in one process, in the harness's round-robin, on the same minutes of the same machine.

Rows, each eager and torch.compile'd:

* Titans: one LMM layer (benchmarks/specs/titans_layer.nest) at each of the harness's Titans
  configs; the timed region matches the peer's: a fresh memory state, forward, out.sum().backward().
  Gradients at each chunk's start state (Titans Eq. 16), eager and compiled, and compiled with
  `grad_state call_start` (every chunk at the call's starting state, as the peer takes them).
* Hope: the built-in hope spec at the harness's micro size (dim, layers, heads, batch, sequence
  from ctx.hope_model), self-modifying memories at chunks 8 (k, v, eta, alpha) and 64 (memory);
  the timed region is a full training step: the local-surprise first pass, the real pass,
  backward, gradient clipping at 1.0 and the optimizer step, every inner update on.

    $PEERS_DIR/titans-venv/bin/python /work/shared/tools/anchor_bench.py --which titans \\
        --threads 2 --plugin benchmarks/anchor_rows.py --out /tmp/titans.json
    $PEERS_DIR/nl-venv/bin/python /work/shared/tools/anchor_bench.py --which hope --threads 2 \\
        --hope-variants hope_selfmod --hope-modes plain,online --plugin benchmarks/anchor_rows.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from anchor_bench import BenchContext, BenchRow, count_params  # resolved by the harness

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from nestc_import import ensure_nestc  # noqa: E402

ensure_nestc()
import nestc  # noqa: E402
from nestc.runtime.context import Ctx  # noqa: E402
from nestc.runtime.inductor_setup import prepare_inductor  # noqa: E402
from nestc.runtime.train import make_loss_fns, make_optimizer, signals  # noqa: E402

prepare_inductor()  # as nestc's own compile paths do: a shorter compile, the same generated code
MODES = [m for m in os.environ.get("NESTC_BENCH_MODES", "eager,compiled").split(",") if m]


def titans_rows(ctx: BenchContext) -> list[BenchRow]:
    rows = []
    warmup, iters = ctx.steps(3, 10)
    variants = [(mode, "chunk_start") for mode in MODES]
    if "compiled" in MODES:  # the peer's gradient state, compiled only
        variants.append(("compiled", "call_start"))
    for cfg in ctx.titans_configs:
        for mode, grad_at in variants:
            overrides = {"d_model": str(cfg["dim"]), "heads": str(cfg["heads"]),
                         "chunk": str(cfg["chunk_size"]), "grad_at": f'"{grad_at}"'}
            torch.manual_seed(ctx.seed)
            compiled = nestc.compile(HERE / "specs" / "titans_layer.nest", overrides)
            layer = compiled.model().layers[0]
            x = torch.randn(cfg["batch"], cfg["seq_len"], cfg["dim"])

            def forward(x, layer=layer):
                out, _ = layer(x, layer.initial_state(x.shape[0]), Ctx())
                return out

            # static shapes: each config its own graph (symbolic shapes over the unrolled chunk loop
            # make the second config take tens of minutes in sympy)
            fn = torch.compile(forward, fullgraph=True, dynamic=False) if mode == "compiled" else forward

            def step(layer=layer, x=x, fn=fn) -> None:
                layer.zero_grad(set_to_none=True)
                fn(x).sum().backward()

            label = mode if grad_at == "chunk_start" else f"{mode} call_start"
            rows.append(BenchRow(
                anchor="nestc", name=f"nestc LMM layer {label} B{cfg['batch']} T{cfg['seq_len']} d{cfg['dim']}",
                tokens_per_step=cfg["batch"] * cfg["seq_len"], step=step, params=count_params(layer),
                config={**cfg, "spec": "benchmarks/specs/titans_layer.nest", "overrides": overrides,
                        "mode": mode, "memory": "per head: 2-layer residual MLP, expansion 4 (gelu)",
                        "inner": "GD with momentum and decay, per-token lr/momentum/decay per head",
                        "grad_state": grad_at + (" (Titans Eq. 16)" if grad_at == "chunk_start" else
                                                 " (every chunk at the call's starting state, as the peer)"),
                        "dtype": "float32"},
                measured="fresh memory state; layer forward (norm, projections, chunked memory "
                         "updates and reads, merge); out.sum().backward(). No optimizer step.",
                warmup=warmup, iters=iters))
    return rows


def hope_rows(ctx: BenchContext) -> list[BenchRow]:
    cfg = ctx.hope_model
    overrides = {"d_model": str(cfg["dim"]), "n_layers": str(cfg["num_layers"]),
                 "heads": str(cfg["heads"]), "c_other": "8", "c_memory": "64"}
    rows = []
    b, t = ctx.hope_batch, ctx.hope_seq_len
    warmup, iters = ctx.steps(2, 8)
    for mode in MODES:
        torch.manual_seed(ctx.seed)
        compiled = nestc.compile("hope", overrides)
        model = compiled.model(vocab=int(cfg["vocab_size"]))
        optimizer = make_optimizer(compiled, model)
        fns = make_loss_fns(model, compile=mode == "compiled")
        gen = torch.Generator().manual_seed(ctx.seed)

        def step(model=model, optimizer=optimizer, fns=fns, gen=gen) -> None:
            x = torch.randint(0, int(cfg["vocab_size"]), (b, t + 1), generator=gen)
            inp, tgt = x[:, :-1], x[:, 1:]
            loss = fns.main(inp, tgt, signals(model, fns, inp, tgt))
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        rows.append(BenchRow(
            anchor="nestc", name=f"nestc hope {mode} B{b} T{t}", tokens_per_step=b * t, step=step,
            params=count_params(model),
            config={"spec": "hope", "overrides": overrides, "mode": mode, "batch": b, "seq_len": t,
                    "vocab": int(cfg["vocab_size"]), "optimizer": "the spec's train section (adamw)",
                    "dtype": "float32", "lss_boxes": len(model.lss_sites())},
            measured="full training step: local-surprise first pass (when the spec has lss boxes), "
                     "the real pass with every inner update on (self-modifying memories with DGD "
                     "at chunks 8/64, CMS levels), backward, clip 1.0, optimizer step",
            warmup=warmup, iters=iters))
    return rows


def anchor_bench_rows(ctx: BenchContext) -> list[BenchRow]:
    rows = []
    if "titans" in os.environ.get("NESTC_BENCH_WHICH", "titans,hope"):
        rows += titans_rows(ctx)
    if "hope" in os.environ.get("NESTC_BENCH_WHICH", "titans,hope"):
        rows += hope_rows(ctx)
    return rows
