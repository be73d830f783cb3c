"""The matrix-product floor of a spec's full training step: its FLOPs, pass by pass, and the least
time this machine's `torch.mm` needs for them.

    python benchmarks/step_floor.py hope                       # the spec's own size
    python benchmarks/step_floor.py titans --batch 4 --seq-len 256 --json out.json
    python benchmarks/step_floor.py hope --set c_other=16

The step is the one `nestc bench` times (runtime/bench.py `build_step`), run eagerly and counted
with torch.utils.flop_counter in its two parts:

* the first pass, for specs with local surprise signals (`values lss`): a forward with the
  parameters frozen and the backward to the probes (runtime/train.py `signals`);
* the real pass: a forward with every inner update on, and the backward to every parameter.

The optimizer's step and the element-wise work are not counted: they add time on top of the
floor. FLOPs divided by the fastest `torch.mm` rate measured here (the shapes of
benchmarks/layer_floor.py) is the least time the step's products can take on this machine, and
tokens per step over that time is a ceiling on tokens/s that no schedule of the same arithmetic
beats. benchmarks/layer_floor.py does the same for the Titans layer of the peer comparison.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_cli import report, with_spec_errors  # benchmarks/, beside this script
from layer_floor import MM_SHAPES, mm_rate


def count_step(spec: str, overrides: dict, batch: int | None, seq_len: int | None, seed: int = 0) -> dict:
    """FLOPs of one eager training step of `spec`, per pass and per ATen op."""
    import nestc
    from nestc.runtime.train import make_loss_fns, signals

    torch.manual_seed(seed)
    compiled = nestc.compile(spec, overrides)
    b = batch or int(compiled.program.train.get("batch", 4))
    t = seq_len or int(compiled.program.train.get("seq_len", 128))
    model = compiled.model(vocab=256)
    fns = make_loss_fns(model, compile=False)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, t), generator=gen)
    y = torch.randint(0, 256, (b, t), generator=gen)

    passes = {}
    with FlopCounterMode(display=False) as first:
        lss = signals(model, fns, x, y)
    if lss:
        passes["first pass (lss probes)"] = first
    with FlopCounterMode(display=False) as real:
        fns.main(x, y, lss).backward()
    passes["real pass"] = real

    rows = []
    for name, counter in passes.items():
        by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
        rows.append({"pass": name, "flops": counter.get_total_flops(), "by_op": by_op})
    return {"spec": spec, "overrides": overrides, "batch": b, "seq_len": t, "tokens": b * t,
            "params": sum(p.numel() for p in model.parameters()), "passes": rows,
            "flops": sum(r["flops"] for r in rows)}


def floor(counted: dict, rates: dict) -> dict:
    """The counted FLOPs at the fastest measured rate: the least time, and the most tokens/s."""
    peak = max(rates.values())
    seconds = counted["flops"] / peak
    return {"peak_flops_per_s": peak, "floor_ms": 1e3 * seconds,
            "ceiling_tokens_per_s": counted["tokens"] / seconds if seconds > 0 else float("inf")}


def render(res: dict) -> str:
    lines = [f"# {res['machine']} | {res['threads']} threads | torch {torch.__version__} "
             f"| cpu capability {res['cpu_capability']}",
             f"# {res['spec']} {res['overrides'] or ''} batch {res['batch']} x seq {res['seq_len']} "
             f"({res['tokens']} tokens), {res['params'] / 1e6:.2f}M params, fp32, eager step counted"]
    for shape, rate in res["mm_rates"].items():
        lines.append(f"torch.mm {shape}: {rate / 1e9:7.1f} GFLOP/s (best of 10)")
    lines.append(f"{'pass':26s} {'GFLOP':>9s} {'mm':>9s} {'bmm':>9s} {'other':>9s} {'floor ms':>9s}")
    peak = res["peak_flops_per_s"]
    for row in res["passes"]:
        mm, bmm = row["by_op"].get("aten.mm", 0), row["by_op"].get("aten.bmm", 0)
        other = row["flops"] - mm - bmm
        lines.append(f"{row['pass']:26s} {row['flops'] / 1e9:9.2f} {mm / 1e9:9.2f} {bmm / 1e9:9.2f} "
                     f"{other / 1e9:9.2f} {1e3 * row['flops'] / peak:9.1f}")
    lines.append(f"{'step':26s} {res['flops'] / 1e9:9.2f} {'':9s} {'':9s} {'':9s} {res['floor_ms']:9.1f}")
    lines.append(f"ceiling: {res['ceiling_tokens_per_s']:,.0f} tokens/s "
                 f"(every product at {peak / 1e9:.1f} GFLOP/s, nothing else taking time)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="a spec file or a built-in name")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                    help="override a spec param (repeatable), as nestc train --set")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default: the spec's)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the spec's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    for flag, value in (("--batch", args.batch), ("--seq-len", args.seq_len), ("--threads", args.threads)):
        if value is not None and value < 1:
            print(f"step_floor.py: error: {flag} {value}: use a whole number from 1", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    from nestc.cli import _overrides  # nestc's own --set parsing: NAME=VALUE, a param name

    counted = with_spec_errors("step_floor.py", args.spec,
                               lambda: count_step(args.spec, _overrides(args.sets), args.batch, args.seq_len))
    if counted is None:
        return 2
    rates = {f"{m}x{k} @ {k}x{n}": mm_rate(m, k, n) for m, k, n in MM_SHAPES}
    from nestc.runtime.bench import machine

    info = machine("cpu")
    res = {**counted, "machine": info["cpu"] or platform.machine(), "cpu_capability": info["cpu_capability"],
           "threads": args.threads, "commit": info["commit"], "torch": torch.__version__,
           "mm_rates": rates, **floor(counted, rates)}
    return report(render(res), res, args.json)


if __name__ == "__main__":
    sys.exit(main())
