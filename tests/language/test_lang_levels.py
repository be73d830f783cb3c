"""Level assignment (NL Def. 2) for the paper's own examples: levels are never declared, they
follow from update frequencies and from which box needs which other box's current state."""

from __future__ import annotations

from textwrap import dedent

import pytest

from lang_helpers import check_text, diagnose
from nestc import levels
from nestc.diagnostics import NestError
from nestc.loader import load
from nestc.resolve import resolve

SMT = "hope_layer.self_modifying_titans"
CMS_IN_HOPE = "hope_layer.cms_sequential"
CMS = "attention_cms_layer.cms_sequential"


def graph(name: str, **overrides: str) -> levels.LevelGraph:
    return levels.build(resolve(load(name), overrides or None))


def as_sets(lg: levels.LevelGraph) -> list[set[str]]:
    return [set(lv) for lv in lg.levels]


def edges(lg: levels.LevelGraph, a: str, b: str) -> list[dict]:
    data = lg.graph.get_edge_data(a, b) or {}
    return list(data.values())


def freq(lg: levels.LevelGraph, node: str) -> tuple[str, int]:
    d = lg.graph.nodes[node]
    return d["unit"], d["period"]


# ------------------------------------------------------------------------------ optimizers


def test_momentum_has_two_levels_weights_above_momentum():
    # the weights need the momentum's state of this step, so the momentum is one level below
    assert graph("momentum").levels == [["W"], ["m"]]


def test_adam_moments_share_a_level():
    assert graph("adam").levels == [["W"], ["m", "v"]]


def test_m3_slow_momentum_sits_above_the_weights():
    lg = graph("m3")
    assert lg.levels == [["M2"], ["O2"], ["W"], ["M1", "V"], ["O1"]]
    assert freq(lg, "M2") == ("step", 10) and freq(lg, "W") == ("step", 1)
    assert lg.graph.nodes["O1"]["inner_steps"] == 5  # Newton-Schulz iterations count


def test_m3_slow_momentum_follows_f():
    lg = graph("m3", f="1")  # at f = 1 the slow momentum is just another per-step momentum
    assert lg.levels == [["W"], ["M1", "V", "M2"], ["O1", "O2"]]


# ------------------------------------------------------------------------------ models


def test_linear_attention_memory_is_the_fastest_level():
    lg = graph("linear_attention")
    mem = "linear_attention_layer.mem"
    assert lg.levels == [["adamw.W"], ["adamw.m", "adamw.v"], [mem]]
    assert freq(lg, mem) == ("token", 1)
    assert lg.level_of("adamw.W") == 1


def test_cms_levels_follow_chunk_sizes_and_attention_is_fastest():
    # NL Fig. 5's frequencies: the mid and low-frequency levels learn across steps, above the
    # per-step weights; the high-frequency level learns in context
    lg = graph("cms")
    assert lg.levels == [[f"{CMS}.cms_slow"], [f"{CMS}.cms_mid"], ["adamw.W"], ["adamw.m", "adamw.v"],
                         [f"{CMS}.cms_fast"], ["attention_cms_layer.attn"]]
    assert [freq(lg, f"{CMS}.{b}") for b in ("cms_slow", "cms_mid", "cms_fast")] == \
        [("step", 32), ("step", 2), ("token", 16)]
    assert lg.graph.nodes["attention_cms_layer.attn"]["unit"] == "inf"


def test_cms_levels_in_tokens_are_ordered_by_chunk_size():
    lg = graph("cms", mid_unit='"tokens"', slow_unit='"tokens"', c_mid="32", c_slow="64")
    assert lg.levels == [["adamw.W"], ["adamw.m", "adamw.v"], [f"{CMS}.cms_slow"],
                         [f"{CMS}.cms_mid"], [f"{CMS}.cms_fast"], ["attention_cms_layer.attn"]]


def test_hope_levels():
    lg = graph("hope")
    assert as_sets(lg) == [
        {f"{CMS_IN_HOPE}.cms_slow"},
        {f"{CMS_IN_HOPE}.cms_mid"},
        {"adamw.W"},
        {"adamw.m", "adamw.v"},
        {f"{SMT}.memory"},
        {f"{CMS_IN_HOPE}.cms_fast"},
        {f"{SMT}.M_k", f"{SMT}.M_v", f"{SMT}.M_eta", f"{SMT}.M_alpha"},
    ]
    assert [freq(lg, lv[0]) for lv in lg.levels[4:]] == [("token", 64), ("token", 16), ("token", 8)]
    assert lg.graph.nodes[f"{SMT}.M_k"]["count"] == 4  # one per layer


def test_hope_adaptive_q_adds_M_q_to_the_8_token_level():
    lg = graph("hope", adaptive_q="true")
    assert f"{SMT}.M_q" in lg.levels[6]
    assert set(lg.levels[6]) == {f"{SMT}.M_{n}" for n in ("k", "v", "q", "eta", "alpha")}
    assert f"{SMT}.M_q" not in graph("hope").graph


def test_hope_chunk_size_override_moves_the_memory():
    lg = graph("hope", c_memory="16")
    assert {f"{SMT}.memory", f"{CMS_IN_HOPE}.cms_fast"} in as_sets(lg)
    assert len(lg.levels) == 6


def test_cms_override_merges_mid_and_slow():
    lg = graph("cms", c_mid="32")
    assert as_sets(lg)[0] == {f"{CMS}.cms_mid", f"{CMS}.cms_slow"}
    assert len(lg.levels) == 5


