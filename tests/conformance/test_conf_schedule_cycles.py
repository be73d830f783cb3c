"""A box read twice with another box's read between the two reads.

    let a = fast(h)                                             # fast, first read
    let b = slow(a)                                             # slow reads what fast gave
    x = x + linear(b, d_model) + linear(fast(h2), d_model)      # fast again, and slow's result

Reading `fast` twice makes its reads one chunk loop (both see the same state sequence); `slow`
needs the first read's result and the statement of the second read needs `slow`'s. The block's
schedule used to refuse this ("the statements and boxes cannot be put in an order that respects
their data flow"); the whole cycle now runs as one loop at the smaller chunk size, each box read
at its committed state and updated at its own chunk boundaries (fast every 3 tokens, slow every
6). (Had the second read's argument depended on `b`, the dataflow graph itself would have had
the cycle, and the schedule handled that already.) Checked here: the schedule, the chunked rules
against the per-token general rule, compiled against eager, causality and streaming, in float64.
"""

from __future__ import annotations

import re

import pytest
import torch

import nestc
from nestc.runtime.context import Ctx
from nestc.runtime.train import make_loss_fns, signals
from small_models import loss_and_grads
from test_conf_reference_rules import assert_same_training_signal, same_model_pair

SPEC = """spec chain "two memories, one read twice around the other"
param d_model = 16
param heads   = 2
param d_head  = d_model / heads
block layer {
    box fast : memory {
        heads     heads
        state     mlp(d_head, depth=2, expansion=2, act=tanh, residual=true)
        init      meta
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.3 * sigmoid(linear(in, heads))
        objective l2(M(k), v)
        retention gate(sigmoid(linear(in, heads) + 2.0))
        optimizer momentum(0.5)
        every     3 tokens
    }
    box slow : memory {
        heads     heads
        state     matrix(d_head, d_head)
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.5 * sigmoid(linear(in, heads))
        objective l2(M(k), v)
        every     6 tokens
    }
    let h  = rmsnorm(x)
    let h2 = layernorm(x)
    let a  = fast(h)
    let b  = slow(a)
    x = x + linear(b, d_model) + linear(fast(h2), d_model)
}
model {
    dim d_model
    repeat 2 { layer }
}
"""


def compiled(**options):
    return nestc.compile("chain.nest", text=SPEC, options=options)


def test_the_cycle_runs_as_one_loop_over_both_boxes():
    src = compiled().source
    loops = re.findall(r"# boxes (.*) depend on one another through time: they run together, "
                       r"(\d+) token", src)
    assert loops == [("fast, slow", "3")]
    # `in` of a box read at several places is its last read's argument (`nestc specs --functions`)
    assert "fast_keys = L.l2norm(self.fast_keys_linear(h2), 2)" in src


def test_chunked_rules_equal_the_per_token_rule():
    ma, mb, pairs = same_model_pair(compiled(), compiled(rules="reference"))
    assert_same_training_signal(ma, mb, pairs, t=20)


def test_compiled_equals_eager():
    torch.manual_seed(0)
    model = compiled().model(40).double()
    x, y = (torch.randint(0, 40, (2, 20), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    loss_e, grads_e = loss_and_grads(model, x, y)
    torch._dynamo.reset()
    fns = make_loss_fns(model, compile=True)
    loss_c = fns.main(x, y, signals(model, fns, x, y))
    grads_c = torch.autograd.grad(loss_c, list(model.parameters()), allow_unused=True)
    assert loss_c.item() == pytest.approx(loss_e.item(), rel=1e-12)
    for (name, _), a, b in zip(model.named_parameters(), grads_e, grads_c):
        assert (a is None) == (b is None), name
        if a is not None:
            assert (a - b).abs().max() <= 1e-10 * a.abs().max(), name


def test_causal_and_streams_in_pieces():
    torch.manual_seed(0)
    model = compiled().model(40).double().eval()
    x = torch.randint(0, 40, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, _ = model(x, ctx=Ctx())
        for t in (4, 7, 13):  # inside fast's chunks, at a slow boundary (6), inside slow's
            x2 = x.clone()
            x2[:, t:] = torch.randint(0, 40, x2[:, t:].shape, generator=torch.Generator().manual_seed(t))
            other, _ = model(x2, ctx=Ctx())
            assert (other[:, :t] - whole[:, :t]).abs().max() <= 1e-12, f"position < {t} saw the future"
            assert (other[:, t:] - whole[:, t:]).abs().max() > 1e-6
        state, outs, start = model.initial_state(2), [], 0
        for n in (5, 1, 8, 9):  # pieces that end inside and at the chunks of 3 and 6
            out, state = model(x[:, start:start + n], state, Ctx())
            outs.append(out)
            start += n
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-12, atol=1e-12)
