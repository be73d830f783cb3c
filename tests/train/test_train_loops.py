"""`nestc train --compile --loops MODE`: a compiled run whose chunk loops are compiled regions
follows the eager run (same data, same seed) and records the mode; a mode nestc does not know,
or --loops without --compile, is a one-screen error (exit 2) before anything is built."""

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
def test_a_compiled_run_with_regions_follows_the_eager_run(tmp_path):
    try:
        eager = losses(tmp_path / "eager")
        regions = losses(tmp_path / "region", compile=True, loops="region")
        assert loop_mode() == "region"  # the trainer really asked for regions
    finally:
        set_loop_mode("unroll")
    assert len(regions) == len(eager) == 3
    assert regions == pytest.approx(eager, rel=1e-4)
    _, meta = load_checkpoint(tmp_path / "region" / "last.safetensors")
    assert meta["config"]["loops"] == "region" and meta["config"]["compile"] is True


def test_an_unknown_loop_mode_is_a_user_error(tmp_path):
    r = nestc_cli("train", "hope", "--compile", "--loops", "weave", "--out", tmp_path / "run")
    assert_user_error(r, "--loops", "weave", "unroll", "region")
    assert not (tmp_path / "run").exists()


def test_loops_without_compile_is_a_user_error(tmp_path):
    r = nestc_cli("train", "hope", "--loops", "region", "--out", tmp_path / "run")
    assert_user_error(r, "--loops", "not compiled", "--compile")
    assert not (tmp_path / "run").exists()
