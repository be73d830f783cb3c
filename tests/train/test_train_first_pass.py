"""`--first-pass shared` runs the local-surprise first pass through the real pass's graphs, which
is the frozen pass only when a zero signal leaves every lss box at its initial state. The code
generator lists the boxes a zero signal would still move (an objective whose gradient does not
vanish with its target, a retention gate, an optimizer that changes the state by itself), and
such a spec is refused with a one-screen error (exit 2) by `nestc train` and `nestc bench`
before anything runs. Also here: a spec with nothing to train with is a user error too."""

from __future__ import annotations

import nestc

from train_helpers import assert_user_error, nestc_cli

LSS_SPEC = """spec lss_box "a memory learning from its local surprise signal"

param d_model = 32

block layer {{
    box fast : memory {{
        state     mlp(d_model, expansion=2, act=gelu, residual=false)
        init      meta
        keys      in
        values    lss
        lr        0.1
        objective {objective}
        {retention}
        every     4 tokens
    }}
    x = x + fast(rmsnorm(x))
}}

model {{
    dim d_model
    repeat 1 {{ layer }}
}}
{train}
"""
TRAIN = "train {\n    optimizer adamw(lr=1e-3)\n    seq_len 16\n    batch 2\n}"


def write(tmp_path, objective="dot(M(k), v)", retention="", train=TRAIN):
    path = tmp_path / "lss_box.nest"
    path.write_text(LSS_SPEC.format(objective=objective, retention=retention, train=train))
    return path


def moved(path):
    return nestc.compile(path).model(vocab=64).lss_moved_by_zero()


def test_the_code_generator_lists_the_lss_boxes_a_zero_signal_moves(tmp_path):
    assert moved(write(tmp_path)) == []  # the CMS levels' objective: one backprop step
    assert nestc.compile("hope", {"n_layers": "2"}).model(vocab=64).lss_moved_by_zero() == []
    [(key, why)] = moved(write(tmp_path, objective="l2(M(k), v)"))
    assert key == "0.layer.fast" and "l2" in why
    [(key, why)] = moved(write(tmp_path, retention="retention gate(0.9)"))
    assert key == "0.layer.fast" and "retention" in why


def test_train_and_bench_refuse_a_shared_first_pass_that_would_move_a_box(tmp_path):
    spec = write(tmp_path, objective="l2(M(k), v)")
    r = nestc_cli("train", spec, "--compile", "--first-pass", "shared", "--steps", "1",
                  "--out", tmp_path / "run")
    assert_user_error(r, "--first-pass", "0.layer.fast", "l2", "--first-pass frozen")
    assert not (tmp_path / "run").exists()
    r = nestc_cli("bench", spec, "--first-pass", "shared", "--iters", "1", "--warmup", "0")
    assert_user_error(r, "--first-pass", "0.layer.fast", "l2")


def test_a_spec_with_no_optimizer_is_a_user_error(tmp_path):
    r = nestc_cli("train", write(tmp_path, train=""), "--steps", "1", "--out", tmp_path / "run")
    assert_user_error(r, "lss_box.nest", "no optimizer", "train section", "--optimizer")
    assert not (tmp_path / "run").exists()