def test_cms_overrides_that_do_not_nest_are_an_error():
    with pytest.raises(NestError) as err:
        graph("cms", mid_unit='"tokens"', c_mid="24")
    assert [d.message for d in err.value.diagnostics] == [
        f"chunk sizes do not nest: `{CMS}.cms_mid` updates every 24 tokens and "
        f"`{CMS}.cms_fast`, which it exchanges data with, every 16 tokens"]


def test_cms_in_steps_moves_cms_to_the_optimizer_levels():
    lg = graph("cms", fast_unit='"steps"', c_fast="1", c_mid="2", c_slow="4")
    assert [freq(lg, f"{CMS}.{b}") for b in ("cms_slow", "cms_mid", "cms_fast")] == \
        [("step", 4), ("step", 2), ("step", 1)]
    assert lg.levels[0] == [f"{CMS}.cms_slow"]


# ------------------------------------------------------------------------------ edges


def test_adam_edges():
    lg = graph("adam")
    for moment in ("m", "v"):
        kinds = {(d["kind"], d["label"]) for d in edges(lg, "W", moment)}
        assert ("generation", "generates context (gradients)") in kinds
        back = edges(lg, moment, "W")
        assert [(d["kind"], d["timing"]) for d in back] == [("conditioning", "current")]
    assert not edges(lg, "m", "v") and not edges(lg, "v", "m")


def test_hope_memories_are_meta_initialised_by_the_weights():
    lg = graph("hope")
    for box in ("memory", "M_k", "M_v", "M_eta", "M_alpha"):
        kinds = {d["kind"] for d in edges(lg, "adamw.W", f"{SMT}.{box}")}
        assert "meta-init" in kinds, box
    # the in-context CMS level starts each sequence from a meta-learned state; the levels that
    # learn across steps keep their weights, so only the local surprise signal connects them
    kinds = {d["kind"] for d in edges(lg, "adamw.W", f"{CMS_IN_HOPE}.cms_fast")}
    assert kinds == {"meta-init", "generation"}
    for box in ("cms_mid", "cms_slow"):
        kinds = {d["kind"] for d in edges(lg, "adamw.W", f"{CMS_IN_HOPE}.{box}")}
        assert kinds == {"generation"}, box


def test_cms_chain_is_connected_by_backprop():
    lg = graph("cms")
    fast, mid, slow = (f"{CMS}.{b}" for b in ("cms_fast", "cms_mid", "cms_slow"))
    assert [d["kind"] for d in edges(lg, fast, mid)] == ["backprop"]
    assert [d["kind"] for d in edges(lg, mid, slow)] == ["backprop"]
    assert not edges(lg, slow, fast)


def test_hope_projection_memories_read_each_other_at_the_previous_state():
    lg = graph("hope")
    ds = edges(lg, f"{SMT}.M_k", f"{SMT}.M_v")
    assert [(d["kind"], d["timing"]) for d in ds] == [("conditioning", "previous")]


# ------------------------------------------------------------------------------ cycles

TWO_BOXES = """\
    spec two

    box a : memory {
        state   like(W)
        context g = grad(W)
        update  M + 0.5 * {A_READS}
        every   1 step
    }

    box b : memory {
        state   like(W)
        context g = grad(W)
        update  M + 0.5 * {B_READS}
        every   1 step
    }

    box W : weights {
        update W - a - b
    }
    """


def two_boxes(a_reads: str, b_reads: str) -> str:
    return dedent(TWO_BOXES).replace("{A_READS}", a_reads).replace("{B_READS}", b_reads)


def test_reading_each_others_current_state_is_a_cycle(tmp_path):
    diags = diagnose(two_boxes("b", "a"), base=tmp_path)
    assert len(diags) == 1
    assert "each needs the others' current state: a -> b -> a" in diags[0].message


def test_stop_grad_breaks_the_cycle(tmp_path):
    lg = check_text(two_boxes("stop_grad(b)", "a"), base=tmp_path)
    # b reads a's current state, so b sits above a; a reads b's previous state
    assert lg.levels == [["W"], ["b"], ["a"]]
    assert [d["kind"] for d in edges(lg, "b", "a")] == ["stop-gradient"]


def test_one_way_read_orders_the_two_boxes(tmp_path):
    lg = check_text(two_boxes("g", "a"), base=tmp_path)
    assert lg.levels == [["W"], ["b"], ["a"]]


def test_independent_boxes_share_a_level(tmp_path):
    lg = check_text(two_boxes("g", "g"), base=tmp_path)
    assert lg.levels == [["W"], ["a", "b"]]


def test_in_process_overrides_take_python_values_like_their_spec_text():
    # nestc.compile(spec, {...}) callers pass numbers and booleans; they mean the same as the
    # text `--set` would give (this once reached lark as an int and died in its lexer)
    as_text = graph("hope", c_memory="16", adaptive_q="true", eta_bias="0.5")
    as_values = graph("hope", c_memory=16, adaptive_q=True, eta_bias=0.5)
    assert as_sets(as_values) == as_sets(as_text)
    assert f"{SMT}.M_q" in as_values.graph


def test_an_override_of_another_python_type_is_a_diagnostic():
    with pytest.raises(NestError) as err:
        graph("hope", c_memory=[16])
    assert "an override must be text, a number or a boolean, got list" in str(err.value)
