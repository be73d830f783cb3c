"""Shared pieces of the training / checkpoint / streaming / generation tests: small model
settings, the CLI in a subprocess, a run trained once per test session, state walking."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from nestc.loader import builtin_names, load
from nestc.resolve import resolve

# small settings for every built-in model spec (each spec takes the ones it has)
SMALL = {
    "n_layers": "1", "d_model": "32", "heads": "2", "d_ff": "64",
    "chunk": "4", "window": "8", "n_persist": "2",  # titans and its variants
    "c_memory": "8", "c_other": "4",  # hope
    "c_fast": "4", "c_mid": "8", "c_slow": "16", "cms_expand": "1",  # cms levels (in context)
    "mid_unit": '"tokens"', "slow_unit": '"tokens"',
}
TRANSFORMER = {"n_layers": "1", "d_model": "32", "heads": "2", "d_ff": "64"}
TITANS = {"n_layers": "1", "d_model": "32", "heads": "2", "d_ff": "64", "chunk": "4"}
HOPE = {"n_layers": "1", "d_model": "32", "heads": "2", "c_memory": "8", "c_other": "4",
        "c_fast": "4", "c_mid": "8", "c_slow": "16", "cms_expand": "1",
        "mid_unit": '"tokens"', "slow_unit": '"tokens"'}
# the CMS of NL Fig. 5 in small: a fast in-context level, mid and slow levels across steps
CMS_STEPS = {"n_layers": "1", "d_model": "32", "heads": "2", "cms_expand": "1",
             "c_fast": "4", "c_mid": "2", "c_slow": "4"}

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def single_thread():
    """The machine has two loaded cores: one torch thread per test process is far faster for
    these tiny models (no thread contention), and results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def settings_for(spec: str, wanted: dict[str, str] = SMALL) -> dict[str, str]:
    """The entries of `wanted` that are params of `spec`."""
    params = resolve(load(spec), {}).params
    return {k: v for k, v in wanted.items() if k in params}


def model_specs() -> list[str]:
    """The built-in specs that describe a model (a layer stack), not an optimizer."""
    return [n for n in builtin_names() if resolve(load(n), {}).layers]


def sets(overrides: dict[str, str]) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += ["--set", f"{k}={v}"]
    return out


def nestc_cli(*args: str, timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`nestc ARGS...` in a subprocess (one torch thread, on the CPU even where there is a GPU:
    `--device auto` would take it, and these tests compare runs bit for bit), output captured
    as text."""
    return subprocess.run([sys.executable, "-m", "nestc.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=cli_env(), cwd=cwd or ROOT)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a `nestc` subprocess in these tests: one torch thread, no GPU, wide
    output, no NESTC_DEBUG tracebacks; `extra` on top."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200",
               CUDA_VISIBLE_DEVICES="", **extra)
    env.pop("NESTC_DEBUG", None)
    return env


def assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """A clean user error: exit code 2, no traceback, every needle in the output."""
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out, out
    assert "internal error" not in out, out
    for n in needles:
        assert n in out, (n, out)
    return out


_TMP = Path(tempfile.mkdtemp(prefix="nestc-train-tests-"))
atexit.register(shutil.rmtree, _TMP, True)


@functools.lru_cache(maxsize=None)
def trained_transformer() -> Path:
    """A tiny transformer run, trained once per test session by the CLI: its folder."""
    out = _TMP / "transformer-run"
    r = nestc_cli("train", "transformer", "--steps", "6", "--batch", "2", "--seq-len", "32",
                  "--eval-every", "3", "--out", out, *sets(TRANSFORMER))
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@functools.lru_cache(maxsize=None)
def trained_cms() -> Path:
    """A tiny CMS run (levels of every 2 and 4 steps, an in-context level of 4 tokens, 16 tokens
    per sequence), trained once per test session by the CLI: its folder."""
    out = _TMP / "cms-run"
    r = nestc_cli("train", "cms", "--steps", "12", "--batch", "2", "--seq-len", "16",
                  "--eval-every", "6", "--out", out, *sets(CMS_STEPS))
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def memory_states(state, path: str = "") -> dict[str, dict]:
    """{path: state} of every chunked memory in a model state (dicts with committed weights
    `W`, running weights `M` and the `offset` into the current chunk)."""
    found = {}
    if isinstance(state, dict):
        if {"W", "M", "offset"} <= set(state):
            found[path] = state
        else:
            for k, v in state.items():
                found.update(memory_states(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            found.update(memory_states(v, f"{path}.{i}" if path else str(i)))
    return found


def flat(state, path: str = "") -> dict[str, object]:
    """Every leaf of a nested state, by path (tensors and plain values)."""
    if isinstance(state, dict):
        out = {}
        for k in sorted(state, key=str):
            out.update(flat(state[k], f"{path}.{k}"))
        return out
    if isinstance(state, (list, tuple)):
        out = {}
        for i, v in enumerate(state):
            out.update(flat(v, f"{path}.{i}"))
        return out
    return {path: state}
