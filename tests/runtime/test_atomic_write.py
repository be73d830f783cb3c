"""nestc.atomic: whole files or nothing, with the permissions a plain write would give."""

import os
import stat

import pytest

from nestc.atomic import write_text_atomic
from nestc.diagnostics import NestError


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_umask_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.json", "{}\n")
        open(tmp_path / "plain.json", "w").close()
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").read_text() == "{}\n"
    assert _mode(tmp_path / "report.json") == _mode(tmp_path / "plain.json") == 0o644


def test_rewriting_a_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")
    target.chmod(0o640)
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n" and _mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary left behind


def test_a_folder_that_is_a_file_is_a_nest_error(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(NestError, match="cannot write"):
        write_text_atomic(tmp_path / "runs" / "x.txt", "x")
