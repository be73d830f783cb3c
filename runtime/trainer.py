"""`nestc train`: train a compiled spec on text, watch it, keep it, resume it exactly.

A run folder holds `metrics.jsonl` (one record per step and per evaluation), `curves.png`, and
checkpoints (`last.safetensors`, written atomically every `--checkpoint-every` steps and at the
end). A checkpoint holds the model, the optimizers' state, the step, the data sampler's state,
the RNG state and the spec bundle (texts, never code), so `--resume` continues exactly: 20 steps
straight give the same parameters as 10, a resume, and 10 more.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from nestc.diagnostics import NestError, Pos

from .checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from .context import Ctx
from .data import prepare_corpus
from .devices import autocast, check_loops_precision, check_precision, resolve_device
from .interrupts import StopRequests
from .metrics import MetricsLog, plot_metrics
from .tokenizers import get_tokenizer, tokenizer_from_config
from .train import LevelOptimizer, heldout_loss, lr_factor, make_loss_fns, make_optimizer, signals

FORMAT_KIND = "nestc-run/1"


@dataclass
class TrainConfig:
    steps: int = 300
    seq_len: int = 128
    batch: int = 8
    warmup: int = 30
    schedule: str = "cosine"
    clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 8
    seed: int = 0
    on_nonfinite: str = "stop"  # stop | skip
    lss: str = "sequence"  # local surprise signals in training: sequence | causal (see train.signals)
    compile: bool = False
    loops: str = "unroll"  # how a compiled step traces chunk loops (nestc.runtime.ops.LOOP_MODES)
    first_pass: str = "frozen"  # how a compiled step compiles its first pass (train.FIRST_PASSES)
    data: str | None = None  # None: the embedded corpus
    tokenizer: str = "byte"
    holdout: float = 0.05
    optimizer: str | None = None  # override the train section's optimizer (e.g. "m3")
    lr: float | None = None
    checkpoint_every: int = 100
    max_minutes: float | None = None  # stop cleanly (and checkpoint) after this much wall time
    log_every: int = 1
    device: str = "cpu"  # cpu, cuda, cuda:N or auto (runtime/devices.py; the CLI passes auto)
    precision: str = "fp32"  # fp32 | bf16 (autocast; runtime/devices.py)


class NonFinite(Exception):
    """A NaN/Inf in step `step` (numbered as the train records are: the step being taken).
    `undoable` is False once the update has been applied: skipping cannot take it back."""

    def __init__(self, where: str, step: int, undoable: bool = True):
        super().__init__(f"non-finite value in {where} at step {step}")
        self.where = where
        self.step = step
        self.undoable = undoable


def settings_from(program, overrides: dict[str, Any]) -> TrainConfig:
    """The spec's train section, then explicit overrides (CLI flags)."""
    cfg = TrainConfig()
    for k, v in program.train.items():
        if hasattr(cfg, k):
            setattr(cfg, k, v)
    tok = program.model.get("tokenizer")
    if tok:
        cfg.tokenizer = tok
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg


def owner_of(name: str) -> str:
    """A readable 'layer N, box B' for a parameter name of a generated model."""
    parts = name.split(".")
    if parts[0] == "layers" and len(parts) > 2:
        box = next((p[4:] for p in parts if p.startswith("box_")), None)
        where = f"layer {parts[1]}"
        return f"{where}, box {box}" if box else f"{where}, {'.'.join(parts[2:])}"
    return name


def described(name: str) -> str:
    """`name (layer N, box B)`, or the bare name when it says nothing more."""
    owner = owner_of(name)
    return name if owner == name else f"{name} ({owner})"


