"""A user's own torch.compile of a nestc model, without nestc's `prepare_inductor()`: a model
whose compiled form calls a region per token (a box on the general rule) applies the two torch
fixes it needs when it is built (runtime/inductor_setup.py `mend_region_bugs`), and its compiled
gradients equal eager's (without them they were about 300 times their own size off). In a
process of its own: this test session applies every fix up front (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from test_compile_specs import GENERAL_RULE_SPEC

SCRIPT = '''
import torch, nestc
from nestc.runtime import subgraph_aliases, subgraph_donation
from nestc.runtime.train import forward_loss

tags = lambda: torch.compiler.config.cache_key_tag
assert subgraph_aliases.CACHE_TAG not in tags() and subgraph_donation.CACHE_TAG not in tags()
torch.manual_seed(0)
model = nestc.compile("general_pair.nest", text=SPEC).model(50)
assert subgraph_aliases.CACHE_TAG in tags() and subgraph_donation.CACHE_TAG in tags()
x = torch.randint(0, 50, (2, 8))
params = list(model.parameters())
eager = torch.autograd.grad(forward_loss(model, x, x, {}), params, allow_unused=True)
step = torch.compile(lambda a, b: forward_loss(model, a, b, {}), fullgraph=True)
compiled = torch.autograd.grad(step(x, x), params, allow_unused=True)
print("worst", max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(eager, compiled) if a is not None))
'''


@pytest.mark.slow
def test_a_users_own_compile_of_a_general_rule_model_gives_eager_gradients(tmp_path):
    script = f"SPEC = {GENERAL_RULE_SPEC!r}\n" + SCRIPT
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}  # nothing compiled before
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = float(proc.stdout.split("worst", 1)[1])
    assert worst < 1e-4, proc.stdout
