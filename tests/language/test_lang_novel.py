"""Specs that appear nowhere in the repository: the language must say new things, not only the
paper's examples. Written here from scratch, checked, drawn, and converted to YAML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lang_helpers import check_text, diagnose
from nestc import levels
from nestc.diagnostics import Collector
from nestc.loader import load
from nestc.lower import plan
from nestc.resolve import resolve

# (a) a deep memory with an L3 objective and a retention rule written as an expression, followed
# by a three-level CMS chain at 4, 32 and 128 tokens
LP_CMS = """\
# A deep L3 memory in front of a three-level Continuum Memory System.
spec lp_cms "A deep Lp memory followed by a three-level CMS"

param d_model = 64
param heads   = 4
param d_head  = d_model / heads
param c_deep  = 16

block lp_cms_layer {
    # the memory forgets by a learned, data-dependent amount per token and head
    box deep : memory {
        heads     heads
        state     mlp(d_head, depth=2, expansion=2)
        init      meta
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.1 * sigmoid(linear(in, heads))
        objective lp(M(k), v, 3)
        retention (1 - sigmoid(linear(in, heads))) * M
        every     c_deep tokens
    }

    box level_fast : memory {
        state     mlp(d_model, expansion=2, residual=false)
        init      meta
        keys      in
        values    lss
        objective dot(M(k), v)
        every     4 tokens
    }

    box level_mid : memory like level_fast {
        every 32 tokens
    }

    box level_slow : memory like level_fast {
        every 128 tokens
    }

    x = x + linear(deep(rmsnorm(x)), d_model)
    x = x + level_fast(rmsnorm(x))
    x = x + level_mid(rmsnorm(x))
    x = x + level_slow(rmsnorm(x))
}

model {
    dim d_model
    repeat 2 { lp_cms_layer }
}

train {
    optimizer adamw(lr=1e-3)
    seq_len 256
}
"""

# (b) a user-written objective on a deep memory and a user-written update rule on a matrix memory
USER_RULES = """\
spec user_rules "User-written objective and update rules"

param d_model = 32
param heads   = 2

block rules_layer {
    box cubic : memory {
        heads     heads
        state     mlp(16)
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        objective sum(abs(M(k) - v) ** 3)
        every     8 tokens
    }

    box hebb : memory {
        heads  heads
        state  matrix(16)
        keys   l2norm(linear(in, d_model), groups=heads)
        values linear(in, d_model)
        update M + 0.1 * outer(v, k)
    }

    x = x + linear(cubic(rmsnorm(x)), d_model)
    x = x + linear(hebb(rmsnorm(x)), d_model)
}

