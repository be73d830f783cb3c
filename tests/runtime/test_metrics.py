"""Tests of nestc.runtime.metrics: JSONL log, tolerant reader, PNG plot."""

from __future__ import annotations

import math

import matplotlib.image
import pytest
import torch

from nestc.diagnostics import NestError
from nestc.runtime.metrics import MetricsLog, plot_metrics, read_metrics


def train(step, loss=2.0, **kw):
    return {"step": step, "kind": "train", "loss": loss, **kw}


def test_write_and_read_back(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.write(train(1, tokens_per_s=1234.0, levels_updated={"fast": 1, "slow": 0}))
        # flushed at once: visible to a reader while the log is still open
        assert read_metrics(path) == [train(1, tokens_per_s=1234.0, levels_updated={"fast": 1, "slow": 0})]
        log.write({"step": 100, "kind": "eval", "loss": 2.1, "ppl": 8.1})
    assert log.closed
    recs = read_metrics(path)
    assert [r["kind"] for r in recs] == ["train", "eval"]
    assert path.read_text().count("\n") == 2


def test_values_that_are_not_plain_json(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        log.write(train(torch.tensor(3), loss=torch.tensor(1.5), hist=torch.tensor([1, 2])))
        log.write(train(4, loss=float("nan")))
    r3, r4 = read_metrics(path)
    assert r3 == {"step": 3, "kind": "train", "loss": 1.5, "hist": [1, 2]}
    assert math.isnan(r4["loss"])  # a diverged loss is still recorded


def test_truncated_last_line_is_tolerated_and_repaired(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        log.write(train(1))
        log.write(train(2))
    data = path.read_bytes()
    path.write_bytes(data + b'{"step": 3, "kind": "tr')  # crash in the middle of a write
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    with MetricsLog(path) as log:  # resuming cuts the torn line and appends cleanly
        log.write(train(3))
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


def test_last_line_cut_inside_a_multibyte_character(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\n{"note": "caf' + "é".encode()[:1])
    assert read_metrics(path) == [{"step": 1}]


def test_complete_last_record_without_newline(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "kind": "train", "loss": 3.0}')
    assert read_metrics(path) == [train(1, 3.0)]
    with MetricsLog(path) as log:
        log.write(train(2))
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_resume_drops_records_after_the_checkpoint(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        for s in range(1, 8):
            log.write(train(s))
        log.write({"step": 5, "kind": "eval", "loss": 1.0})
        log.write({"kind": "info", "note": "no step"})
    with MetricsLog(path, resume_step=5, fsync=True) as log:
        log.write(train(6, loss=1.9))
    recs = read_metrics(path)
    assert [(r.get("step"), r["kind"]) for r in recs] == [
        (1, "train"), (2, "train"), (3, "train"), (4, "train"), (5, "train"),
        (5, "eval"), (None, "info"), (6, "train"),
    ]
    assert recs[-1]["loss"] == 1.9
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


def test_the_resume_rewrite_keeps_the_logs_permissions(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        for s in range(1, 4):
            log.write(train(s))
    path.chmod(0o640)
    with MetricsLog(path, resume_step=1) as log:  # drops steps 2-3 by rewriting the file
        log.write(train(2))
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    assert path.stat().st_mode & 0o777 == 0o640


def test_not_a_jsonl_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text('{"step": 1}\nthis is prose, not JSON\n{"step": 2}\n')
    with pytest.raises(NestError) as ei:
        read_metrics(path)
    d = ei.value.first
    assert d.pos.line == 2 and "not a metrics log" in d.message and d.hint
    before = path.read_bytes()
    with pytest.raises(NestError, match="not a metrics log"):
        MetricsLog(path)  # never appends to a foreign file
    assert path.read_bytes() == before

    arr = tmp_path / "list.jsonl"
    arr.write_text("[1, 2, 3]\n")
    with pytest.raises(NestError, match="not a JSON object"):
        read_metrics(arr)

    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01\n\x02")
    with pytest.raises(NestError, match="not UTF-8"):
        read_metrics(binary)


def test_missing_log(tmp_path):
    with pytest.raises(NestError, match="does not exist"):
        read_metrics(tmp_path / "metrics.jsonl")
    with pytest.raises(NestError, match="folder"):
        MetricsLog(tmp_path)


def _records(n_train=120, with_speed=True):
    recs = []
    for s in range(1, n_train + 1):
        r = train(s, loss=4.0 * math.exp(-s / 40) + 1.0)
        if with_speed:
            r["tokens_per_s"] = 20_000.0 + (s % 7) * 100
        recs.append(r)
        if s % 20 == 0:
            recs.append({"step": s, "kind": "eval", "loss": 4.0 * math.exp(-s / 40) + 1.2, "ppl": 9.0})
    return recs


def test_plot_metrics_writes_a_png(tmp_path):
    out = tmp_path / "plots" / "loss.png"
    assert plot_metrics(_records(), out, title="tiny") == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    two_panels = matplotlib.image.imread(out).shape
    plot_metrics(_records(with_speed=False), out)
    one_panel = matplotlib.image.imread(out).shape
    assert two_panels[0] > one_panel[0]  # the tokens/s panel makes the figure taller
    assert sorted(p.name for p in out.parent.iterdir()) == ["loss.png"]  # no temp files left


def test_plot_from_a_log_path_with_nan_and_eval_only(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        log.write(train(1, loss=3.0))
        log.write(train(2, loss=float("nan")))
        log.write({"step": 2, "kind": "eval", "loss": 2.5, "ppl": 12.2})
    plot_metrics(path, tmp_path / "a.png")
    plot_metrics([{"step": 5, "kind": "eval", "loss": 2.0}], tmp_path / "b.png")
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000


def test_plot_without_losses_is_an_error(tmp_path):
    with pytest.raises(NestError, match="nothing to plot"):
        plot_metrics([{"step": 1, "kind": "info"}], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