def _nonfinite_in(x: Any) -> bool:
    if torch.is_tensor(x):
        return x.is_floating_point() and x.numel() > 0 and not bool(torch.isfinite(x).all())
    if isinstance(x, dict):
        return any(_nonfinite_in(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_nonfinite_in(v) for v in x)
    return False


class Trainer:
    def __init__(self, compiled, cfg: TrainConfig, run_dir: Path, console=None,
                 progress: Callable[[dict], None] | None = None):
        self.compiled = compiled
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.console = console
        self.progress = progress
        self.device = resolve_device(cfg.device)
        check_precision(cfg.precision)
        if cfg.compile:
            check_loops_precision(cfg.loops, cfg.precision)
        torch.manual_seed(cfg.seed)
        self.tokenizer = get_tokenizer(cfg.tokenizer)
        self.data, self.data_info = prepare_corpus(cfg.data, self.tokenizer, holdout=cfg.holdout)
        # built on the CPU with the seeded CPU generator, then moved: the same initial weights on
        # every device
        self.model = compiled.model(vocab=self.tokenizer.vocab_size).to(self.device)
        settings = {"lr": cfg.lr} if cfg.lr is not None else None
        self.optimizer: LevelOptimizer = make_optimizer(compiled, self.model, cfg.optimizer, settings)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.fns = make_loss_fns(self.model, compile=cfg.compile, loops=cfg.loops, first_pass=cfg.first_pass)
        if cfg.compile:
            self.optimizer.compile_steps()
        self.step = 0
        self.tokens_seen = 0
        self.log: MetricsLog | None = None

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_meta(self) -> dict[str, Any]:
        from nestc.bundle import make_bundle

        opt_tensors, skeleton = flatten_state(self.optimizer.state_dict(), "optim")
        self._opt_tensors = opt_tensors
        return {
            "kind": FORMAT_KIND,
            "spec": self.compiled.program.name,
            "bundle": make_bundle(self.compiled),
            "config": asdict(self.cfg),
            "tokenizer": self.tokenizer.to_config(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "optimizer": skeleton,
            "rng": torch.get_rng_state().tolist(),
            "data": self.data_info,
        }

    def save(self, path: Path) -> None:
        meta = self.checkpoint_meta()
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(self._opt_tensors)
        # levels of every C steps sum their gradients over C steps (NL Eq. 71): a checkpoint taken
        # between two of their updates holds the partial sums, or a resume would lose them
        for name, p in self.model.named_parameters():
            if getattr(p, "_nest_period", 1) > 1 and p.grad is not None:
                tensors[f"grad.{name}"] = p.grad
        save_checkpoint(path, tensors, meta)

    def restore(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        where = Pos(file=str(path))
        if meta.get("kind") != FORMAT_KIND:
            raise NestError.at(where, "this checkpoint holds no training run",
                               hint="resume from a checkpoint written by `nestc train`")
        if meta.get("spec") != self.compiled.program.name:
            raise NestError.at(where, f"this checkpoint was trained from spec `{meta.get('spec')}`, "
                               f"not `{self.compiled.program.name}`",
                               hint=f"resume it with `nestc train {meta.get('spec')} --resume {path}`")
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        own = self.model.state_dict()
        if set(model_sd) != set(own) or any(model_sd[k].shape != own[k].shape for k in own):
            raise NestError.at(where, "this checkpoint's model does not match the spec as it is now",
                               hint="the spec or its --set overrides changed since the checkpoint; "
                                    "resume with the same spec and settings")
        self.model.load_state_dict(model_sd)
        opt_state = unflatten_state({k: v for k, v in tensors.items() if k.startswith("optim.")},
                                    meta["optimizer"])
        self.optimizer.load_state_dict(opt_state)
        params = dict(self.model.named_parameters())
        for k, g in tensors.items():
            if k.startswith("grad.") and k[len("grad."):] in params:
                p = params[k[len("grad."):]]
                if g.shape != p.shape:
                    raise NestError.at(where, "this checkpoint's model does not match the spec as it is now",
                                       hint="the spec or its --set overrides changed since the checkpoint; "
                                            "resume with the same spec and settings")
                p.grad = g.to(device=p.device, dtype=p.dtype).clone()
        self.step = int(meta["step"])
        self.tokens_seen = int(meta.get("tokens_seen", 0))
        torch.set_rng_state(torch.tensor(meta["rng"], dtype=torch.uint8))

    # ------------------------------------------------------------------ steps
    def _set_lr(self) -> float:
        f = lr_factor(self.step, self.cfg.steps, self.cfg.warmup, self.cfg.schedule)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f
        return f

    def _check_grads(self, x, lss) -> None:
        for name, p in self.model.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                # a finite loss with a non-finite gradient: usually a forward value that diverged
                # where it does not reach the loss (a memory's state after its last read), and
                # 0 * inf in the backward; name that place when there is one
                raise NonFinite(f"the gradient of {described(name)}" + self._origin(x, Ctx(lss=lss)),
                                self.step + 1)

    def train_step(self) -> dict[str, Any]:
        x, y = self.data.batch(self.step, self.cfg.batch, self.cfg.seq_len, seed=self.cfg.seed)
        x, y = x.to(self.device), y.to(self.device)
        self._set_lr()
        start = time.perf_counter()
        self.model.train()
        with autocast(self.device, self.cfg.precision):
            lss = signals(self.model, self.fns, x, y, scope=self.cfg.lss)
        for k, s in lss.items():
            if not torch.isfinite(s).all():
                layer, _, box = k.partition(".")
                raise NonFinite(f"the local surprise signal of layer {layer}, box {box}"
                                + self._origin(x, Ctx(probing=True, lss={k: torch.zeros_like(v)
                                                                         for k, v in lss.items()})),
                                self.step + 1)
        with autocast(self.device, self.cfg.precision):
            loss = self.fns.main(x, y, lss)
        if not torch.isfinite(loss):
            raise NonFinite("the training loss" + self._origin(x, Ctx(lss=lss)), self.step + 1)
        slow = {p: p.grad.clone() for p in self.model.parameters()
                if getattr(p, "_nest_period", 1) > 1 and p.grad is not None}
        loss.backward()
        try:
            self._check_grads(x, lss)
        except NonFinite:
            # a skipped step must not leave its NaNs in the gradient sums of the levels of
            # every C steps: give them back the sums they had before this step
            for p in self.model.parameters():
                if getattr(p, "_nest_period", 1) > 1:
                    p.grad = slow.get(p)
            raise
        gnorm = torch.nn.utils.clip_grad_norm_(self._clip_params(), self.cfg.clip) if self.cfg.clip else None
        due = self.optimizer.levels_due()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():  # an inner rule or the optimizer blew up
                raise NonFinite(f"the parameter {described(name)} after the update", self.step + 1,
                                undoable=False)
        elapsed = time.perf_counter() - start
        n_tok = x.numel()
        self.step += 1
        self.tokens_seen += n_tok
        loss = float(loss.detach())
        return {"step": self.step, "kind": "train", "loss": loss, "ppl": math.exp(min(loss, 50)),
                "lr": self.optimizer.param_groups[0]["lr"], "tokens_per_s": n_tok / elapsed,
                "grad_norm": float(gnorm) if gnorm is not None else None,
                "levels_updated": self.levels_updated(due), "tokens": self.tokens_seen}

    @torch.no_grad()
    def _origin(self, x, ctx: Ctx) -> str:
        """Where a non-finite forward value first appears: the first module (in the order they
        finish) whose output or new state holds a NaN/Inf. Runs the pass again, on failure only."""
        found: list[str] = []
        names = {m: n for n, m in self.model.named_modules() if n}

        def hook(module, _inputs, output):
            if not found and _nonfinite_in(output):
                found.append(names[module])

        handles = [m.register_forward_hook(hook) for m in names]
        rng = torch.get_rng_state()
        try:
            self.model(x, ctx=ctx)
        except Exception:  # a diagnosis only: never mask the error being reported
            pass
        finally:
            for h in handles:
                h.remove()
            torch.set_rng_state(rng)
        return f" (first non-finite output: {described(found[0])})" if found else ""

    def _clip_params(self):
        """The per-step parameters. Levels that learn every C steps keep accumulating their
        gradients between updates (NL Eq. 71); clipping those sums every step would distort them."""
        return [p for p in self.model.parameters()
                if p.grad is not None and getattr(p, "_nest_period", 1) == 1]

    def levels_updated(self, due: dict[int, bool]) -> dict[str, int]:
        """How often each level updated in this step: in-context memories commit every C tokens
        of each sequence; levels of every C steps update when due; the per-step level once."""
        out: dict[str, int] = {}
        t = self.cfg.seq_len
        for q, b in self.compiled.program.boxes.items():
            if b.kind != "memory":
                continue
            if b.freq.unit == "token":
                out[q] = t // b.freq.period
            elif b.freq.unit == "step":
                out[q] = int(bool(due.get(b.freq.period, False)))
        # the optimizers in use (an --optimizer override's, not the train section's), on their
        # own step count (steps skipped for non-finite values do not advance it)
        for name, period in self.optimizer.boxes.items():
            out[name] = int(self.optimizer.steps % period == 0)
        return out

    def evaluate(self) -> dict[str, Any]:
        """Held-out loss (`train.heldout_loss`: fresh memories per sequence, causal signals)."""
        batches = self.data.eval_batches(self.cfg.batch, self.cfg.seq_len, max_batches=self.cfg.eval_batches)
        loss, _ = heldout_loss(self.model, self.fns, batches, self.device, self.cfg.precision)
        return {"step": self.step, "kind": "eval", "loss": loss, "ppl": math.exp(min(loss, 50))}

    # ------------------------------------------------------------------ the loop
    def run(self, resume: Path | None = None) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            self.restore(resume)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", resume_step=self.step if resume else None)
        if not resume:
            self.log.write({"step": 0, "kind": "run", "spec": self.compiled.program.name,
                            "config": asdict(self.cfg), "device": str(self.device), "data": self.data_info,
                            "params": sum(p.numel() for p in self.model.parameters())})
        wall0 = time.perf_counter()
        stopped = last_eval = None
        # Ctrl-C or a kill stops the loop at a step boundary (runtime/interrupts.py). A second one
        # stops it at once: if that cut a step short (`in_step`), its state may be half-updated
        # and no checkpoint is written for it (the last periodic one stands). A non-finite stop
        # saves nothing either (`whole` False): the last periodic checkpoint is the one to resume.
        in_step = False
        whole = True
        try:
            with StopRequests(on_request=self._stop_requested) as stops:
                while self.step < self.cfg.steps:
                    if stops.requested:
                        stopped = f"interrupted at step {self.step}"
                        break
                    in_step = True
                    try:
                        record = self.train_step()
                    except NonFinite as bad:
                        in_step = False
                        self.optimizer.zero_grad(set_to_none=True)
                        action = self.cfg.on_nonfinite if bad.undoable else "stop"
                        self.log.write({"step": bad.step, "kind": "nonfinite", "where": bad.where,
                                        "action": action})
                        if action == "skip":
                            self.step += 1
                            if self.progress:
                                self.progress({"kind": "nonfinite", "where": bad.where, "step": self.step})
                            continue
                        whole = False
                        if bad.undoable:
                            stopped = f"non-finite value in {bad.where} at step {bad.step}; stopped " \
                                      "(--on-nonfinite skip would skip such steps)"
                        else:
                            stopped = f"non-finite value in {bad.where} at step {bad.step}; stopped: " \
                                      "the update was already applied, so the step cannot be skipped " \
                                      "(lower the learning rate and resume from the last checkpoint)"
                        break
                    in_step = False
                    if self.step % self.cfg.log_every == 0:
                        self.log.write(record)
                    if self.progress:
                        self.progress(record)
                    if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                        last_eval = self.evaluate()
                        self.log.write(last_eval)
                        if self.progress:
                            self.progress(last_eval)
                    if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                        self.save(self.run_dir / "last.safetensors")
                    if self.cfg.max_minutes and (time.perf_counter() - wall0) / 60 >= self.cfg.max_minutes:
                        stopped = f"stopped after {self.cfg.max_minutes:g} minutes (--max-minutes) at step {self.step}"
                        break
        except KeyboardInterrupt:
            stopped = (f"interrupted during step {self.step + 1}, which is not saved (its state may be "
                       "half-updated)" if in_step else f"interrupted at step {self.step}")
        if whole and not in_step:
            # the checkpoint before the evaluation: a final evaluation can take minutes (a compiled
            # run's first one compiles), and a second Ctrl-C during it must not cost the run its state
            self.save(self.run_dir / "last.safetensors")
            if last_eval is None or last_eval["step"] != self.step:
                try:
                    last_eval = self.evaluate()
                except KeyboardInterrupt:
                    stopped = (stopped or f"finished at step {self.step}") + "; the final evaluation was interrupted"
                else:
                    self.log.write(last_eval)
                    if self.progress:
                        self.progress(last_eval)
        self.log.close()
        try:
            plot_metrics(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png",
                         title=f"{self.compiled.program.name}")
        except NestError:
            pass
        return {"step": self.step, "stopped": stopped, "eval": last_eval,
                "checkpoint": str(self.run_dir / "last.safetensors")
                if (self.run_dir / "last.safetensors").is_file() else None,
                "metrics": str(self.run_dir / "metrics.jsonl"), "plot": str(self.run_dir / "curves.png")}

    def _stop_requested(self, what: str) -> None:
        """The first Ctrl-C or kill of a run (called from the signal handler): say so at once."""
        if self.progress:
            self.progress({"kind": "stopping", "step": self.step, "why": what})


# ---------------------------------------------------------------------------------------------
# loading a trained model (generate, eval)
# ---------------------------------------------------------------------------------------------


def load_trained(path: str | Path, device: str | torch.device = "cpu"):
    """(compiled, model, tokenizer, meta) from a checkpoint written by `nestc train`; the model
    on `device`."""
    from nestc.bundle import compile_bundle

    tensors, meta = load_checkpoint(path)
    where = Pos(file=str(path))
    if meta.get("kind") != FORMAT_KIND:
        raise NestError.at(where, "this checkpoint holds no trained model",
                           hint="use a checkpoint written by `nestc train`")
    compiled = compile_bundle(meta["bundle"], str(path))
    tokenizer = tokenizer_from_config(meta["tokenizer"], where)
    model = compiled.model(vocab=tokenizer.vocab_size)
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd)
    except RuntimeError:
        raise NestError.at(where, "the checkpoint's tensors do not fit the model its spec describes",
                           hint="the checkpoint is damaged or was edited") from None
    model.to(device).eval()
    return compiled, model, tokenizer, meta