model {
    dim d_model
    repeat 1 { rules_layer }
}
"""

LAYER = "lp_cms_layer"
LP_CMS_LEVELS = [["adamw.W"], ["adamw.m", "adamw.v"], [f"{LAYER}.level_slow"],
                 [f"{LAYER}.level_mid"], [f"{LAYER}.deep"], [f"{LAYER}.level_fast"]]


def nestc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nestc.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc


def rules(program) -> dict[str, str]:
    errors = Collector()
    plans = plan(program, errors)
    assert not errors.errors
    return {q: p.rule for q, p in plans.items()}


@pytest.fixture
def lp_cms_file(tmp_path: Path) -> Path:
    path = tmp_path / "lp_cms.nest"
    path.write_text(LP_CMS)
    return path


def test_the_novel_specs_are_really_new():
    from nestc.loader import builtin_dir

    for spec in builtin_dir().glob("*.nest"):
        text = spec.read_text(encoding="utf-8")
        assert "lp(M(k), v, 3)" not in text and "outer(v, k)" not in text
        assert "sum(abs(M(k) - v) ** 3)" not in text


def test_lp_cms_checks_and_its_levels(tmp_path):
    lg = check_text(LP_CMS, base=tmp_path, name="lp_cms")
    assert lg.levels == LP_CMS_LEVELS
    nodes = lg.graph.nodes
    assert [nodes[lv[0]]["period"] for lv in lg.levels[2:]] == [128, 32, 16, 4]
    assert nodes[f"{LAYER}.deep"]["objective"] == "lp(M(k), v, 3)"
    assert nodes[f"{LAYER}.deep"]["count"] == 2
    # the chain passes its output on by backprop; every level's initial state is meta-learned
    for a, b in (("deep", "level_fast"), ("level_fast", "level_mid"), ("level_mid", "level_slow")):
        kinds = [d["kind"] for d in lg.graph.get_edge_data(f"{LAYER}.{a}", f"{LAYER}.{b}").values()]
        assert kinds == ["backprop"], (a, b)
    for box in ("deep", "level_fast", "level_mid", "level_slow"):
        kinds = {d["kind"] for d in lg.graph.get_edge_data("adamw.W", f"{LAYER}.{box}").values()}
        assert "meta-init" in kinds, box


def test_lp_cms_compiles_with_the_chunked_rules(lp_cms_file):
    program = resolve(load(lp_cms_file))
    plans = rules(program)
    assert plans[f"{LAYER}.deep"] == "deep_memory_chunked"  # Lp objective, retention as a gate
    assert {plans[f"{LAYER}.{b}"] for b in ("level_fast", "level_mid", "level_slow")} == \
        {"deep_memory_chunked"}


def test_lp_cms_retention_expression_is_a_gate(lp_cms_file):
    from nestc.lower import retention_form

    program = resolve(load(lp_cms_file))
    form = retention_form(program.boxes[f"{LAYER}.deep"])
    assert form.kind == "gate"


def test_lp_cms_chunk_override_changes_the_levels(tmp_path):
    lg = check_text(LP_CMS, base=tmp_path, name="lp_cms", overrides={"c_deep": "32"})
    assert [f"{LAYER}.deep", f"{LAYER}.level_mid"] in lg.levels
    # the deep memory feeds the 4-token level: 6 and 4 do not nest
    assert [d.message for d in diagnose(LP_CMS, base=tmp_path, overrides={"c_deep": "6"})] == [
        f"chunk sizes do not nest: `{LAYER}.level_fast` updates every 4 tokens and "
        f"`{LAYER}.deep`, which it exchanges data with, every 6 tokens"]


def test_nestc_graph_draws_the_file(lp_cms_file):
    proc = nestc("graph", lp_cms_file.name, cwd=lp_cms_file.parent)
    assert proc.returncode == 0, proc.stderr
    for i in range(1, 7):
        assert f"level {i} " in proc.stdout
    assert "lp(M(k), v, 3)" in proc.stdout
    check = nestc("check", lp_cms_file.name, cwd=lp_cms_file.parent)
    assert check.returncode == 0, check.stderr
    assert "checks clean" in check.stdout


def test_user_written_objective_and_update(tmp_path):
    lg = check_text(USER_RULES, base=tmp_path, name="user_rules")
    assert lg.levels == [["outer"], ["rules_layer.cubic"], ["rules_layer.hebb"]]
    nodes = lg.graph.nodes
    assert (nodes["rules_layer.cubic"]["unit"], nodes["rules_layer.cubic"]["period"]) == ("token", 8)
    assert (nodes["rules_layer.hebb"]["unit"], nodes["rules_layer.hebb"]["period"]) == ("token", 1)
    assert nodes["rules_layer.hebb"]["optimizer"] == "update M + 0.1 * outer(v, k)"
    assert nodes["rules_layer.cubic"]["objective"] == "sum(abs(M(k) - v) ** 3)"
    assert nodes["rules_layer.hebb"]["state"] == "2 × [16 × 16]"


def test_user_rules_compile(tmp_path):
    path = tmp_path / "user_rules.nest"
    path.write_text(USER_RULES)
    plans = rules(resolve(load(path)))
    assert plans["rules_layer.cubic"] == "deep_memory_chunked"  # any objective of M(k)
    assert plans["rules_layer.hebb"] == "memory_general"  # a user update rule


def test_a_wrong_user_update_shape_is_an_error(tmp_path):
    wrong = USER_RULES.replace("outer(v, k)", "outer(v, k) + v")
    assert [(d.pos.line, d.pos.col, d.message) for d in diagnose(wrong, base=tmp_path)] == [
        (21, 16, "`+`: a matrix combines with scalars or matrices, not with a per-head vector "
                 "of width 16")]


def test_the_novel_spec_in_yaml_gives_the_same_graph(lp_cms_file):
    cwd = lp_cms_file.parent
    proc = nestc("convert", lp_cms_file.name, "-o", "lp_cms.yaml", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    yaml_text = (cwd / "lp_cms.yaml").read_text()
    assert "objective: lp(M(k), v, 3)" in yaml_text
    from_nest = levels.build(resolve(load(lp_cms_file)))
    from_yaml = levels.build(resolve(load(cwd / "lp_cms.yaml")))
    assert from_yaml.levels == from_nest.levels == LP_CMS_LEVELS

    def shape(lg):
        return sorted((a, b, d["kind"], d["label"]) for a, b, d in lg.graph.edges(data=True))

    assert shape(from_yaml) == shape(from_nest)
    # and the command line draws both the same way
    graphs = [json.loads(nestc("graph", f, "--format", "json", cwd=cwd).stdout)
              for f in ("lp_cms.nest", "lp_cms.yaml")]
    assert graphs[0]["levels"] == graphs[1]["levels"]
    # back to .nest: the same text
    back = nestc("convert", "lp_cms.yaml", "-o", "back.nest", cwd=cwd)
    assert back.returncode == 0
    assert (cwd / "back.nest").read_text() == LP_CMS


def test_dgd_momentum_is_refused_not_ignored():
    """Hope's `momentum` (digest §10.3) has no lowering yet: a non-zero value is a compile error at
    the box's optimizer line, never a silently ignored setting."""
    import nestc as package
    from nestc.diagnostics import NestError

    with pytest.raises(NestError) as err:
        package.compile("hope", {"momentum": "0.5"})
    text = str(err.value)
    assert "dgd(momentum=...)` is not implemented" in text and "hope.nest" in text
    package.compile("hope", {"momentum": "0"})  # the equations as printed


CALL_START_DGD = """\
spec dgd_call_start "a DGD memory asked for gradients at the call's start"
use titans
block layer {
    box mem : memory like lmm {
        optimizer dgd
        grad_state call_start
    }
    x = x + mem(x)
}
model {
    dim d_model
    repeat 1 { layer }
}
"""


def test_grad_state_call_start_is_refused_where_no_rule_implements_it():
    """DGD's update reads the state it changes, so gradients at the call's start have no lowering:
    a compile-time error at the `grad_state` line, not a silently ignored setting. A word that is
    not a grad_state is an error at the word."""
    diags = diagnose(CALL_START_DGD)
    assert len(diags) == 1
    d = diags[0]
    assert (d.pos.line, d.pos.col) == (6, 9)
    assert "`grad_state call_start` needs" in d.message and "optimizer dgd" in d.message
    diags = diagnose(CALL_START_DGD.replace("        optimizer dgd\n", "").replace("call_start\n", "call\n"))
    assert [(d.pos.line, d.pos.col) for d in diags] == [(5, 20)]
    assert "`grad_state` must be chunk_start or call_start, got 'call'" in diags[0].message
    # the same box with momentum (from lmm) checks clean
    assert diagnose(CALL_START_DGD.replace("        optimizer dgd\n", "")) == []
