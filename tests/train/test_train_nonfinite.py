"""The non-finite guard, with NaNs that training produces for real.

Two small specs written here blow up on some tokens only, so a data file decides which steps
go wrong: `blowup` has a matrix memory whose inner learning rate is 1e30 for tokens of one kind
(its forward pass overflows), `nangrad` has a finite forward pass whose gradient is NaN for
tokens of one kind, behind a level that learns every 4 steps. With `stop` the run stops at the
first bad step, says where, logs it, exits with code 1 and never checkpoints a non-finite value;
with `skip` the bad steps are skipped and training goes on.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import torch

import nestc
from nestc.runtime.checkpoint import load_checkpoint
from nestc.runtime.trainer import TrainConfig, Trainer

from train_helpers import nestc_cli, single_thread  # noqa: F401

BLOWUP = """\
spec blowup "A matrix memory whose inner learning rate is huge for some tokens"

param d_model = 16

block blowup_layer {
    box mem : memory {
        state     matrix(d_model)
        init      zeros
        keys      l2norm(in)
        values    in
        lr        1e30 * relu(mean(in))  # 0 for tokens with a negative mean, 1e30-ish otherwise
        objective l2(M(k), v)
        every     2 tokens
    }

    x = x + mem(rmsnorm(x))
}

model {
    dim d_model
    repeat 1 { blowup_layer }
}

train {
    optimizer adamw(lr=1e-4, weight_decay=0.0)
    seq_len    16
    batch      2
    steps      12
    warmup     0
    eval_every 0
}
"""

NANGRAD = """\
spec nangrad "A level of every 4 steps, then a gate whose gradient is NaN where it is 0"

param d_model = 16

block nangrad_layer {
    box slow : memory {
        state     mlp(d_model, expansion=1, residual=false)
        init      meta
        keys      in
        values    lss
        lr        1.0
        objective dot(M(k), v)
        every     4 steps
    }

    x = x + slow(rmsnorm(x))
    let u = mean(rmsnorm(x))
    x = x + exp(-1 / (u + abs(u))) * x  # exactly 0 where u < 0, and a NaN gradient there
}

model {
    dim d_model
    repeat 1 { nangrad_layer }
}

