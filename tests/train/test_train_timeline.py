"""`nestc graph SPEC --timeline RUN`: when each level updated during a run, against the level
graph -- the cadence of every level must be readable from it."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from rich.console import Console

import nestc
from nestc.diagnostics import NestError
from nestc.levels import build
from nestc.loader import load
from nestc.resolve import resolve
from nestc.runtime.trainer import TrainConfig, Trainer
from nestc.timeline import IDLE, PARTIAL, SKIPPED, UPDATED, render_timeline

from train_helpers import (CMS_STEPS, TRANSFORMER, assert_user_error, nestc_cli, sets, single_thread,  # noqa: F401
                           trained_cms, trained_transformer)

FAST = "attention_cms_layer.cms_sequential.cms_fast"
MID = "attention_cms_layer.cms_sequential.cms_mid"
SLOW = "attention_cms_layer.cms_sequential.cms_slow"
STRIP = re.compile(f"[{IDLE}{UPDATED}{SKIPPED}{PARTIAL}]+")


def graph(spec: str, overrides: dict[str, str]):
    return build(resolve(load(spec), overrides))


def text_of(renderable) -> str:
    console = Console(record=True, width=260, color_system=None)
    console.print(renderable)
    return console.export_text()


def row(text: str, box: str) -> dict:
    """The table row whose boxes column starts with `box`: level, strip, updates, per step."""
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 5 and cells[1].split(", ")[0] == box:
            strip = next((c for c in cells[3:] if STRIP.fullmatch(c)), None)
            return {"level": cells[0], "boxes": cells[1], "frequency": cells[2], "strip": strip,
                    "updates": cells[-2], "per_step": cells[-1], "line": line}
    raise AssertionError(f"no row for {box} in\n{text}")


def test_timeline_shows_each_level_cadence():
    text = text_of(render_timeline(graph("cms", CMS_STEPS), trained_cms()))
    slow, mid, fast = row(text, SLOW), row(text, MID), row(text, FAST)
    weights, moments = row(text, "adamw.W"), row(text, "adamw.m")
    # levels of every C steps: a mark every C steps
    assert slow["strip"] == "···█···█···█" and slow["updates"] == "3"
    assert slow["per_step"] == "1 per 4 steps" and slow["frequency"] == "every 4 steps"
    assert mid["strip"] == "·█·█·█·█·█·█" and mid["updates"] == "6" and mid["per_step"] == "1 per 2 steps"
    # the per-step levels: every step
    assert weights["strip"] == moments["strip"] == "█" * 12
    assert weights["updates"] == "12" and weights["per_step"] == "1"
    assert moments["boxes"] == "adamw.m, adamw.v"  # one level, two boxes
    # the in-context level: T / C = 16 / 4 commits in every step
    assert fast["strip"] == "█" * 12 and fast["updates"] == "48" and fast["per_step"] == "4"
    assert fast["frequency"] == "every 4 tokens"
    # slowest first, as `nestc graph` orders the levels
    order = [int(r["level"]) for r in (slow, mid, weights, moments, fast)]
    assert order == sorted(order) == [1, 2, 3, 4, 5]
    attn = next(line for line in text.splitlines() if "attention_cms_layer.attn" in line)
    assert "non-parametric" in attn
    assert "steps 1–12 (12 logged, one per column)" in text
    assert "16 tokens per sequence" in text
    assert "warning" not in text


def test_many_steps_are_bucketed():
    text = text_of(render_timeline(graph("cms", CMS_STEPS), trained_cms(), max_columns=4))
    assert "3 per column" in text
    slow, mid, weights = row(text, SLOW), row(text, MID), row(text, "adamw.W")
    assert weights["strip"] == UPDATED * 4
    # the slow level: nothing in steps 1-3, one update in each later column of 3 steps
    assert slow["strip"][0] == IDLE and set(slow["strip"][1:]) <= set(PARTIAL)
    # the mid level updated in some steps of every column, never in all of them
    assert len(mid["strip"]) == 4 and set(mid["strip"]) <= set(PARTIAL)
    assert slow["updates"] == "3" and mid["updates"] == "6"  # totals do not depend on the columns


def test_a_run_that_stops_between_two_updates_keeps_its_cadence(tmp_path):
    """Ten of the twelve steps: the level of every 4 steps updated at 4 and 8 -- still `1 per 4
    steps`, not 2/10."""
    run = tmp_path / "run"
    shutil.copytree(trained_cms(), run)
    kept = [line for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["step"] <= 10]
    (run / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    text = text_of(render_timeline(graph("cms", CMS_STEPS), run))
    assert row(text, SLOW)["strip"] == "···█···█··" and row(text, SLOW)["per_step"] == "1 per 4 steps"
    assert row(text, MID)["per_step"] == "1 per 2 steps"
    assert "warning" not in text


def test_skipped_steps_are_marked(tmp_path):
    """A step skipped for a non-finite value (a `nonfinite` record with action skip instead of
    a train record) shows as skipped in every level's row."""
    run = tmp_path / "run"
    shutil.copytree(trained_cms(), run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        r = json.loads(line)
        if r["kind"] == "train" and r["step"] == 5:
            r = {"step": 5, "kind": "nonfinite", "where": "the training loss", "action": "skip"}
        out.append(json.dumps(r))
    (run / "metrics.jsonl").write_text("\n".join(out) + "\n")
    text = text_of(render_timeline(graph("cms", CMS_STEPS), run))
    assert row(text, "adamw.W")["strip"] == UPDATED * 4 + SKIPPED + UPDATED * 7
    assert row(text, FAST)["updates"] == "44"
    assert "1 step skipped" in text


def test_an_optimizer_override_shows_its_own_levels(tmp_path):
    """Trained with --optimizer m3 (its slow momentum M2 / O2 every f = 10 steps, AdamW for
    the non-matrix parameters), the log reports m3's boxes; the timeline lists them although
    the spec's graph (its train section: AdamW) does not have them."""
    trainer = Trainer(nestc.compile("transformer", TRANSFORMER),
                      TrainConfig(steps=10, seq_len=16, batch=2, warmup=2, eval_every=0, eval_batches=1,
                                  optimizer="m3"), tmp_path)
    trainer.run()
    text = text_of(render_timeline(graph("transformer", TRANSFORMER), tmp_path))
    m2, o1 = row(text, "m3.M2"), row(text, "m3.O1")
    assert m2["level"] == "—" and m2["frequency"] == "not in this graph"
    assert m2["strip"] == IDLE * 9 + UPDATED and m2["updates"] == "1" and m2["per_step"] == "1 per 10 steps"
    assert o1["strip"] == UPDATED * 10
    assert row(text, "adamw.W")["strip"] == UPDATED * 10  # AdamW on the rest: every step
    assert "optimizer m3" in text


def test_a_graph_with_other_settings_warns(tmp_path):
    """Drawn without the run's --set values, the graph's frequencies contradict the log."""
    text = text_of(render_timeline(graph("cms", {k: v for k, v in CMS_STEPS.items()
                                                 if k not in ("c_fast", "c_slow")}), trained_cms()))
    assert "warning" in text and "--set" in text


def test_the_cli_draws_the_timeline():
    run = trained_cms()
    for target in (run, run / "metrics.jsonl"):
        r = nestc_cli("graph", "cms", *sets(CMS_STEPS), "--timeline", target)
        assert r.returncode == 0, r.stderr
        assert row(r.stdout, SLOW)["strip"] == "···█···█···█"
        assert row(r.stdout, MID)["strip"] == "·█·█·█·█·█·█"
        assert row(r.stdout, FAST)["per_step"] == "4"


@pytest.mark.parametrize("case", ["missing", "folder", "text", "not-a-run", "empty", "other-spec"])
def test_timeline_errors(case, tmp_path):
    if case == "missing":
        target, needle = tmp_path / "nowhere", "no such run folder or metrics log"
    elif case == "folder":
        target, needle = tmp_path, "holds no metrics log"
    elif case == "text":
        target = tmp_path / "notes.txt"
        target.write_text("loss went down\n")
        target, needle = target, "not a metrics log"
    elif case == "not-a-run":  # JSON Lines, but not from nestc train
        target = tmp_path / "metrics.jsonl"
        target.write_text('{"step": 1, "loss": 2.0}\n')
        needle = "not the metrics log of a `nestc train` run"
    elif case == "empty":
        target = tmp_path / "metrics.jsonl"
        target.write_text("")
        needle = "empty"
    else:  # a transformer run drawn against the cms graph
        target, needle = trained_transformer(), "this run trained spec `transformer`, not `cms`"
    r = nestc_cli("graph", "cms", "--timeline", target)
    out = assert_user_error(r, needle, "hint")
    if case == "other-spec":
        assert "nestc graph transformer --timeline" in out
    with pytest.raises(NestError):
        render_timeline(graph("cms", {}), target)
