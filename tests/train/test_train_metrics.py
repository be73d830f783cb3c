"""What a run leaves in its folder: the metrics log (train records with the loss, the speed and
the levels that updated; evaluations with the perplexity) and a PNG of the curves."""

from __future__ import annotations

import json
import math
import struct

from train_helpers import trained_cms, trained_transformer


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_metrics_log_of_a_short_run():
    log = records(trained_transformer())
    head = log[0]
    assert head["kind"] == "run" and head["spec"] == "transformer" and head["step"] == 0
    assert head["config"]["steps"] == 6 and head["config"]["seq_len"] == 32
    assert head["params"] > 0 and head["data"]["tokenizer"] == "byte"

    train = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    for r in train:
        assert math.isfinite(r["loss"]) and 0 < r["loss"] < 10
        assert abs(r["ppl"] - math.exp(r["loss"])) < 1e-6 * r["ppl"]
        assert r["tokens_per_s"] > 0
        assert r["levels_updated"] == {"adamw.m": 1, "adamw.v": 1, "adamw.W": 1}
        assert r["tokens"] == r["step"] * 2 * 32
    assert train[-1]["loss"] < train[0]["loss"]  # it learned something

    evals = [r for r in log if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]  # --eval-every 3, and none repeated at the end
    for r in evals:
        assert math.isfinite(r["loss"]) and abs(r["ppl"] - math.exp(r["loss"])) < 1e-6 * r["ppl"]


def test_levels_updated_follow_each_level_frequency():
    """CMS with a fast level of 4 tokens (in context: 16 / 4 = 4 commits per sequence and step),
    a mid level of every 2 steps and a slow one of every 4 steps."""
    train = [r for r in records(trained_cms()) if r["kind"] == "train"]
    assert len(train) == 12
    for r in train:
        lv = r["levels_updated"]
        assert lv["attention_cms_layer.cms_sequential.cms_fast"] == 4
        assert lv["attention_cms_layer.cms_sequential.cms_mid"] == int(r["step"] % 2 == 0)
        assert lv["attention_cms_layer.cms_sequential.cms_slow"] == int(r["step"] % 4 == 0)
        assert lv["adamw.W"] == lv["adamw.m"] == lv["adamw.v"] == 1


def test_curves_png_is_a_png():
    png = (trained_transformer() / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", png[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", png[16:24])
    assert 200 < width < 5000 and 200 < height < 5000
    assert png[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"  # complete, not cut short
    from matplotlib.image import imread

    pixels = imread(trained_transformer() / "curves.png")
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0.01  # something is drawn on it
