"""The `nestc` command line, run as a user runs it: a separate process, exit codes, stdout/stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nestc.loader import builtin_names, builtin_path

BUILTINS = builtin_names()


def nestc(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nestc.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200", **(env or {})})
    for stream in (proc.stdout, proc.stderr):
        assert "Traceback" not in stream, stream
        assert "internal error" not in stream, stream
    return proc


# A process costs about a second here, so a sample of the built-ins runs as real processes (one
# per kind: optimizers, in-context memories, attention + CMS, nested blocks, `use` + `like`) and
# all of them run through the same command in-process.
PROCESS_SAMPLE = ["m3", "hope", "cms_nested", "titans_mac", "linear_attention"]


@pytest.mark.parametrize("name", PROCESS_SAMPLE)
def test_check_accepts_builtins(name):
    proc = nestc("check", name)
    assert proc.returncode == 0, proc.stderr
    assert f"{name}: " in proc.stdout and "checks clean" in proc.stdout


def test_check_accepts_every_builtin_in_process():
    from typer.testing import CliRunner

    from nestc.cli import app

    runner = CliRunner()
    for name in BUILTINS:
        result = runner.invoke(app, ["check", name])
        assert result.exit_code == 0, (name, result.output)
        assert "checks clean" in result.output
        assert "warning" not in result.output  # every box of a built-in has a chunked rule


def test_check_warns_of_a_box_that_runs_token_by_token(tmp_path):
    """A box no chunked rule takes (Adam on its inner objective) still checks clean, with a
    warning naming it, its line and why; no built-in spec gets the warning."""
    spec = tmp_path / "adam_memory.nest"
    spec.write_text(
        'spec adam_memory "an MLP memory learning with Adam"\n'
        "param d_model = 16\n"
        "block layer {\n"
        "    box mem : memory {\n"
        "        heads 2\n"
        "        state mlp(8, depth=2, expansion=2)\n"
        "        keys l2norm(linear(in, d_model), groups=2)\n"
        "        values linear(in, d_model)\n"
        "        objective l2(M(k), v)\n"
        "        optimizer adam(0.9, 0.99, 1e-8)\n"
        "    }\n"
        "    x = x + mem(rmsnorm(x))\n"
        "}\n"
        "model {\n    dim d_model\n    repeat 1 { layer }\n}\n")
    proc = nestc("check", spec.name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "checks clean" in proc.stdout
    assert "warning: box `mem` runs token by token (the general rule, for `optimizer adam`)" in proc.stderr
    assert "adam_memory.nest:4:5" in proc.stderr
    assert nestc("check", "hope").stderr == ""


def test_check_reports_what_only_code_generation_finds(tmp_path):
    """read_after on a box read twice: the spec resolves and lowers, the code generator refuses
    it; `nestc check` runs the generator too, so it says so before any training."""
    spec = tmp_path / "reads.nest"
    spec.write_text(
        'spec reads "two reads"\n'
        "param d_model = 16\n"
        "block layer {\n"
        "    box mem : memory {\n"
        "        heads 2\n"
        "        state matrix(8, 8)\n"
        "        keys l2norm(linear(in, d_model), groups=2)\n"
        "        values linear(in, d_model)\n"
        "        objective l2(M(k), v)\n"
        "    }\n"
        "    let h = rmsnorm(x)\n"
        "    x = x + read_before(mem, h) + read_after(mem, h)\n"
        "}\n"
        "model {\n    dim d_model\n    repeat 1 { layer }\n}\n")
    proc = nestc("check", spec.name, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "reads.nest:12:35" in proc.stderr and "`read_after(mem, ...)`" in proc.stderr
    assert " 12 |     x = x + read_before(mem, h) + read_after(mem, h)" in proc.stderr  # the line quoted


def test_check_reports_a_bad_spec_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.nest"
    bad.write_text("spec bad\nparam width = 16\nparam d = widht * 2\nparam e = 1 / 0\n")
    proc = nestc("check", "bad.nest", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown name `widht` in param `d`" in proc.stderr
    assert "bad.nest:3:11" in proc.stderr and "bad.nest:4:15" in proc.stderr
    assert "did you mean `width`?" in proc.stderr
    assert "param d = widht * 2" in proc.stderr  # the offending line is quoted
    assert "2 errors" in proc.stderr


def test_check_reports_a_bad_yaml_spec(tmp_path):
    (tmp_path / "bad.yaml").write_text("spec: bad\nparms:\n  a: 1\n")
    proc = nestc("check", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "bad.yaml:2:1" in proc.stderr and "did you mean `params`?" in proc.stderr


def test_check_of_a_missing_file(tmp_path):
    proc = nestc("check", "nothere.nest", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no such spec file" in proc.stderr


def test_graph_prints_levels():
    proc = nestc("graph", "hope")
    assert proc.returncode == 0, proc.stderr
    for i in range(1, 8):
        assert f"level {i} " in proc.stdout
    assert "level 8 " not in proc.stdout
    assert "every 64 tokens" in proc.stdout and "every 8 tokens" in proc.stdout


def test_graph_json():
    proc = nestc("graph", "m3", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [lv["boxes"] for lv in data["levels"]] == [["M2"], ["O2"], ["W"], ["M1", "V"], ["O1"]]
    assert {n["name"] for n in data["nodes"]} == {"M1", "M2", "V", "O1", "O2", "W"}
    assert data["spec"] == "m3" and data["edges"]


@pytest.mark.parametrize("fmt, start", [("dot", "digraph"), ("mermaid", "flowchart")])
def test_graph_dot_and_mermaid(fmt, start):
    proc = nestc("graph", "cms", "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(start)
    assert "cms_sequential.cms_slow" in proc.stdout


def test_graph_unknown_format():
    proc = nestc("graph", "cms", "--format", "png")
    assert proc.returncode == 2
    assert "unknown format `png`" in proc.stderr


def test_graph_with_set_override():
    proc = nestc("graph", "cms", "--set", "c_mid=32", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    levels = [lv["boxes"] for lv in json.loads(proc.stdout)["levels"]]
    assert ["attention_cms_layer.cms_sequential.cms_mid",
            "attention_cms_layer.cms_sequential.cms_slow"] in levels


def test_specs_lists_every_builtin():
    proc = nestc("specs")
    assert proc.returncode == 0, proc.stderr
    listed = {ln.split("│")[1].strip() for ln in proc.stdout.splitlines() if ln.count("│") >= 3}
    assert listed == set(BUILTINS)


def test_specs_functions_lists_every_function_and_name():
    from nestc.functions import FUNCTIONS
    from nestc.resolve import RESERVED_NAMES

    proc = nestc("specs", "--functions", env={"COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr
    first = [ln.split("│")[1].strip() for ln in proc.stdout.splitlines() if ln.count("│") >= 3]
    assert {f.signature() for f in FUNCTIONS.values()} <= set(first)
    names = {n.strip() for row in first for n in row.split(",")}
    assert RESERVED_NAMES | {"k", "v", "q", "lr"} <= names


def test_fmt_check_accepts_the_builtins():
    proc = nestc("fmt", "--check", *BUILTINS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def _messy_copy(tmp_path: Path, name: str = "titans") -> tuple[Path, str]:
    canonical = builtin_path(name).read_text(encoding="utf-8")
    messy = "\n".join(ln.strip() for ln in canonical.splitlines()) + "\n"
    path = tmp_path / f"{name}.nest"
    path.write_text(messy)
    return path, canonical


def test_fmt_check_rejects_a_non_canonical_file(tmp_path):
    path, _ = _messy_copy(tmp_path)
    before = path.read_text()
    proc = nestc("fmt", "--check", path.name, cwd=tmp_path)
    assert proc.returncode == 1
    assert "would reformat" in proc.stderr
    assert path.read_text() == before  # --check never writes


def test_fmt_prints_the_canonical_text(tmp_path):
    path, canonical = _messy_copy(tmp_path)
    proc = nestc("fmt", path.name, cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == canonical


def test_fmt_write_rewrites_in_place_atomically(tmp_path):
    path, canonical = _messy_copy(tmp_path)
    inode = path.stat().st_ino
    proc = nestc("fmt", "-w", path.name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert path.read_text() == canonical
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not a rewrite
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind
    assert nestc("fmt", "--check", path.name, cwd=tmp_path).returncode == 0


def test_fmt_write_refuses_yaml(tmp_path):
    (tmp_path / "s.yaml").write_text("spec: s\nparams:\n  a: 1\n")
    proc = nestc("fmt", "-w", "s.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "`fmt --write` rewrites .nest files" in proc.stderr
    assert (tmp_path / "s.yaml").read_text() == "spec: s\nparams:\n  a: 1\n"


def test_fmt_of_a_broken_spec_changes_nothing(tmp_path):
    path = tmp_path / "broken.nest"
    path.write_text("spec broken\nparam a = (1\n")
    proc = nestc("fmt", "-w", path.name, cwd=tmp_path)
    assert proc.returncode == 2
    assert path.read_text() == "spec broken\nparam a = (1\n"


def test_convert_round_trip(tmp_path):
    src = tmp_path / "x.nest"
    src.write_text(builtin_path("hope").read_text(encoding="utf-8"))
    one = nestc("convert", "x.nest", "-o", "x.yaml", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert (tmp_path / "x.yaml").read_text().startswith("spec: hope\n")
    two = nestc("convert", "x.yaml", "-o", "y.nest", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "y.nest").read_text() == src.read_text()
    # and the YAML spec checks like the .nest one (it `use`s the built-in cms)
    assert nestc("check", "x.yaml", cwd=tmp_path).returncode == 0


def test_schema_is_json_schema():
    proc = nestc("schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert "$schema" in schema
    assert "boxes" in schema["properties"]


def test_set_of_an_unknown_param():
    proc = nestc("check", "titans", "--set", "foo=1")
    assert proc.returncode == 2
    assert "`--set foo=...`: the spec has no param `foo`" in proc.stderr


def test_set_without_a_value():
    proc = nestc("check", "titans", "--set", "chunk")
    assert proc.returncode == 2
    assert "expected NAME=VALUE" in proc.stderr


def test_set_of_an_unquoted_string_suggests_quotes():
    proc = nestc("check", "cms", "--set", "mid_unit=steps")
    assert proc.returncode == 2
    assert "a string needs double quotes" in proc.stderr
    assert "1 error" in proc.stderr  # and no cascade of "unknown unit" errors


def test_unknown_command():
    proc = nestc("frobnicate")
    assert proc.returncode == 2


def test_unknown_spec_name_suggests_a_builtin():
    proc = nestc("check", "titan")
    assert proc.returncode == 2
    assert "did you mean `titans`" in proc.stderr


CYCLE = """\
spec cyc

box a : memory {
    state   like(W)
    context g = grad(W)
    update  M + b
    every   1 step
}

box b : memory {
    state   like(W)
    context g = grad(W)
    update  M + a
    every   1 step
}

box W : weights {
    update W - a - b
}
"""


def test_diagnostics_do_not_depend_on_hash_seed(tmp_path):
    """The level graph's cycle report once depended on set order (PYTHONHASHSEED)."""
    (tmp_path / "cyc.nest").write_text(CYCLE)
    outs = {nestc("check", "cyc.nest", cwd=tmp_path, env={"PYTHONHASHSEED": seed}).stderr
            for seed in ("1", "2", "3")}
    assert len(outs) == 1
    out = outs.pop()
    assert "current state: a -> b -> a" in out
    assert "box a : memory {" in out  # the offending line is quoted
