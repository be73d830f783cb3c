"""Resuming is exact: N steps straight give the same parameters, bit for bit, as a run
interrupted after a checkpoint and resumed from it -- with in-context memories, local surprise
signals, levels of every C steps (whose gradient sums span the checkpoint) and an optimizer
with a slow level (M3's every-f-steps momentum)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import nestc
from nestc.runtime.checkpoint import load_checkpoint
from nestc.runtime.trainer import TrainConfig, Trainer

from train_helpers import CMS_STEPS, HOPE, TRANSFORMER, single_thread  # noqa: F401

# hope in small, with its CMS mid and slow levels learning across steps (every 2 and 4 steps)
HOPE_STEPS = dict(HOPE, c_mid="2", c_slow="4", mid_unit='"steps"', slow_unit='"steps"')

CASES = {
    # name: (spec, overrides, train overrides, total steps, checkpoint step)
    "transformer": ("transformer", TRANSFORMER, {}, 20, 10),
    # in-context memories (self-modifying Titans, CMS fast level: lss) and step levels
    "hope": ("hope", HOPE_STEPS, {}, 8, 3),
    # the checkpoint falls inside the gradient sums of the levels of every 2 and 4 steps
    "cms_steps": ("cms", CMS_STEPS, {}, 8, 3),
    # M3's slow momentum (every f = 10 steps) accumulates across the checkpoint
    "m3": ("transformer", TRANSFORMER, {"optimizer": "m3"}, 12, 5),
}


def config(steps: int, every: int, **extra) -> TrainConfig:
    return TrainConfig(steps=steps, seq_len=16, batch=2, warmup=3, eval_every=0, eval_batches=1,
                       checkpoint_every=every, **extra)


class Interrupt:
    """A progress callback: copies the checkpoint of step `at` aside when the next step is
    logged, and presses Ctrl-C two steps after it (the run then writes its own last.safetensors,
    which resuming must not use)."""

    def __init__(self, run_dir: Path, at: int, keep: Path):
        self.run_dir, self.at, self.keep = run_dir, at, keep

    def __call__(self, record: dict) -> None:
        if record.get("kind") != "train":
            return
        if record["step"] == self.at + 1:
            shutil.copy(self.run_dir / "last.safetensors", self.keep)
        if record["step"] == self.at + 2:
            raise KeyboardInterrupt


@pytest.mark.parametrize("case", list(CASES))
def test_resume_is_exact(case, tmp_path):
    spec, overrides, extra, total, split = CASES[case]
    straight = Trainer(nestc.compile(spec, overrides), config(total, split, **extra), tmp_path / "a")
    summary = straight.run()
    assert summary["step"] == total and summary["stopped"] is None

    run_b = tmp_path / "b"
    first = Trainer(nestc.compile(spec, overrides), config(total, split, **extra), run_b)
    keep = tmp_path / f"step{split}.safetensors"
    first.progress = Interrupt(run_b, split, keep)
    summary = first.run()
    assert summary["stopped"] == f"interrupted at step {split + 2}"
    _, meta = load_checkpoint(keep)
    assert meta["step"] == split

    resumed = Trainer(nestc.compile(spec, overrides), config(total, split, **extra), run_b)
    summary = resumed.run(resume=keep)
    assert summary["step"] == total and summary["stopped"] is None

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"parameters that differ after resuming: {differ}"
    # the optimizers' state too (moments, slow momentum sums, step counters)
    sa, sb = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert sa["steps"] == sb["steps"] == total
    for oa, ob in zip(sa["optimizers"], sb["optimizers"]):
        for pa, pb in zip(oa["state"].values(), ob["state"].values()):
            for name in pa:
                assert torch.equal(torch.as_tensor(pa[name]), torch.as_tensor(pb[name])), name

    # the log of the resumed run describes one run: every step once, in order, nothing from
    # the interrupted tail (steps split+1, split+2 and its evaluation were dropped and redone)
    records = [json.loads(line) for line in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "run" and sum(r["kind"] == "run" for r in records) == 1
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == list(range(1, total + 1))
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)
    evals = [r["step"] for r in records if r["kind"] == "eval"]
    assert evals == [total]
    # and its losses are those of the straight run
    straight_log = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in straight_log if r["kind"] == "train"] == \
        [r["loss"] for r in records if r["kind"] == "train"]


def test_a_checkpoint_between_slow_updates_holds_their_gradient_sums(tmp_path):
    """A level of every C steps sums its gradients for C steps: a checkpoint taken in between
    stores the partial sums (and only then), so a resume continues them."""
    trainer = Trainer(nestc.compile("cms", CMS_STEPS), config(3, 3), tmp_path)
    trainer.run()
    tensors, _meta = load_checkpoint(tmp_path / "last.safetensors")
    sums = {k for k in tensors if k.startswith("grad.")}
    slow = {n for n, p in trainer.model.named_parameters() if getattr(p, "_nest_period", 1) > 1}
    # after 3 steps the level of every 2 steps has one step of sums, that of every 4 steps three
    assert sums == {f"grad.{n}" for n in slow} and sums
    for n in slow:
        assert torch.equal(tensors[f"grad.{n}"], dict(trainer.model.named_parameters())[n].grad)
        assert tensors[f"grad.{n}"].abs().sum() > 0
