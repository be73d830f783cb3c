"""`nestc train --compile --loops MODE [--first-pass shared]`: a compiled run whose chunk loops are
compiled regions, or calls of a body compiled by itself, follows the eager run (same data, same
seed) and records the mode, as does one whose first pass runs through the real pass's graphs; a
mode nestc does not know, or --loops / --first-pass without --compile, is a one-screen error
(exit 2) before anything is built."""

from __future__ import annotations

import pytest

import nestc
from nestc.runtime.checkpoint import load_checkpoint
from nestc.runtime.ops import loop_mode, set_loop_mode
from nestc.runtime.trainer import TrainConfig, Trainer

from train_helpers import HOPE, assert_user_error, nestc_cli, single_thread  # noqa: F401


def losses(run_dir, **kw) -> list[float]:
    cfg = TrainConfig(steps=3, seq_len=16, batch=2, warmup=1, eval_every=0, eval_batches=1,
                      checkpoint_every=3, **kw)
    seen = []
    Trainer(nestc.compile("hope", HOPE), cfg, run_dir,
            progress=lambda r: seen.append(r["loss"]) if r.get("kind") == "train" else None).run()
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("mode,first_pass", [("region", "frozen"), ("call", "frozen"), ("call", "shared")])
def test_a_compiled_run_with_regions_or_calls_follows_the_eager_run(tmp_path, mode, first_pass):
    try:
        eager = losses(tmp_path / "eager")
        compiled = losses(tmp_path / mode, compile=True, loops=mode, first_pass=first_pass)
        assert loop_mode() == mode  # the trainer really asked for this mode
    finally:
        set_loop_mode("unroll")
    assert len(compiled) == len(eager) == 3
    assert compiled == pytest.approx(eager, rel=1e-4)
    _, meta = load_checkpoint(tmp_path / mode / "last.safetensors")
    assert meta["config"]["loops"] == mode and meta["config"]["compile"] is True
    assert meta["config"]["first_pass"] == first_pass


def test_an_unknown_loop_mode_is_a_user_error(tmp_path):
    r = nestc_cli("train", "hope", "--compile", "--loops", "weave", "--out", tmp_path / "run")
    assert_user_error(r, "--loops", "weave", "unroll", "region")
    assert not (tmp_path / "run").exists()


def test_an_unknown_first_pass_is_a_user_error(tmp_path):
    r = nestc_cli("train", "hope", "--compile", "--first-pass", "thawed", "--out", tmp_path / "run")
    assert_user_error(r, "--first-pass", "thawed", "frozen", "shared")
    assert not (tmp_path / "run").exists()


def test_first_pass_without_compile_is_a_user_error(tmp_path):
    r = nestc_cli("train", "hope", "--first-pass", "shared", "--out", tmp_path / "run")
    assert_user_error(r, "--first-pass", "not compiled", "--compile")
    assert not (tmp_path / "run").exists()


def test_loops_without_compile_is_a_user_error(tmp_path):
    r = nestc_cli("train", "hope", "--loops", "region", "--out", tmp_path / "run")
    assert_user_error(r, "--loops", "not compiled", "--compile")
    assert not (tmp_path / "run").exists()


def test_region_loops_in_bf16_are_a_user_error(tmp_path):
    """torch 2.13 cannot compile a region's body under autocast (inductor finds float32 and
    bfloat16 operands of one product): refused before anything is built."""
    r = nestc_cli("train", "hope", "--compile", "--loops", "region", "--precision", "bf16", "--out", tmp_path / "run")
    assert_user_error(r, "--loops region", "--precision bf16", "unroll", "call")
    assert not (tmp_path / "run").exists()


def test_compiled_loss_functions_refuse_region_loops_under_autocast():
    """The same refusal for callers of the API, at the first call under autocast (before dynamo
    traces anything)."""
    import torch

    from nestc.runtime.train import make_loss_fns

    model = nestc.compile("hope", HOPE).model()
    try:
        fns = make_loss_fns(model, compile=True, loops="region")
    finally:
        set_loop_mode("unroll")
    x = torch.randint(0, 256, (1, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="'region' does not compile"):
        fns.main(x, x, {})
