"""Generation and evaluation of a trained model: `nestc generate` streams text (deterministic for
a seed), the memories keep learning while text is generated, `nestc eval` reports perplexity."""

from __future__ import annotations

import math
import os
import re
import select
import subprocess
import sys
import time

import pytest
import torch

import nestc
from nestc.runtime.generate import stream_tokens

from train_helpers import ROOT, TITANS, assert_user_error, memory_states, nestc_cli, single_thread  # noqa: F401
from train_helpers import trained_transformer

PROMPT = "The "


def generate(*extra: str) -> subprocess.CompletedProcess:
    ckpt = trained_transformer() / "last.safetensors"
    return nestc_cli("generate", ckpt, "--prompt", PROMPT, "--tokens", "24", *extra)


def test_generate_prints_the_prompt_and_its_continuation_deterministically():
    a, b, c = generate("--seed", "1"), generate("--seed", "1"), generate("--seed", "2")
    for r in (a, b, c):
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        assert r.stdout.startswith(PROMPT)
        assert len(r.stdout.rstrip("\n")) > len(PROMPT)  # something was generated
    assert a.stdout == b.stdout  # same seed, same text
    assert a.stdout != c.stdout  # the seed drives the sampling


def test_greedy_generation_does_not_depend_on_the_seed():
    a, b = generate("--temperature", "0", "--seed", "1"), generate("--temperature", "0", "--seed", "2")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and a.stdout.startswith(PROMPT)


def read_for(stream, n: int, seconds: float) -> bytes:
    """Up to `n` bytes of a pipe, whatever arrived within `seconds`."""
    got = b""
    end = time.monotonic() + seconds
    while len(got) < n and time.monotonic() < end:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            chunk = os.read(stream.fileno(), n - len(got))
            if not chunk:
                break
            got += chunk
    return got


@pytest.mark.parametrize("temperature", ["0", "1.0"])
def test_generate_streams_while_it_runs(temperature):
    """Text arrives on stdout while the model is still generating (flushed token by token),
    not all at once at the end -- also when sampling gives bytes that are not UTF-8 (the
    barely trained model samples such bytes often)."""
    ckpt = trained_transformer() / "last.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "nestc.cli", "generate", str(ckpt), "--prompt", PROMPT,
                             "--tokens", "100000", "--temperature", temperature],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
    try:
        first = read_for(proc.stdout, len(PROMPT) + 40, 30)  # the prompt and some generated text
        assert first.startswith(PROMPT.encode())
        assert len(first) == len(PROMPT) + 40, first
        assert proc.poll() is None  # 100000 tokens are far from done
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_memories_keep_learning_while_generating():
    """stream_tokens(on_state=...) shows the state after the prompt and after every generated
    token: a Titans memory commits a new chunk every `chunk` (4) generated tokens, and its
    running state moves with every token."""
    torch.manual_seed(0)
    model = nestc.compile("titans", TITANS).model()
    model.eval()
    initial = memory_states(model.initial_state(1))
    seen: dict[int, dict] = {}

    def on_state(n, state):
        seen[n] = {p: ([w.clone() for w in m["W"]], [w.clone() for w in m["M"]], m["offset"])
                   for p, m in memory_states(state).items()}

    prompt = list(b"The tide ")  # 9 tokens: two full chunks and one token, flushed
    tokens = list(stream_tokens(model, prompt, 9, temperature=1.0, seed=3, on_state=on_state))
    assert len(tokens) == 9 and all(0 <= t < 256 for t in tokens)
    assert sorted(seen) == list(range(10))  # after the prompt, then after each token
    (path, (w0, _m0, off0)), = seen[0].items()
    # the prompt taught the memory (its last partial chunk too: it was flushed)
    assert off0 == 0
    assert all((a - b).abs().max() > 0 for a, b in zip(w0, initial[path]["W"]))

    def same(xs, ys):
        return all(torch.equal(a, b) for a, b in zip(xs, ys))

    commits = [n for n in range(1, 10) if not same(seen[n][path][0], seen[n - 1][path][0])]
    assert commits == [4, 8]  # a new committed state every 4 generated tokens
    assert [seen[n][path][2] for n in range(10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    # the running state moves with every generated token
    assert all(not same(seen[n][path][1], seen[n - 1][path][1]) for n in range(1, 10))
    assert not same(seen[9][path][0], w0)


def test_eval_prints_a_perplexity():
    ckpt = trained_transformer() / "last.safetensors"
    r = nestc_cli("eval", ckpt, "--max-batches", "2", "--batch", "4")
    assert r.returncode == 0, r.stderr
    m = re.search(r"loss (\d+\.\d+), perplexity (\d+\.\d+) \((\d+) sequences of (\d+) tokens\)", r.stdout)
    assert m, r.stdout
    loss, ppl = float(m.group(1)), float(m.group(2))
    assert 1.0 < ppl < 1000.0 and abs(math.exp(loss) - ppl) / ppl < 1e-3
    assert int(m.group(3)) == 8 and int(m.group(4)) == 32  # 2 batches of 4, the run's seq-len
    assert "transformer step 6 on its held-out split" in r.stdout


def test_eval_on_a_text_file(tmp_path):
    ckpt = trained_transformer() / "last.safetensors"
    text = tmp_path / "notes.txt"
    text.write_text("A small text to evaluate the model on, written for this test. " * 40)
    r = nestc_cli("eval", ckpt, "--data", text, "--max-batches", "2", "--batch", "2", "--seq-len", "16")
    assert r.returncode == 0, r.stderr
    assert f"held-out half of {text}" in r.stdout.replace("\n", "")
    m = re.search(r"perplexity (\d+\.\d+) \((\d+) sequences of 16 tokens\)", r.stdout)
    assert m and float(m.group(1)) > 1.0 and int(m.group(2)) == 4


def test_eval_with_a_missing_data_path(tmp_path):
    ckpt = trained_transformer() / "last.safetensors"
    r = nestc_cli("eval", ckpt, "--data", tmp_path / "nowhere.txt")
    assert_user_error(r, "nowhere.txt")
