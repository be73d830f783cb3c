"""The bodies of `nestc train`, `nestc generate` and `nestc eval` (kept apart from the argument
parsing in nestc/cli.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from .diagnostics import NestError, Pos


def _levels_line(levels: dict[str, int]) -> str:
    """A compact view of which levels updated in a step: box:count, in-context first."""
    parts = []
    for name, n in levels.items():
        short = name.split(".")[-1]
        if n:
            parts.append(f"{short}×{n}" if n > 1 else short)
    return " ".join(parts[:8]) + (" …" if len(parts) > 8 else "")


COMPILING = ("compiling the training step (torch.compile runs in the first step; a cold compile "
             "takes seconds to minutes: `--loops region` compiles in about 60% of the time, `--loops "
             "call --first-pass shared` in a fraction of it, for slower steps; a later run reuses "
             "what this one compiles, from torch's inductor cache)")


class TrainView:
    """A live panel: step, loss, perplexity, held-out loss, tokens/s, levels that updated."""

    def __init__(self, total: int, name: str, compiling: bool = False):
        self.total = total
        self.name = name
        self.compiling = compiling  # a compiled step: its first step compiles it
        self.last: dict = {}
        self.eval: dict | None = None
        self.first_eval: dict | None = None
        self.start = time.perf_counter()
        # (time, step) of this run's first finished step: the time left is estimated from the
        # steps after it, so that neither the first step's compile nor the steps of the run a
        # --resume continues count
        self.rate_from: tuple[float, int] | None = None
        self.notes: list[str] = []

    def update(self, record: dict) -> None:
        if record.get("kind") == "eval":
            self.eval = record
            self.first_eval = self.first_eval or record
        elif record.get("kind") == "nonfinite":
            self.notes.append(f"step {record['step']}: skipped (non-finite {record['where']})")
            self._mark(record["step"])
        elif record.get("kind") == "stopping":  # the first Ctrl-C or kill (runtime/interrupts.py)
            self.notes.append(f"{record['why']} at step {record['step']}: stopping when the step in progress "
                              "ends, and saving it; once more stops at once, without saving that step")
        else:
            self.last = record
            self._mark(record["step"])

    def _mark(self, step: int) -> None:
        if self.rate_from is None:
            self.rate_from = (time.perf_counter(), step)

    def seconds_left(self, step: int) -> float | None:
        """From the steps since this run's first one; None until there is one."""
        if self.rate_from is None or step <= self.rate_from[1]:
            return None
        t0, s0 = self.rate_from
        return (time.perf_counter() - t0) / (step - s0) * (self.total - step)

    def __rich__(self):
        t = Table.grid(padding=(0, 2))
        t.add_column(style="dim")
        t.add_column()
        r = self.last
        step = r.get("step", 0)
        frac = step / max(self.total, 1)
        bar = "█" * int(30 * frac) + "░" * (30 - int(30 * frac))
        elapsed = time.perf_counter() - self.start
        left = self.seconds_left(step)
        left_text = f"~{left:4.0f}s left" if left is not None else "time left: after the next step"
        t.add_row("nestc train", Text(f"{self.name}  {bar} {step}/{self.total}  "
                                      f"{elapsed:5.0f}s elapsed, {left_text}", style="bold"))
        if self.compiling and self.rate_from is None:
            t.add_row("compile", Text(COMPILING, style="yellow"))
        if r:
            t.add_row("train", f"loss {r['loss']:.4f}   ppl {r['ppl']:.2f}   lr {r['lr']:.2e}   "
                               f"{r['tokens_per_s']:,.0f} tokens/s")
            t.add_row("levels", _levels_line(r.get("levels_updated", {})) or "—")
        if self.eval:
            first = self.first_eval["loss"] if self.first_eval else self.eval["loss"]
            t.add_row("held-out", f"loss {self.eval['loss']:.4f}   ppl {self.eval['ppl']:.2f}   "
                                  f"(step {self.eval['step']}; first eval {first:.4f})")
        for n in self.notes[-3:]:
            t.add_row("note", Text(n, style="yellow"))
        return t


