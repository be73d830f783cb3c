"""The `nestc` command line.

Every user-caused problem is a NestError: printed with file, line, column, the offending line, a
hint, and exit code 2. Internal errors print one line and, with NESTC_DEBUG=1, the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console

from .diagnostics import NestError, Pos, plural
from .runtime.devices import DEVICE_HELP, PRECISION_HELP, check_loops_precision, check_precision, resolve_device

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="nestc: write, see, compile, train and stream nested optimization "
                       "systems (Nested Learning).")
# piped output (files, CI logs) gets a wide console so trees are not cut at 80 columns
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

SET_HELP = "override a param: --set d_model=512 (repeatable)"


def _overrides(sets: list[str]) -> dict[str, str]:
    result = {}
    for s in sets or []:
        if "=" not in s:
            raise NestError.at(Pos(file="--set"), f"`--set {s}`: expected NAME=VALUE",
                               hint="for example --set d_model=512")
        k, v = s.split("=", 1)
        k = k.strip()
        if not k.isidentifier():
            raise NestError.at(Pos(file="--set"), f"`--set {s}`: `{k}` is not a param name")
        result[k] = v.strip()
    return result


def check_first_pass(name: str) -> str:
    from .runtime.train import FIRST_PASSES

    if name not in FIRST_PASSES:
        raise NestError.at(Pos(file="--first-pass"), f"`--first-pass {name}`: not a first-pass mode",
                           hint="use one of: " + ", ".join(FIRST_PASSES))
    return name


def _run(fn: Callable[[], int | None]) -> None:
    from .signals import terminate_as_interrupt

    try:
        with terminate_as_interrupt():  # a `kill` ends it as Ctrl-C does: checkpoints, cleanup
            code = fn()
    except NestError as e:
        from .views import print_error

        print_error(err_console, e)
        raise typer.Exit(2)
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:  # Ctrl-C, or a `kill` (terminate_as_interrupt): one line, the shell's code
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130)
    except Exception as e:  # an internal error: never show a user a bare traceback
        if os.environ.get("NESTC_DEBUG"):
            traceback.print_exc()
        err_console.print(f"[bold red]internal error[/]: {type(e).__name__}: {e}")
        err_console.print("  this is a bug in nestc, not in your input; rerun with NESTC_DEBUG=1 "
                          "for the traceback and report it")
        raise typer.Exit(3)
    raise typer.Exit(code or 0)


def _program(spec: str, sets: list[str], loaded=None):
    """The resolved spec (`loaded`: its file already read, by `load(spec)`)."""
    from .loader import load
    from .resolve import resolve

    return resolve(loaded if loaded is not None else load(spec), _overrides(sets))


def _check_bench_model(spec: str, overrides: dict, loops: str | None) -> None:
    """What the benchmark's child processes would otherwise stop on as an internal error: a spec
    with no optimizer to train with, a loop mode that cannot compile one of its boxes (which the
    model's modules say: it is built on the meta device, no memory, no arithmetic)."""
    import torch

    import nestc

    from .runtime.train import check_call_loops

    compiled = nestc.compile(spec, overrides)
    with torch.device("meta"):
        model = compiled.model()
    if not compiled.module.OPTIMIZERS:  # (make_optimizer's own hint names train's --optimizer)
        raise NestError.at(Pos(file=compiled.program.path or compiled.program.name),
                           f"spec {compiled.program.name} has no optimizer, and `nestc bench` times "
                           "its training step", hint="give it a train section with an optimizer, e.g. "
                           "`train { optimizer adamw(lr=1e-3) }`")
    if loops is not None:
        check_call_loops(model, loops)


# ------------------------------------------------------------------------------------- check
@app.command()
def check(spec: str = typer.Argument(..., help="a spec file (.nest / .yaml) or a built-in name"),
          set_: List[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Check a spec: syntax, names, shapes, levels, and what the compiler supports."""

    def run():
        from .codegen import generate
        from .compat import unsupported
        from .compiler import is_optimizer_spec, resolve_for_compile
        from .levels import build
        from .loader import load
        from .views import print_warnings

        loaded = load(spec)
        program = _program(spec, set_, loaded)
        lg = build(program)
        lowering = unsupported(program)
        # what only code generation finds (a read a box cannot give, a function an optimizer
        # box's rules cannot run, ...), on the program as `nestc compile` resolves it: an
        # optimizer spec compiled on its own is its optimizer
        if is_optimizer_spec(loaded):
            target = resolve_for_compile(loaded, _overrides(set_))
            generate(target, build(target))
        else:
            generate(program, lg)
        print_warnings(err_console, program.warnings + lowering)
        n = sum(1 for _ in lg.graph.nodes)
        out.print(f"[bold green]✓[/] {program.name}: {plural(n, 'box')} in "
                  f"{plural(len(lg.levels), 'level')}, {plural(len(program.layers), 'layer')} — "
                  "checks clean")

    _run(run)


# ------------------------------------------------------------------------------------- graph
@app.command()
def graph(spec: str = typer.Argument(..., help="a spec file or a built-in name"),
          format: str = typer.Option("tree", "--format", "-f", help="tree, json, dot or mermaid"),
          timeline: Optional[Path] = typer.Option(None, "--timeline",
                                                  help="a run folder or metrics.jsonl: show when "
                                                       "each level updated"),
          set_: List[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Draw a spec's level graph: levels from slowest to fastest, boxes, and their edges."""

    def run():
        from .levels import build, json_dumps
        from .views import level_tree

        if format not in ("tree", "json", "dot", "mermaid"):
            raise NestError.at(Pos(file="--format"), f"unknown format `{format}`",
                               hint="choose tree, json, dot or mermaid")
        lg = build(_program(spec, set_))
        if timeline is not None:
            from .timeline import render_timeline

            out.print(render_timeline(lg, timeline))
            return
        if format == "json":
            sys.stdout.write(json_dumps(lg))
        elif format == "dot":
            sys.stdout.write(lg.to_dot())
        elif format == "mermaid":
            sys.stdout.write(lg.to_mermaid())
        else:
            out.print(level_tree(lg))

    _run(run)


# ------------------------------------------------------------------------------------- specs
@app.command()
def specs(functions: bool = typer.Option(False, "--functions",
                                         help="list the functions of the expression language")) -> None:
    """List the built-in specs (a line each), or the language's functions."""

    def run():
        from .loader import builtin_names, builtin_path, parse_file
        from .diagnostics import SourceMap
        from .views import functions_table, specs_table

        if functions:
            out.print(functions_table())
            return
        rows = []
        for name in builtin_names():
            spec = parse_file(builtin_path(name), SourceMap())
            kind = "model" if spec.model is not None else (
                "optimizer" if any(b.box_kind == "weights" for b in spec.boxes) else "library")
            rows.append((name, kind, spec.title or ""))
        out.print(specs_table(rows))

    _run(run)


# ------------------------------------------------------------------------------------- fmt
@app.command()
def fmt(paths: List[str] = typer.Argument(..., help="spec files (or built-in names) to format"),
        write: bool = typer.Option(False, "--write", "-w", help="rewrite the files in place"),
        check_only: bool = typer.Option(False, "--check", help="exit 1 if a file is not formatted")) -> None:
    """Print a spec in canonical .nest form (idempotent; parsing it gives the same IR)."""

    def run():
        from .diagnostics import SourceMap
        from .loader import locate, parse_file
        from .printer import format_spec
        from .atomic import write_text_atomic

        status = 0
        for ref in paths:
            path = locate(ref)
            spec = parse_file(path, SourceMap())
            text = format_spec(spec)
            if check_only:
                if path.suffix == ".nest" and path.read_text(encoding="utf-8") != text:
                    err_console.print(f"would reformat {path}")
                    status = 1
            elif write:
                if path.suffix != ".nest":
                    raise NestError.at(Pos(file=str(path)), "`fmt --write` rewrites .nest files",
                                       hint=f"to turn YAML into .nest: nestc convert {path} -o "
                                            f"{path.with_suffix('.nest')}")
                write_text_atomic(path, text)
            else:
                sys.stdout.write(text)
        return status

    _run(run)


# ------------------------------------------------------------------------------------- convert
@app.command()
def convert(spec: str = typer.Argument(..., help="a .nest or .yaml spec (or a built-in name)"),
            output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                  help="where to write; the suffix picks the syntax"),
            to: Optional[str] = typer.Option(None, "--to", help="nest or yaml (default: the other one)")) -> None:
    """Convert a spec between YAML and .nest (same IR either way)."""

    def run():
        from .diagnostics import SourceMap
        from .loader import locate, parse_file
        from .printer import format_spec
        from .yaml_io import format_yaml
        from .atomic import write_text_atomic

        path = locate(spec)
        parsed = parse_file(path, SourceMap())
        target = to or (output.suffix.lstrip(".") if output else None) or \
            ("nest" if path.suffix in (".yaml", ".yml") else "yaml")
        target = {"yml": "yaml"}.get(target, target)
        if target not in ("nest", "yaml"):
            raise NestError.at(Pos(file="--to"), f"unknown syntax `{target}`", hint="nest or yaml")
        text = format_spec(parsed) if target == "nest" else format_yaml(parsed)
        if output:
            write_text_atomic(output, text)
            err_console.print(f"wrote {output}")
        else:
            sys.stdout.write(text)

    _run(run)


# ------------------------------------------------------------------------------------- compile
@app.command("compile")
def compile_(spec: str = typer.Argument(..., help="a spec file or a built-in name"),
             output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                   help="write the module here (default: stdout)"),
             set_: List[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Generate the spec's PyTorch module: the model, its optimizers and its level schedule."""

    def run():
        from .atomic import write_text_atomic
        from .compiler import resolve_for_compile
        from .codegen import generate
        from .levels import build
        from .loader import load

        program = resolve_for_compile(load(spec), _overrides(set_))
        source = generate(program, build(program))
        if output:
            write_text_atomic(output, source)
            err_console.print(f"wrote {output} ({len(source.splitlines())} lines)")
        else:
            sys.stdout.write(source)

    _run(run)


# ------------------------------------------------------------------------------------- train
@app.command()
def train(spec: str = typer.Argument(..., help="a spec file or a built-in name (e.g. hope)"),
          out: Path = typer.Option(Path("runs/latest"), "--out", "-o", help="the run folder"),
          steps: Optional[int] = typer.Option(None, help="optimizer steps (default: the spec's)"),
          minutes: Optional[float] = typer.Option(None, help="stop cleanly after this many minutes"),
          data: Optional[str] = typer.Option(None, help="a text file or folder (default: the "
                                                          "embedded corpus, text that ships with Python)"),
          tokenizer: Optional[str] = typer.Option(None, help="byte (default) or gpt2"),
          batch: Optional[int] = typer.Option(None, help="sequences per step"),
          seq_len: Optional[int] = typer.Option(None, "--seq-len", help="tokens per sequence"),
          lr: Optional[float] = typer.Option(None, help="peak learning rate"),
          optimizer: Optional[str] = typer.Option(None, help="an optimizer spec: adamw, muon, m3, ..."),
          eval_every: Optional[int] = typer.Option(None, "--eval-every", help="steps between evaluations"),
          checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every"),
          resume: Optional[Path] = typer.Option(None, help="continue from this checkpoint, exactly"),
          on_nonfinite: Optional[str] = typer.Option(None, "--on-nonfinite", help="stop or skip"),
          lss: Optional[str] = typer.Option(None, "--lss", help="local surprise signals from the whole "
                                            "sequence's loss (sequence, default) or each chunk's "
                                            "loss so far (causal: exact, slower)"),
          compile_: bool = typer.Option(False, "--compile", help="torch.compile the step"),
          loops: Optional[str] = typer.Option(None, "--loops", help="with --compile, how chunk loops "
                                              "trace: unroll (default: one graph per layer), call "
                                              "(each chunk a call of one compiled body: much "
                                              "shorter compile), region or scan (see nestc bench; "
                                              "also how a general-rule box runs its tokens)"),
          first_pass: Optional[str] = typer.Option(None, "--first-pass", help="with --compile, how the first pass of a model with lss boxes compiles: frozen (default: graphs of its own, faster steps) or shared (through the real pass's graphs: shorter compile, slower steps)"),
          seed: Optional[int] = typer.Option(None, help="random seed"),
          device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
          precision: str = typer.Option("fp32", "--precision", help=PRECISION_HELP),
          set_: List[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Train a spec on text: progress, held-out evaluation, metrics log, plot, checkpoints."""

    def run():
        import nestc
        from .runtime_cli import train_command

        if on_nonfinite is not None and on_nonfinite not in ("stop", "skip"):
            raise NestError.at(Pos(file="--on-nonfinite"), f"unknown choice `{on_nonfinite}`",
                               hint="stop or skip")
        if lss is not None and lss not in ("sequence", "causal"):
            raise NestError.at(Pos(file="--lss"), f"unknown choice `{lss}`", hint="sequence or causal")
        if loops is not None:
            from .runtime.ops import LOOP_MODES

            if loops not in LOOP_MODES:
                raise NestError.at(Pos(file="--loops"), f"`--loops {loops}`: not a loop mode",
                                   hint="use one of: " + ", ".join(LOOP_MODES))
            if not compile_:
                raise NestError.at(Pos(file="--loops"), "`--loops` says how a compiled step traces "
                                   "chunk loops, and this run is not compiled", hint="add --compile")
        if first_pass is not None:
            check_first_pass(first_pass)
            if not compile_:
                raise NestError.at(Pos(file="--first-pass"), "`--first-pass` says how a compiled step "
                                   "compiles its first pass, and this run is not compiled", hint="add --compile")
        resolve_device(device)  # a bad --device or --precision fails before anything is built
        check_precision(precision)
        if loops is not None:
            check_loops_precision(loops, precision)
        compiled = nestc.compile(spec, _overrides(set_))
        flags = dict(device=device, precision=precision, steps=steps, max_minutes=minutes, data=data,
                     tokenizer=tokenizer, batch=batch, seq_len=seq_len, lr=lr, optimizer=optimizer, eval_every=eval_every,
                     checkpoint_every=checkpoint_every, on_nonfinite=on_nonfinite, seed=seed,
                     lss=lss, compile=compile_ or None, loops=loops, first_pass=first_pass)
        return train_command(compiled, flags, out, resume, out_console=out, err_console=err_console)

    _run(run)


@app.command()
def generate(checkpoint: Path = typer.Argument(..., help="a checkpoint written by `nestc train`"),
             prompt: str = typer.Option("", "--prompt", "-p", help="the text to continue"),
             tokens: int = typer.Option(200, help="tokens to generate"),
             temperature: float = typer.Option(0.8, help="sampling temperature (0: greedy)"),
             top_k: int = typer.Option(40, "--top-k", help="sample among the k most likely tokens"),
             seed: int = typer.Option(0, help="sampling seed"),
             device: str = typer.Option("auto", "--device", help=DEVICE_HELP)) -> None:
    """Stream text from a trained model; its memories keep learning as the text arrives."""

    def run():
        from .runtime_cli import generate_command

        return generate_command(checkpoint, prompt, tokens, temperature, top_k, seed,
                                resolve_device(device))

    _run(run)


@app.command("eval")
def eval_(checkpoint: Path = typer.Argument(..., help="a checkpoint written by `nestc train`"),
          data: Optional[str] = typer.Option(None, help="a text file or folder (default: the "
                                                          "checkpoint's own held-out split)"),
          batch: int = typer.Option(8, help="sequences per batch"),
          seq_len: Optional[int] = typer.Option(None, "--seq-len", help="tokens per sequence"),
          max_batches: Optional[int] = typer.Option(
              None, "--max-batches", help="evaluate this many evenly spaced batches (default: all). "
              "The trainer's held-out line is 8 batches of its own batch size: `--batch B "
              "--max-batches 8` gives the same number"),
          device: str = typer.Option("auto", "--device", help=DEVICE_HELP)) -> None:
    """Perplexity of a trained model on held-out text."""

    def run():
        from .runtime_cli import eval_command

        return eval_command(checkpoint, data, batch, seq_len, max_batches, out, resolve_device(device))

    _run(run)


# ------------------------------------------------------------------------------------- bench
@app.command()
def bench(spec: str = typer.Argument(..., help="a spec file or a built-in name"),
          batch: Optional[int] = typer.Option(None, help="sequences per step (default: the spec's)"),
          seq_len: Optional[int] = typer.Option(None, "--seq-len", help="tokens per sequence"),
          warmup: int = typer.Option(2, help="untimed steps after the first"),
          iters: int = typer.Option(5, help="timed steps"),
          threads: int = typer.Option(2, help="torch threads"),
          no_compile: bool = typer.Option(False, "--no-compile", help="eager only"),
          loops: str = typer.Option("unroll", help="how the compiled step traces chunk loops: "
                                    "unroll (one graph per layer, longer compile), call (the loop between "
                                    "graphs, each chunk a call of one compiled body), scan (body traced "
                                    "once) or region (unrolled calls of one compiled region). A box on "
                                    "the general rule runs each token as a call of one region (a "
                                    "compile that grows with the sequence), or with scan all its tokens "
                                    "as one scan (a short compile, slower steps)"),
          first_pass: str = typer.Option("frozen", "--first-pass", help="how the compiled step's first "
                                         "pass (models with lss boxes) compiles: frozen (graphs of its own, "
                                         "faster steps) or shared (through the real pass's graphs: shorter "
                                         "compile, slower steps)"),
          json_out: Optional[Path] = typer.Option(None, "--json", help="also write the results here"),
          device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
          precision: str = typer.Option("fp32", "--precision", help=PRECISION_HELP),
          set_: List[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Time a spec's full training step: eager and compiled, tokens/s, compile time, memory."""

    def run():
        import json as _json

        from rich.table import Table

        from .atomic import write_text_atomic
        from .resolve import resolve_ref
        from .runtime.bench import bench as run_bench
        from .runtime.bench import round_ratios
        from .runtime.cpu_load import busy_warning, other_load
        from .runtime.ops import LOOP_MODES

        if loops not in LOOP_MODES:
            raise NestError.at(Pos(file="--loops"), f"`--loops {loops}`: not a loop mode",
                               hint="use one of: " + ", ".join(LOOP_MODES))
        check_first_pass(first_pass)
        overrides = _overrides(set_)
        program = resolve_ref(spec, overrides)
        b = batch or int(program.train.get("batch", 4))
        t = seq_len or int(program.train.get("seq_len", 128))
        dev = str(resolve_device(device))
        check_precision(precision)
        if not no_compile:
            check_loops_precision(loops, precision)
        _check_bench_model(spec, overrides, loops if not no_compile else None)

        def warn_if_busy(share, when):
            warning = busy_warning(share, when)
            if warning:
                err_console.print(f"[yellow]warning[/]: {warning}")

        warn_if_busy(other_load(), "just before this benchmark")
        from .bench_progress import BenchProgress

        with BenchProgress(err_console) as shown:  # minutes of work: say where it is
            res = run_bench(spec, overrides, b, t, warmup, iters, threads, compile=not no_compile,
                            loops=loops, device=dev, precision=precision, first_pass=first_pass,
                            on_progress=shown)
        m = res["machine"]
        out.print(f"[bold]nestc bench {spec}[/]  batch {b} × seq {t} = {b * t} tokens/step, "
                  f"{iters} timed steps after {warmup + 1} warm-up"
                  + ("" if no_compile else " (each mode; compile times from processes of their own)"))
        isa = f" ({m['cpu_capability']})" if m.get("cpu_capability") else ""
        out.print(f"{m['cpu']}{isa} | {plural(m['threads'], 'thread')} | device {m['device']} | {precision} "
                  f"| torch {m['torch']} "
                  f"| python {m['python']} | nestc {m['nestc']}"
                  + (f" | chunk loops: {loops} | first pass: {first_pass}" if not no_compile else ""))
        on_gpu = "peak_gpu_mb" in res["rows"][0]
        table = Table(header_style="bold")
        for col in ("mode", "step ms (median)", "tokens/s", "compile cold s", "compile warm s",
                    "peak RSS MB", *(["peak GPU MB"] if on_gpu else []), "params"):
            table.add_column(col, justify="right" if col != "mode" else "left")
        eager = res["rows"][0]
        for r in res["rows"]:
            table.add_row(r["mode"], f"{r['median_s'] * 1e3:.1f}", f"{r['tokens_per_s']:,.0f}",
                          f"{r.get('compile_cold_s', 0):.1f}" if r["mode"] == "compiled" else "—",
                          f"{r.get('compile_warm_s', 0):.1f}" if r["mode"] == "compiled" else "—",
                          f"{r['peak_rss_mb']:,.0f}",
                          *([f"{r['peak_gpu_mb']:,.0f}"] if on_gpu else []), f"{r['params']:,}")
        out.print(table)
        if len(res["rows"]) > 1:
            comp = res["rows"][1]
            ratios = round_ratios(eager, comp)
            out.print(f"compiled / eager speed-up: {comp['speedup']:.2f}× (median of {comp['rounds']} "
                      f"alternating rounds of one eager and one compiled step, {min(ratios):.2f}–"
                      f"{max(ratios):.2f}×; compiled faster in {comp['rounds_faster']})")
        warn_if_busy(m.get("other_cpu_load"), "while this benchmark ran")
        if json_out:
            write_text_atomic(json_out, _json.dumps(res, indent=2) + "\n")

    _run(run)


# ------------------------------------------------------------------------------------- schema
@app.command()
def schema(output: Optional[Path] = typer.Option(None, "--output", "-o", help="write to a file")) -> None:
    """Export the JSON Schema of YAML specs (for editor completion and validation)."""

    def run():
        import json

        from .schema import json_schema
        from .atomic import write_text_atomic

        text = json.dumps(json_schema(), indent=2) + "\n"
        if output:
            write_text_atomic(output, text)
            err_console.print(f"wrote {output}")
        else:
            sys.stdout.write(text)

    _run(run)


def main() -> None:
    # typer's standalone mode prints usage errors (unknown options, missing arguments) and exits
    # with code 2, as a bad spec does.
    app()


if __name__ == "__main__":
    main()
