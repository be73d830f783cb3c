"""`init checkpoint(path, key)`: a memory starts from weights stored in a safetensors file (NL §7.3
stacks CMS levels this way), relative to the spec's folder; a wrong file, key or shape is a clear
error naming the box."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import nestc
from nestc.diagnostics import NestError
from nestc.runtime.context import Ctx

SPEC = """spec stacked "memories that start from stored weights"

block layer {
    box deep : memory {
        heads     2
        state     mlp(16, expansion=2, act=gelu, residual=true)
        init      checkpoint("weights.safetensors", "deep")
        keys      l2norm(linear(in, 32), groups=2)
        values    linear(in, 32)
        objective l2(M(k), v)
        every     4 tokens
    }
    box fast : memory {
        heads     2
        state     matrix(16, 16)
        init      checkpoint("weights.safetensors", "fast")
        keys      l2norm(linear(in, 32), groups=2)
        values    linear(in, 32)
        objective l2(M(k), v)
        every     1 token
    }
    box slow : memory {
        state     mlp(32, expansion=2, act=gelu, residual=false)
        init      checkpoint("weights.safetensors", "slow")
        keys      in
        values    lss
        objective dot(M(k), v)
        every     2 steps
    }
    x = x + linear(deep(x), 32) + linear(fast(x), 32)
    x = x + slow(rmsnorm(x))
}

model {
    dim 32
    repeat 1 { layer }
}
"""


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"deep.0": torch.randn(2, 32, 16, generator=g), "deep.1": torch.randn(16, 32, generator=g),
            "fast": torch.randn(16, 16, generator=g),
            "slow.0": torch.randn(64, 32, generator=g), "slow.1": torch.randn(32, 64, generator=g)}


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "stacked.nest"
    path.write_text(SPEC)
    return path


def test_memories_start_from_the_stored_weights(spec):
    w = _weights()
    save_file(w, str(spec.parent / "weights.safetensors"))
    model = nestc.compile(spec).model()
    layer = model.layers[0]
    state = layer.initial_state(3)
    deep = state["box_deep"]["W"]
    assert torch.equal(deep[0][1], w["deep.0"])  # [batch, heads, out, in]: per head as stored
    assert torch.equal(deep[1][2, 1], w["deep.1"])  # one matrix for every head
    assert torch.equal(state["box_fast"]["S"][0, 0], w["fast"])
    # a level that learns across steps: its parameters start from the file
    slow = [p for name, p in layer.named_parameters() if "box_slow" in name]
    assert [tuple(p.shape) for p in slow] == [(1, 64, 32), (1, 32, 64)]
    assert torch.equal(slow[0][0], w["slow.0"]) and torch.equal(slow[1][0], w["slow.1"])
    # and the model runs from there
    x = torch.randint(0, 256, (3, 8))
    lss = {k: torch.zeros(3, 8, d) for k, d in model.lss_sites()}
    logits, _ = model(x, ctx=Ctx(lss=lss))
    assert torch.isfinite(logits).all()


def test_a_wrong_shape_names_the_box(spec):
    w = _weights()
    w["fast"] = torch.randn(8, 16)
    save_file(w, str(spec.parent / "weights.safetensors"))
    with pytest.raises(NestError, match=r"box `fast`: `fast` has shape \(8, 16\)"):
        nestc.compile(spec).model()


def test_a_missing_file_is_a_clean_cli_error(spec):
    proc = subprocess.run([sys.executable, "-m", "nestc.cli", "train", str(spec), "--steps", "1",
                           "--out", str(spec.parent / "run")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "box `deep`: cannot read its initial state" in proc.stderr
    assert "Traceback" not in proc.stderr
