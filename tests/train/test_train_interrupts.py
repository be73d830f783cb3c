"""Ctrl-C in the middle of a training step (runtime/interrupts.py): the first stops the run at the
end of that step, whose checkpoint is then exactly the state of a run of that many steps; a second
stops it at once and writes no checkpoint for the step it cut. Real signals, sent to this process
from inside a step (a forward hook of the model), on CMS with levels of every 2 and 4 steps (whose
gradient sums a half-done step would leave wrong)."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
import torch

import nestc
from nestc.runtime.checkpoint import load_checkpoint
from nestc.runtime.trainer import TrainConfig, Trainer

from train_helpers import CMS_STEPS, single_thread  # noqa: F401


def config(steps: int, checkpoint_every: int) -> TrainConfig:
    return TrainConfig(steps=steps, seq_len=16, batch=2, warmup=3, eval_every=0, eval_batches=1,
                       checkpoint_every=checkpoint_every)


class CtrlC:
    """Presses Ctrl-C `times` times (SIGINT to this process) once, in step `at` (counted from 1),
    from a hook `where` in that step: the model's first forward pass, its backward pass, or
    between the optimizer's first level's update and the others'."""

    def __init__(self, trainer: Trainer, at: int, times: int, where: str = "forward"):
        self.trainer, self.at, self.times, self.sent = trainer, at, times, False
        if where == "forward":
            trainer.model.embed.register_forward_hook(lambda *args: self.press())
        elif where == "backward":
            trainer.model.embed.register_full_backward_hook(lambda *args: self.press())
        else:
            trainer.optimizer.optimizers[0].register_step_post_hook(lambda *args: self.press())

    def press(self) -> None:
        if not self.sent and self.trainer.step == self.at - 1:
            self.sent = True
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


def interrupted_run(tmp_path, at: int, times: int, checkpoint_every: int = 0, where: str = "forward"):
    trainer = Trainer(nestc.compile("cms", CMS_STEPS), config(20, checkpoint_every), tmp_path / "run")
    assert len(trainer.optimizer.optimizers) > 1  # levels of their own periods: a step can be half-done
    heard = []
    trainer.progress = heard.append
    CtrlC(trainer, at, times, where)
    return trainer, trainer.run(), heard


# (the embedding's backward hook fires for its output: its input, token ids, has no gradient)
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("where", ["forward", "backward", "optimizer"])
def test_the_first_ctrl_c_stops_at_the_end_of_the_step_with_its_exact_state(tmp_path, where):
    trainer, summary, heard = interrupted_run(tmp_path, at=6, times=1, where=where)
    # the step it landed in ran to its end, and the run stopped there
    assert summary["stopped"] == "interrupted at step 6" and trainer.step == 6
    assert [r for r in heard if r.get("kind") == "stopping"] == [{"kind": "stopping", "step": 5, "why": "Ctrl-C"}]
    tensors, meta = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta["step"] == 6
    # ... and the checkpoint is the state after step 6 of an uninterrupted run, bit for bit (model,
    # optimizer, and the gradient sums of the levels of every 4 steps, which step 6 added to): the
    # periodic checkpoint of step 6, copied aside before step 7's overwrites it
    straight = Trainer(nestc.compile("cms", CMS_STEPS), config(20, 6), tmp_path / "straight")
    kept = tmp_path / "step6.safetensors"

    def keep_step_6(record):
        if record.get("kind") == "train" and record["step"] == 7:
            shutil.copy(tmp_path / "straight" / "last.safetensors", kept)

    straight.progress = keep_step_6
    straight.run()
    expected, expected_meta = load_checkpoint(kept)
    assert expected_meta["step"] == 6
    assert tensors.keys() == expected.keys() and any(k.startswith("grad.") for k in tensors)
    assert [k for k in tensors if not torch.equal(tensors[k], expected[k])] == []
    assert summary["eval"]["step"] == 6  # the final evaluation ran, after the checkpoint


def test_a_second_ctrl_c_stops_at_once_and_saves_nothing_of_the_cut_step(tmp_path):
    trainer, summary, _ = interrupted_run(tmp_path, at=6, times=2, checkpoint_every=4)
    assert summary["stopped"].startswith("interrupted during step 6, which is not saved")
    assert trainer.step == 5  # the cut step never finished
    _, meta = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta["step"] == 4  # the last periodic checkpoint stands
    assert summary["eval"] is None  # no final evaluation of a half-updated state


def test_handlers_are_restored_after_a_run(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    Trainer(nestc.compile("cms", CMS_STEPS), config(2, 0), tmp_path / "run").run()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