train {
    optimizer adamw(lr=1e-3, weight_decay=0.0)
    seq_len    16
    batch      2
    steps      16
    warmup     0
    eval_every 0
}
"""

LETTERS = [ord(c) for c in string.ascii_lowercase]


def tokens_by_sign(trainer: Trainer, module) -> tuple[int, int]:
    """(letter whose value at `module`'s output has the most negative mean, the most positive)
    in the freshly initialised model of `trainer` (the CLI builds the same one: same seed)."""
    seen = {}
    handle = module.register_forward_hook(lambda m, i, o: seen.__setitem__("u", o.mean(-1)[0]))
    with torch.no_grad():
        trainer.model(torch.tensor([LETTERS]))
    handle.remove()
    u = seen["u"]
    assert u.min() < -0.005 and u.max() > 0.005, u  # a clear margin either side of 0
    return LETTERS[int(u.argmin())], LETTERS[int(u.argmax())]


def write_data(path: Path, calm: int, wild: int) -> Path:
    """Mostly `calm` tokens, with a stretch of `wild` ones; the held-out tail is calm."""
    path.write_text(chr(calm) * 1500 + chr(wild) * 300 + chr(calm) * 2000)
    return path


def blowup_setup(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "blowup.nest"
    spec.write_text(BLOWUP)
    data = tmp_path / "data.txt"
    data.write_text("placeholder text\n" * 20)
    probe = Trainer(nestc.compile(spec), TrainConfig(data=str(data)), tmp_path / "probe")
    calm, wild = tokens_by_sign(probe, probe.model.layers[0].x_norm)  # lr = 1e30 * relu(mean)
    return spec, write_data(data, calm, wild)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def all_finite(path: Path) -> bool:
    tensors, _ = load_checkpoint(path)
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def test_stop_reports_where_logs_and_never_checkpoints_a_nan(tmp_path):
    spec, data = blowup_setup(tmp_path)
    run = tmp_path / "run"
    r = nestc_cli("train", spec, "--data", data, "--checkpoint-every", "1", "--out", run)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out
    log = records(run)
    bad = [x for x in log if x["kind"] == "nonfinite"]
    assert len(bad) == 1 and bad[0]["action"] == "stop"
    step = bad[0]["step"]
    # the message names the step, what went non-finite and the box it came from
    assert bad[0]["where"].startswith("the training loss")
    assert "layer 0, box mem" in bad[0]["where"]
    assert f"non-finite value in {bad[0]['where']} at step {step}; stopped" in out
    # every step before it trained, none after; the step numbers are those of the train records
    assert [x["step"] for x in log if x["kind"] == "train"] == list(range(1, step))
    assert step > 1, "the data should let some steps train before the first bad one"
    # the last checkpoint is the step before the bad one, and all of it is finite
    ckpt = run / "last.safetensors"
    _, meta = load_checkpoint(ckpt)
    assert meta["step"] == step - 1
    assert all_finite(ckpt)
    assert str(ckpt) in out


def test_stop_before_any_checkpoint_writes_none(tmp_path):
    spec, data = blowup_setup(tmp_path)
    run = tmp_path / "run"
    r = nestc_cli("train", spec, "--data", data, "--out", run)  # checkpoints every 100 steps
    assert r.returncode == 1, r.stdout + r.stderr
    assert not (run / "last.safetensors").exists()
    assert "none written" in r.stderr
    assert not list(run.glob(".*tmp*"))  # no half-written temporary file either


def test_skip_skips_the_bad_steps_and_goes_on(tmp_path):
    spec, data = blowup_setup(tmp_path)
    run = tmp_path / "run"
    r = nestc_cli("train", spec, "--data", data, "--on-nonfinite", "skip", "--checkpoint-every", "1",
                  "--out", run)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    log = records(run)
    skipped = [x["step"] for x in log if x["kind"] == "nonfinite"]
    trained = [x["step"] for x in log if x["kind"] == "train"]
    assert skipped and all(x["action"] == "skip" for x in log if x["kind"] == "nonfinite")
    assert max(trained) > min(skipped)  # training went on after a bad step
    assert sorted(skipped + trained) == list(range(1, 13))  # each step trained or skipped, once
    _, meta = load_checkpoint(run / "last.safetensors")
    assert meta["step"] == 12
    assert all_finite(run / "last.safetensors")
    # the skipped steps left no trace: every logged loss and the final evaluation are finite
    assert all(math.isfinite(x["loss"]) for x in log if x["kind"] in ("train", "eval"))
    assert log[-1]["kind"] == "eval" and log[-1]["step"] == 12


def test_skip_keeps_the_gradient_sums_of_a_slow_level_clean(tmp_path):
    """A NaN gradient in a step where a level of every 4 steps is half-way through its sum:
    skipping the step must not leave the NaN in that sum (or every later step fails too)."""
    spec = tmp_path / "nangrad.nest"
    spec.write_text(NANGRAD)
    data = tmp_path / "data.txt"
    data.write_text("placeholder text\n" * 20)
    compiled = nestc.compile(spec)
    probe = Trainer(compiled, TrainConfig(data=str(data)), tmp_path / "probe")
    wild, calm = tokens_by_sign(probe, probe.model.layers[0].u_norm)  # NaN gradient where u < 0
    write_data(data, calm, wild)
    trainer = Trainer(compiled, TrainConfig(steps=16, seq_len=16, batch=2, warmup=0, eval_every=0,
                                            eval_batches=1, data=str(data), on_nonfinite="skip"),
                      tmp_path / "run")
    slow = [p.detach().clone() for p in trainer.model.layers[0].box_slow.parameters()]
    summary = trainer.run()
    assert summary["stopped"] is None and summary["step"] == 16
    log = records(tmp_path / "run")
    skipped = [x["step"] for x in log if x["kind"] == "nonfinite"]
    assert skipped
    params = dict(trainer.model.named_parameters())
    for x in log:
        if x["kind"] == "nonfinite":  # it names the parameter whose gradient went bad
            assert x["where"].startswith("the gradient of ") and x["action"] == "skip"
            assert x["where"].split()[3] in params
    # the case that matters: a bad step while the slow level's sum is open (some steps summed)
    trained_before = [sum(1 for x in log if x["kind"] == "train" and x["step"] < s) for s in skipped]
    mid = [s for s, n in zip(skipped, trained_before) if n % 4]
    assert mid, f"no skipped step falls inside a slow level's sum: {skipped}"
    later = [x for x in log if x["kind"] == "train" and x["step"] > mid[0]]
    assert later, "training stopped making progress after the first skipped step"
    assert any(x["levels_updated"]["nangrad_layer.slow"] for x in later)  # the slow level updated
    for p, before in zip(trainer.model.layers[0].box_slow.parameters(), slow):
        assert torch.isfinite(p).all() and not torch.equal(p, before)
    assert all_finite(tmp_path / "run" / "last.safetensors")
