"""Tests of nestc.runtime.checkpoint with real safetensors files."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from nestc.diagnostics import NestError
from nestc.runtime import checkpoint as C
from nestc.runtime.checkpoint import (
    FORMAT,
    checkpoint_tensors,
    flatten_state,
    inspect_checkpoint,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)

META = {
    "spec": "model tiny {\n  d = 64  # ünïcode\n}\n",
    "step": 120,
    "compile": {"chunk": 32, "levels": [1, 4, 16]},
    "tokenizer": {"name": "byte", "vocab_size": 256},
    "rng": {"seed": 7, "step": 120},
    "best_loss": float("inf"),
}


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def sample_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(16, 8, generator=g),
        "mlp.w": torch.randn(8, 8, generator=g).to(torch.bfloat16),
        "counts": torch.arange(5),
        "mask": torch.tensor([True, False, True]),
        "optim.step": torch.tensor(3.0),
    }


def test_roundtrip_tensors_and_meta(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    tensors = sample_tensors()
    save_checkpoint(path, tensors, META)
    loaded, meta = load_checkpoint(path)
    assert meta == META
    assert set(loaded) == set(tensors)
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and torch.equal(loaded[k], t)
    # on disk: a plain safetensors file with the nestc metadata keys
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    assert raw["format"] == FORMAT == "nestc-checkpoint/1"
    assert json.loads(raw["nestc"])["step"] == 120
    assert inspect_checkpoint(path) == META
    assert checkpoint_tensors(path)["embed.weight"] == ("F32", (16, 8))
    assert leftovers(tmp_path) == []


def test_overwrite_and_create_parent_folder(tmp_path):
    path = tmp_path / "run" / "ckpts" / "last.safetensors"
    save_checkpoint(path, {"w": torch.zeros(2)}, {"step": 1})
    save_checkpoint(path, {"w": torch.ones(2)}, {"step": 2})
    tensors, meta = load_checkpoint(path)
    assert meta["step"] == 2 and torch.equal(tensors["w"], torch.ones(2))


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    m = Tiny()
    path = tmp_path / "tied.safetensors"
    save_checkpoint(path, m.state_dict(), {"step": 0})
    with safe_open(str(path), framework="pt") as f:
        stored = set(f.keys())
        aliases = json.loads(f.metadata()["nestc.aliases"])
    assert stored == {"embed.weight"} and aliases == {"head.weight": "embed.weight"}
    tensors, _ = load_checkpoint(path)
    assert tensors["head.weight"] is tensors["embed.weight"]
    m2 = Tiny()
    m2.load_state_dict(tensors)
    assert torch.equal(m2.head.weight, m.embed.weight)
    assert m2.head.weight is m2.embed.weight
    assert set(checkpoint_tensors(path)) == {"embed.weight", "head.weight"}


def test_partial_views_are_cloned_and_noncontiguous_saved(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"full": base, "row": base[1], "t": base.t(), "cols": base[:, 1:3]}
    path = tmp_path / "views.safetensors"
    save_checkpoint(path, tensors, {})
    loaded, _ = load_checkpoint(path)
    for k, t in tensors.items():
        assert torch.equal(loaded[k], t), k
    loaded["row"].zero_()
    assert loaded["full"].sum() > 0  # independent memory after loading


def test_nonfinite_tensors_are_never_written(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})
    before = path.read_bytes()
    bad = {"w": torch.tensor([1.0, float("nan")]), "v": torch.tensor([float("inf")]), "ok": torch.ones(1)}
    with pytest.raises(NestError) as ei:
        save_checkpoint(path, bad, {"step": 2})
    d = ei.value.first
    assert "`v`" in d.message and "`w`" in d.message and "`ok`" not in d.message
    assert "NaN" in d.message and d.hint
    assert path.read_bytes() == before
    with pytest.raises(NestError, match="non-finite"):
        save_checkpoint(tmp_path / "new.safetensors", {"x": torch.full((2,), float("nan"), dtype=torch.bfloat16)}, {})
    assert not (tmp_path / "new.safetensors").exists()
    assert leftovers(tmp_path) == []


def test_meta_must_be_json(tmp_path):
    with pytest.raises(NestError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(1)}, {"bad": object()})


@pytest.mark.parametrize("exc", [RuntimeError("simulated crash"), KeyboardInterrupt()])
def test_crash_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch, exc):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"w": torch.ones(1000)}, {"step": 10})
    good = path.read_bytes()
    real_save = safetensors.torch.save_file

    def crashing_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = open(filename, "rb").read()
        with open(filename, "wb") as f:  # leave a half-written file, then die
            f.write(data[: len(data) // 2])
        raise exc

    monkeypatch.setattr(safetensors.torch, "save_file", crashing_save)
    with pytest.raises(type(exc)):
        save_checkpoint(path, {"w": torch.zeros(1000)}, {"step": 20})
    monkeypatch.undo()
    assert path.read_bytes() == good
    tensors, meta = load_checkpoint(path)
    assert meta["step"] == 10 and torch.equal(tensors["w"], torch.ones(1000))
    assert leftovers(tmp_path) == []


def test_failed_replace_is_a_nest_error_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"w": torch.ones(4)}, {"step": 1})
    good = path.read_bytes()

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(C.os, "replace", no_space)
    with pytest.raises(NestError) as ei:
        save_checkpoint(path, {"w": torch.zeros(4)}, {"step": 2})
    monkeypatch.undo()
    assert "No space left" in ei.value.first.message
    assert "untouched" in ei.value.first.hint
    assert path.read_bytes() == good and leftovers(tmp_path) == []


def test_missing_checkpoint_lists_existing_ones(tmp_path):
    save_checkpoint(tmp_path / "step-100.safetensors", {"w": torch.ones(1)}, {})
    with pytest.raises(NestError) as ei:
        load_checkpoint(tmp_path / "step-1000.safetensors")
    d = ei.value.first
    assert "does not exist" in d.message and d.pos.file.endswith("step-1000.safetensors")
    assert "step-100.safetensors" in d.hint
    with pytest.raises(NestError, match="folder"):
        load_checkpoint(tmp_path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"w": torch.randn(256, 256)}, {"step": 5})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for fn in (load_checkpoint, inspect_checkpoint):
        with pytest.raises(NestError) as ei:
            fn(path)
        assert "truncated or corrupt" in ei.value.first.message
        assert "earlier checkpoint" in ei.value.first.hint
    path.write_bytes(data[:5])
    with pytest.raises(NestError, match="not a safetensors file"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(NestError, match="empty"):
        load_checkpoint(path)


def test_foreign_files(tmp_path):
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(NestError) as ei:
        load_checkpoint(plain)
    assert "not a nestc checkpoint" in ei.value.first.message and FORMAT in ei.value.first.message

    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(NestError) as ei:
        inspect_checkpoint(other)
    assert "its format is `pt`" in ei.value.first.message and "expected `nestc-checkpoint/1`" in ei.value.first.message

    pickle = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, pickle)
    with pytest.raises(NestError, match=r"torch\.save"):
        load_checkpoint(pickle)

    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint at all\n")
    with pytest.raises(NestError, match="not a safetensors file"):
        load_checkpoint(text)


def test_newer_format_version(tmp_path):
    path = tmp_path / "future.safetensors"
    safetensors.torch.save_file(
        {"w": torch.ones(2)}, str(path), metadata={"format": "nestc-checkpoint/2", "nestc": "{}"}
    )
    with pytest.raises(NestError) as ei:
        load_checkpoint(path)
    assert "newer nestc" in ei.value.first.message and "version 2" in ei.value.first.message
    assert "upgrade" in ei.value.first.hint


def test_damaged_meta_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, str(path), metadata={"format": FORMAT, "nestc": "{not json"})
    with pytest.raises(NestError, match="metadata is damaged"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- nested state


def test_flatten_key_scheme_and_roundtrip():
    state = {
        "state": {0: {"step": torch.tensor(2.0), "m": torch.ones(2)}, "0": torch.zeros(1)},
        "groups": [{"lr": 0.01, "betas": (0.9, 0.99), "params": [0, 1], "name": None}],
        "a.b": {"c%d": torch.full((1,), 5.0)},
        "flag": True,
    }
    tensors, skel = flatten_state(state, "opt")
    assert set(tensors) == {"opt.state.0.step", "opt.state.0.m", "opt.state.0", "opt.a%2Eb.c%25d"}
    json.dumps(skel)  # JSON-able
    back = unflatten_state(tensors, json.loads(json.dumps(skel)))
    assert back["groups"] == state["groups"]
    assert isinstance(back["groups"][0]["betas"], tuple)
    assert set(back["state"]) == {0, "0"}  # int and str keys stay apart
    assert back["state"][0]["m"] is tensors["opt.state.0.m"]
    assert back["flag"] is True


def test_flatten_rejects_unsupported_leaves():
    with pytest.raises(TypeError, match="cannot store"):
        flatten_state({"x": object()}, "p")
    with pytest.raises(NestError, match="missing the tensor"):
        unflatten_state({}, {"t": "p.x"})


def test_optimizer_resume_through_checkpoint_matches_straight_run(tmp_path):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    def step(model, opt, i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(16, 4, generator=g)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    model, opt = make()
    for i in range(6):
        step(model, opt, i)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt = make()
    for i in range(3):
        step(model, opt, i)
    opt_tensors, opt_skel = flatten_state(opt.state_dict(), "optim")
    path = tmp_path / "step3.safetensors"
    save_checkpoint(path, {**{f"model.{k}": v for k, v in model.state_dict().items()}, **opt_tensors},
                    {"step": 3, "optim": opt_skel})

    tensors, meta = load_checkpoint(path)
    model2, opt2 = make()
    model2.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    opt2.load_state_dict(unflatten_state(tensors, meta["optim"]))
    for i in range(meta["step"], 6):
        step(model2, opt2, i)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, straight[k]), k