def train_command(compiled, flags: dict, out: Path, resume: Path | None, out_console: Console,
                  err_console: Console) -> int:
    from .runtime.devices import describe
    from .runtime.trainer import Trainer, settings_from

    cfg = settings_from(compiled.program, {k: v for k, v in flags.items() if v is not None})
    if cfg.steps < 1 or cfg.batch < 1 or cfg.seq_len < 2:
        raise NestError.at(Pos(file="nestc train"), "steps and batch must be ≥ 1 and seq-len ≥ 2")
    if cfg.lr is not None and not (0 < cfg.lr < 3e38):  # NaN fails both comparisons
        raise NestError.at(Pos(file="--lr"), f"the learning rate must be a positive finite number, "
                           f"got {cfg.lr}", hint="for example --lr 1e-3")
    if resume is not None and not Path(resume).exists():
        raise NestError.at(Pos(file=str(resume)), "no such checkpoint",
                           hint="resume from a run folder's last.safetensors")
    from .compat import unsupported
    from .views import print_warnings

    print_warnings(err_console, unsupported(compiled.program))  # e.g. a box run token by token
    view = TrainView(cfg.steps, compiled.program.name, compiling=bool(cfg.compile))
    trainer = Trainer(compiled, cfg, out, progress=view.update)
    params = sum(p.numel() for p in trainer.model.parameters())
    err_console.print(f"[bold]{compiled.program.name}[/]: {params / 1e6:.2f}M parameters, "
                      f"{len(compiled.program.layers)} layers; data: {trainer.data_info['source']} "
                      f"({trainer.data_info['train_tokens']:,} train / {trainer.data_info['heldout_tokens']:,} "
                      f"held-out tokens, {trainer.tokenizer.name} tokens); "
                      f"device: {describe(trainer.device)}, {cfg.precision}; run folder: {out}")
    live = Live(view, console=err_console, refresh_per_second=4, transient=False,
                redirect_stdout=False) if err_console.is_terminal else None
    if live:
        with live:
            summary = trainer.run(resume)
    else:
        if cfg.compile:
            err_console.print(COMPILING)
        last_print = [0.0]

        def plain(record, _orig=view.update):
            _orig(record)
            now = time.perf_counter()
            if record.get("kind") in ("eval", "stopping") or now - last_print[0] > 10:
                last_print[0] = now
                err_console.print(view)

        trainer.progress = plain
        summary = trainer.run(resume)
    if summary["stopped"]:
        err_console.print(f"[yellow]{summary['stopped']}[/]")
    ev = summary["eval"]
    if ev:
        err_console.print(f"held-out loss {ev['loss']:.4f} (ppl {ev['ppl']:.2f}) at step {ev['step']}")
    ckpt = summary["checkpoint"] or "none written (the run stopped before its first checkpoint)"
    err_console.print(f"checkpoint {ckpt}\nmetrics    {summary['metrics']}\n"
                      f"plot       {summary['plot']}")
    return 1 if summary["stopped"] and "non-finite" in summary["stopped"] else 0


def generate_command(checkpoint: Path, prompt: str, tokens: int, temperature: float, top_k: int,
                     seed: int, device="cpu") -> int:
    from .runtime.generate import stream_tokens
    from .runtime.trainer import load_trained

    _compiled, model, tok, _meta = load_trained(checkpoint, device)
    ids = tok.encode(prompt) if prompt else [tok.encode("\n")[0]]
    sys.stdout.write(prompt)
    sys.stdout.flush()
    pending: list[int] = []
    for nxt in stream_tokens(model, ids, tokens, temperature, top_k, seed):
        pending.append(nxt)
        text = tok.decode(pending)
        # wait for the rest of a UTF-8 character cut at the end (at most 4 tokens); a token that
        # can never complete one (an invalid byte) is printed as it is, or nothing would stream
        if text.endswith("\ufffd") and len(pending) < 4:
            continue
        sys.stdout.write(text)
        sys.stdout.flush()
        pending = []
    if pending:
        sys.stdout.write(tok.decode(pending))
    sys.stdout.write("\n")
    return 0


def eval_command(checkpoint: Path, data: str | None, batch: int, seq_len: int | None,
                 max_batches: int | None, console: Console, device="cpu") -> int:
    from .runtime.data import prepare_corpus
    from .runtime.generate import perplexity
    from .runtime.trainer import load_trained

    _compiled, model, tok, meta = load_trained(checkpoint, device)
    cfg = meta.get("config", {})
    seq_len = seq_len or int(cfg.get("seq_len", 128))
    if data is None:
        source = cfg.get("data")
        dataset, info = prepare_corpus(source, tok, holdout=float(cfg.get("holdout", 0.05)))
        where = "its held-out split"
    else:
        dataset, info = prepare_corpus(data, tok, holdout=0.5)
        where = f"the held-out half of {data}"
    # a bar on stderr while it runs (causal signals take a pass per chunk boundary: minutes for
    # a large split); it goes away at the end, and stdout keeps only the result line
    bar = Progress(TextColumn("nestc eval"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
                   disable=not sys.stderr.isatty())
    with bar:
        task = bar.add_task("eval", total=None)
        result = perplexity(model, dataset, batch, seq_len, max_batches,
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"{meta.get('spec')} step {meta.get('step')} on {where}: "
                  f"loss {result['loss']:.4f}, perplexity {result['ppl']:.3f} "
                  f"({result['sequences']} sequences of {seq_len} tokens)")
    return 0
