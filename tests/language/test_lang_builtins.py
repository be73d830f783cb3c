"""Every built-in spec parses, resolves, draws its level graph, is supported by the compiler, and
survives the two syntaxes' round trips (fmt, .nest -> YAML -> .nest) without losing anything."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from pydantic import ValidationError

from nestc import compat, levels
from nestc.diagnostics import SourceMap
from nestc.ir import same_ir
from nestc.loader import builtin_names, builtin_path, load, parse_file
from nestc.parser import parse_nest
from nestc.printer import format_spec
from nestc.resolve import resolve
from nestc.schema import validate
from nestc.yaml_io import format_yaml, parse_yaml, spec_to_obj

BUILTINS = builtin_names()
MODELS = ["cms", "cms_independent", "cms_nested", "deltanet", "gated_deltanet", "hope",
          "hope_attention", "linear_attention", "titans", "titans_mac", "titans_mag", "titans_mal",
          "transformer"]
OPTIMIZERS = ["adam", "adamw", "m3", "momentum", "muon", "sgd"]


def _text(name: str) -> str:
    return builtin_path(name).read_text(encoding="utf-8")


def _spec(name: str):
    return parse_nest(_text(name), f"specs/{name}.nest")


def test_the_builtin_list_is_the_spec_folder():
    assert sorted(BUILTINS) == sorted(MODELS + OPTIMIZERS)


@pytest.fixture(scope="module", params=BUILTINS)
def checked(request):
    """(name, program, level graph) of a built-in, through the whole `nestc check` pipeline."""
    name = request.param
    program = resolve(load(name))
    graph = levels.build(program)
    return name, program, graph


def test_parses_with_its_own_name(checked):
    name, program, _ = checked
    spec = parse_file(builtin_path(name), SourceMap())
    assert spec.name == name
    assert spec.title, f"{name} has no title"
    assert program.name == name


def test_resolves_and_builds_levels(checked):
    name, program, graph = checked
    assert graph.levels, name
    placed = [n for lv in graph.levels for n in lv]
    assert sorted(placed) == sorted(graph.graph.nodes), "every box sits in exactly one level"
    if name in MODELS:
        assert program.layers, f"{name} is a model spec but has no layers"
        assert any(b.block is not None for b in program.boxes.values())
    else:
        assert not program.layers
        assert sum(b.kind == "weights" for b in program.boxes.values()) == 1


def test_levels_run_slowest_first(checked):
    _, program, graph = checked
    rates = [{_node_rate(graph, n, program.seq_len) for n in lv} for lv in graph.levels]
    assert all(len(r) == 1 for r in rates), "a level holds boxes of one frequency"
    flat = [r.pop() for r in rates]
    assert flat == sorted(flat)


def _node_rate(graph, node, seq_len):
    d = graph.graph.nodes[node]
    if d["unit"] == "inf":
        return float("inf")
    per = d["period"] if d["unit"] == "token" else d["period"] * seq_len
    return d["inner_steps"] / per


def test_the_compiler_supports_it(checked):
    _, program, _ = checked
    compat.unsupported(program)  # raises NestError for anything the compiler cannot lower


def test_the_file_is_canonical(checked):
    name = checked[0]
    assert format_spec(_spec(name)) == _text(name)


@pytest.mark.parametrize("name", BUILTINS)
def test_fmt_is_idempotent_and_keeps_the_ir(name):
    spec = _spec(name)
    once = format_spec(spec)
    again = parse_nest(once, "formatted.nest")
    assert same_ir(spec, again)
    assert format_spec(again) == once


@pytest.mark.parametrize("name", BUILTINS)
def test_yaml_round_trip(name):
    spec = _spec(name)
    text = format_yaml(spec)
    back = parse_yaml(text, f"{name}.yaml")
    assert same_ir(spec, back)
    assert format_spec(back) == _text(name)
    assert format_yaml(back) == text


@pytest.mark.parametrize("name", BUILTINS)
def test_yaml_object_fits_the_json_schema(name):
    spec = _spec(name)
    validate(spec_to_obj(spec))
    validate(yaml.safe_load(format_yaml(spec)))  # what a user's YAML file holds


def test_schema_rejects_what_the_loader_rejects():
    obj = spec_to_obj(_spec("titans"))
    obj["boxes"] = [{"box": "m", "kind": "memory", "stat": "matrix(4)"}]
    with pytest.raises(ValidationError) as err:
        validate(obj)
    assert "stat" in str(err.value)


@pytest.mark.parametrize("name", BUILTINS)
def test_views_mention_every_box(name):
    graph = levels.build(resolve(load(name)))
    nodes = list(graph.graph.nodes)
    data = graph.to_json()
    json.dumps(data, default=str)  # serialisable, as `nestc graph --format json` needs
    assert sorted(n["name"] for n in data["nodes"]) == sorted(nodes)
    assert [lv["boxes"] for lv in data["levels"]] == graph.levels
    dot, mermaid = graph.to_dot(), graph.to_mermaid()
    assert dot.startswith("digraph") and mermaid.startswith("flowchart")
    for n in nodes:
        assert f'"{n}"' in dot, n
        assert n in mermaid, n
    assert dot.count(" -> ") == graph.graph.number_of_edges()


def _comment_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("#")]


def _notes(text: str) -> list[str]:
    """End-of-line comments (the built-ins have no `#` inside strings)."""
    return [ln.split("#", 1)[1].strip() for ln in text.splitlines()
            if "#" in ln and not ln.strip().startswith("#")]


@pytest.mark.parametrize("name", ["hope", "cms", "m3", "titans_mac"])
def test_comments_survive_formatting(name):
    """Strip all indentation and alignment (the grammar is layout-free), format, and every
    comment comes back: the same full-line comments and the same end-of-line notes."""
    text = _text(name)
    messy = "\n".join(re.sub(r"^\s+", "", ln) for ln in text.splitlines()) + "\n"
    assert messy != text
    formatted = format_spec(parse_nest(messy, "messy.nest"))
    assert formatted == text
    assert len(_comment_lines(formatted)) == len(_comment_lines(text)) > 0
    assert text.count("#") == formatted.count("#")


def test_comments_survive_the_yaml_round_trip():
    spec = _spec("hope")
    back = format_spec(parse_yaml(format_yaml(spec), "hope.yaml"))
    assert _comment_lines(back) == _comment_lines(_text("hope"))
    assert _notes(back) == _notes(_text("hope"))
