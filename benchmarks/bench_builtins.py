"""`nestc bench` for every built-in model spec at its default size, then one Markdown table.

    python benchmarks/bench_builtins.py                      # all specs, eager and compiled
    python benchmarks/bench_builtins.py --specs titans,hope  # some
    python benchmarks/bench_builtins.py --table-only         # re-print the table from saved JSON
    python benchmarks/bench_builtins.py --device cuda --results benchmarks/results/h100  # on a GPU
    python benchmarks/bench_builtins.py --precision bf16 --results benchmarks/results/bf16
    python benchmarks/bench_builtins.py --specs hope --loops call --first-pass shared  # short compile

Each spec's JSON (machine, versions, config, every row) is saved to RESULTS/bench_<spec>.json
(RESULTS: benchmarks/results unless --results says otherwise) by `nestc bench --json`; the
README's tables are this script's output. A spec whose benchmark fails is reported and skipped. `--loops` and `--first-pass` go to every
spec's `nestc bench`; the table names them after a spec whose compiled row used other than the
defaults (unroll, frozen).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_cli import bad_first_pass, bad_loop_mode  # noqa: E402  (benchmarks/, beside this script)

RESULTS = HERE / "results"


def model_specs() -> list[str]:
    import nestc
    from nestc.loader import builtin_names

    return [n for n in builtin_names() if nestc.compile(n).program.layers]


def run(spec: str, iters: int, warmup: int, eager_only: bool, device: str, results: Path,
        precision: str = "fp32", loops: str = "unroll", first_pass: str = "frozen") -> bool:
    cmd = [sys.executable, "-m", "nestc.cli", "bench", spec, "--iters", str(iters), "--warmup", str(warmup),
           "--device", device, "--precision", precision, "--loops", loops, "--first-pass", first_pass,
           "--json", str(results / f"bench_{spec}.json")]
    if eager_only:
        cmd.append("--no-compile")
    print("$", " ".join(cmd[2:]), flush=True)
    ok = subprocess.run(cmd).returncode == 0
    if not ok:
        print(f"!! the benchmark of {spec} failed (above); its row is left out", flush=True)
    return ok


def table(specs: list[str], results: Path = RESULTS) -> str:
    lines = ["| spec | batch × seq | params | eager tok/s | compiled tok/s | speed-up | compile cold s | compile warm s | commit |",
             "|---|---|---|---|---|---|---|---|---|"]
    from nestc.runtime.bench import round_ratios
    from nestc.runtime.cpu_load import busy_warning

    machine, busy = None, []
    for spec in specs:
        path = results / f"bench_{spec}.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        machine = machine or res["machine"]
        eager = res["rows"][0]
        comp = res["rows"][1] if len(res["rows"]) > 1 else None
        cells = [spec + _mode(comp), f"{res['batch']} × {res['seq_len']}", f"{eager['params'] / 1e6:.2f}M",
                 f"{eager['tokens_per_s']:,.0f}"]
        if comp:
            # the median of alternating rounds' ratios and their range; results from before
            # nestc bench ran the rounds have the two modes' medians from processes of their own
            ratios = round_ratios(eager, comp)
            speedup = f"{comp['speedup']:.2f}× ({min(ratios):.2f}–{max(ratios):.2f})" if ratios \
                else f"{eager['median_s'] / comp['median_s']:.2f}×"
            cells += [f"{comp['tokens_per_s']:,.0f}", speedup,
                      f"{comp['compile_cold_s']:.0f}", f"{comp['compile_warm_s']:.0f}"]
        else:
            cells += ["—"] * 4
        cells.append(res["machine"].get("commit") or "—")  # "—": not recorded (an older run or an installed copy)
        # other_cpu_load is absent in runs from before nestc bench measured it (no warning then)
        warning = busy_warning(res["machine"].get("other_cpu_load"), "during its run")
        if warning:
            cells[0] += " ⚠"
            busy.append(f"⚠ {spec}: {warning}")
        lines.append("| " + " | ".join(cells) + " |")
    if busy:
        lines += [""] + busy
    if machine:
        lines.append("")
        device = machine.get("device", "cpu")
        lines.append(f"{machine['cpu']}, {machine['threads']} threads"
                     + (f", {device}" if device != "cpu" else "")
                     + (f", {precision}" if (precision := res.get("precision", "fp32")) != "fp32" else "")
                     + f", torch {machine['torch']}, python {machine['python']}, nestc {machine['nestc']}")
    return "\n".join(lines)


def _mode(compiled_row: dict | None) -> str:
    """" (loops call, first pass shared)" where a compiled row ran other than nestc's defaults."""
    if not compiled_row:
        return ""
    loops, first = compiled_row.get("loops") or "unroll", compiled_row.get("first_pass") or "frozen"
    if (loops, first) == ("unroll", "frozen"):
        return ""
    return f" (loops {loops}, first pass {first})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", default=None, help="comma-separated (default: every built-in model spec)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--eager-only", action="store_true")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (nestc bench --device)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the JSON files go")
    ap.add_argument("--precision", default="fp32", help="fp32 or bf16 (nestc bench --precision)")
    ap.add_argument("--loops", default="unroll", help="unroll, call, scan or region (nestc bench --loops)")
    ap.add_argument("--first-pass", default="frozen", help="frozen or shared (nestc bench --first-pass)")
    args = ap.parse_args()
    if bad_loop_mode("bench_builtins.py", args.loops) or bad_first_pass("bench_builtins.py", args.first_pass):
        sys.exit(2)
    specs = args.specs.split(",") if args.specs else model_specs()
    args.results.mkdir(parents=True, exist_ok=True)
    failed = []
    if not args.table_only:
        for spec in specs:
            if not run(spec, args.iters, args.warmup, args.eager_only, args.device, args.results,
                       args.precision, args.loops, args.first_pass):
                failed.append(spec)
    print(table(specs, args.results))
    if failed:
        print("failed: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
