"""Every built-in model spec shrunk for tests (one layer, width 32, two heads, chunk sizes that
put several chunks in a short sequence): the code paths are those of the full size, and tracing
and running stay quick. Shared by tests/compile, tests/runtime and tests/gpu (tests/ is on the
import path through tests/conftest.py)."""

from __future__ import annotations

import torch

import nestc
from nestc.runtime.train import make_loss_fns, signals

SMALL = {"n_layers": "1", "d_model": "32", "heads": "2"}
SHRINK = {
    "transformer": {},
    "linear_attention": {},
    "deltanet": {},
    "gated_deltanet": {},
    "titans": {"chunk": "4"},
    "titans_mac": {"chunk": "4"},
    "titans_mag": {"chunk": "4", "window": "6"},
    "titans_mal": {"chunk": "4", "window": "6"},
    "cms": {"c_fast": "2", "c_mid": "4", "c_slow": "8"},
    "cms_nested": {"c_fast": "2", "c_mid": "4", "c_slow": "8"},
    "cms_independent": {"c_fast": "2", "c_mid": "4", "c_slow": "8"},
    "hope_attention": {"c_fast": "2", "c_mid": "4", "c_slow": "8"},
    "hope": {"c_fast": "2", "c_mid": "4", "c_slow": "8", "c_memory": "8", "c_other": "4"},
}
MODEL_SPECS = sorted(SHRINK)  # tests/compile checks that this is every built-in model spec


# Titans' memory with every inner gradient at the call's starting state (`grad_state call_start`),
# written as a user would: a new spec over the built-in lmm box
CALL_START_SPEC = """spec call_start "Titans LMM with every gradient at the call's starting state"
use titans
block layer {
    box mem : memory like lmm {
        grad_state call_start
    }
    x = x + mem(rmsnorm(x))
}
model {
    dim d_model
    repeat n_layers { layer }
}
"""


# A general-rule memory running Adam on its inner objective, updated every 4 tokens: its tokens
# run as a scan in a compiled step (inductor could not compile the per-token region calls), so
# `--loops call` refuses it (tests/compile and tests/train)
ADAM_CHUNKS = """spec adam_chunks "Adam on the inner objective, updated every 4 tokens"
param d_model = 8
param heads = 2
block layer {
    box mem : memory {
        heads     heads
        state     mlp(d_model / heads, depth=2, expansion=2)
        keys      silu(conv(linear(in, d_model), 3))
        values    tanh(linear(in, d_model))
        objective sum(abs(M(k) - v) ** 3)
        optimizer adam(0.9, 0.99, 1e-6)
        every     4 tokens
    }
    x = x + linear(mem(rmsnorm(x)), d_model)
}
model {
    dim d_model
    repeat 1 { layer }
}
"""


def call_start(tmp_path, overrides: dict[str, str]):
    """CALL_START_SPEC written to tmp_path and compiled with `overrides`."""
    spec = tmp_path / "call_start.nest"
    spec.write_text(CALL_START_SPEC)
    return nestc.compile(spec, overrides)


def small(name: str):
    """The compiled spec `name`, shrunk."""
    return nestc.compile(name, {**SMALL, **SHRINK[name]})


def loss_and_grads(model, x, y):
    """The full two-pass training loss (local surprise signals first, when the model has lss
    boxes) and the gradient of every parameter (None where a parameter is unused)."""
    fns = make_loss_fns(model)
    loss = fns.main(x, y, signals(model, fns, x, y))
    return loss, torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)


def generated_code(fn, *args) -> str:
    """The code inductor writes for `fn(*args)` (every graph it compiles while that runs,
    backward graphs included), from an empty dynamo state and without the FX graph cache, less
    the per-process graph counters in the headers."""
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    with config.patch(fx_graph_cache=False):
        _, codes = run_and_get_code(fn, *args)
    return "\n".join(line for code in codes for line in code.splitlines() if not line.startswith("# AOT ID"))


def compiled_step_code(name: str, seq_len: int = 16) -> str:
    """The code inductor writes for one compiled training step (loss, backward) of the shrunk
    built-in `name`: the graphs nestc's own compile paths produce."""
    torch.manual_seed(0)
    model = small(name).model(vocab=64)
    fns = make_loss_fns(model, compile=True)
    x, y = torch.randint(0, 64, (2, seq_len)), torch.randint(0, 64, (2, seq_len))

    def step():
        fns.main(x, y, signals(model, fns, x, y)).backward()

    return generated_code(step)
