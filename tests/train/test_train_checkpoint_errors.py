"""Bad checkpoints on the command line: every one is a clean error (exit code 2, a message that
says what is wrong, no traceback) for `nestc train --resume`, `nestc generate` and `nestc eval`,
and a failed resume leaves the run folder as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nestc.runtime.checkpoint import save_checkpoint

from train_helpers import TRANSFORMER, assert_user_error, nestc_cli, sets, trained_transformer

TRAIN = ["--steps", "8", "--batch", "2", "--seq-len", "32"]


def bad_file(kind: str, folder: Path) -> Path:
    """A checkpoint path that is wrong in the way `kind` says."""
    good = trained_transformer() / "last.safetensors"
    p = folder / f"{kind}.safetensors"
    if kind == "truncated":
        data = good.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "plain":  # weights, but not a nestc checkpoint
        save_file({"weight": torch.randn(4, 4)}, str(p))
    elif kind == "text":
        p.write_text("step 8, loss 2.1\n")
    elif kind == "missing":
        pass
    elif kind == "no-run":  # a nestc checkpoint that holds no training run
        save_checkpoint(p, {"w": torch.zeros(2)}, {"kind": "something else"})
    return p


MESSAGES = {
    "truncated": ["truncated or corrupt"],
    "plain": ["not a nestc checkpoint", "format"],
    "text": ["not a safetensors file", "text file"],
    "missing": [],  # train: "no such checkpoint"; generate/eval: "does not exist"
    "no-run": ["holds no"],
}


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_resume_from_a_bad_checkpoint(kind, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_transformer(), run)
    log_before = (run / "metrics.jsonl").read_bytes()
    ckpt_before = (run / "last.safetensors").read_bytes()
    path = bad_file(kind, tmp_path)
    r = nestc_cli("train", "transformer", *TRAIN, "--out", run, "--resume", path, *sets(TRANSFORMER))
    out = assert_user_error(r, *MESSAGES[kind], str(path))
    if kind == "missing":
        assert "no such checkpoint" in out
    # the run folder is untouched: its log and checkpoint are those of the first run
    assert (run / "metrics.jsonl").read_bytes() == log_before
    assert (run / "last.safetensors").read_bytes() == ckpt_before


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_generate_from_a_bad_checkpoint(kind, tmp_path):
    path = bad_file(kind, tmp_path)
    r = nestc_cli("generate", path, "--prompt", "The ", "--tokens", "5")
    out = assert_user_error(r, *MESSAGES[kind], str(path))
    if kind == "missing":
        assert "does not exist" in out
    assert r.stdout.strip() == ""  # nothing was generated


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_eval_of_a_bad_checkpoint(kind, tmp_path):
    path = bad_file(kind, tmp_path)
    r = nestc_cli("eval", path, "--max-batches", "1")
    assert_user_error(r, *MESSAGES[kind])


def test_resume_with_a_checkpoint_of_another_spec(tmp_path):
    ckpt = trained_transformer() / "last.safetensors"
    r = nestc_cli("train", "titans", *TRAIN, "--out", tmp_path / "t", "--resume", ckpt,
                  "--set", "n_layers=1", "--set", "d_model=32", "--set", "heads=2")
    assert_user_error(r, "trained from spec `transformer`, not `titans`",
                      "nestc train transformer --resume")


def test_resume_after_set_changed_the_model(tmp_path):
    ckpt = trained_transformer() / "last.safetensors"
    changed = dict(TRANSFORMER, d_model="48")
    r = nestc_cli("train", "transformer", *TRAIN, "--out", tmp_path / "t", "--resume", ckpt, *sets(changed))
    assert_user_error(r, "does not match the spec as it is now", "--set")


def test_resume_with_matching_settings_works(tmp_path):
    """The control of the two tests above: the same spec and --set values resume fine."""
    run = tmp_path / "run"
    shutil.copytree(trained_transformer(), run)
    r = nestc_cli("train", "transformer", *TRAIN, "--out", run, "--resume", run / "last.safetensors",
                  *sets(TRANSFORMER))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "held-out loss" in r.stderr and "at step 8" in r.stderr
