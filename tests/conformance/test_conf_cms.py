"""The Continuum Memory System audit: each level of chunk C commits exactly every C tokens, and a
commit really changes what the level computes."""

import pytest
import torch

import nestc
from nestc.runtime.audit import record_commits
from nestc.runtime.context import Ctx

SMALL = {"n_layers": "2", "d_model": "32", "heads": "2"}
IN_CONTEXT = {"c_fast": "4", "c_mid": "16", "c_slow": "64", "mid_unit": '"tokens"', "slow_unit": '"tokens"'}


@pytest.mark.parametrize("chunks", [(4, 16, 64), (2, 6, 12), (1, 8, 32)])
def test_each_cms_level_commits_every_c_tokens(chunks):
    fast, mid, slow = chunks
    compiled = nestc.compile("cms", dict(SMALL, c_fast=str(fast), c_mid=str(mid), c_slow=str(slow),
                                         mid_unit='"tokens"', slow_unit='"tokens"'))
    model = compiled.model()
    t = 75
    x = torch.randint(0, 256, (2, t))
    signals = {k: torch.randn(2, t, w) * 1e-2 for k, w in model.lss_sites()}
    with record_commits(model) as log:
        model(x, ctx=Ctx(lss=signals))
    periods = {"cms_fast": fast, "cms_mid": mid, "cms_slow": slow}
    assert len(log) == 3 * 2  # three levels in each of two layers
    for (_path, box), positions in log.items():
        c = periods[box]
        assert positions == list(range(c, t + 1, c)), (box, positions)


def test_streamed_commits_keep_their_cadence():
    """Fed in uneven pieces, a level still commits at multiples of its chunk size."""
    model = nestc.compile("cms", dict(SMALL, **IN_CONTEXT)).model()
    x = torch.randint(0, 256, (1, 70))
    signals = {k: torch.randn(1, 70, w) * 1e-2 for k, w in model.lss_sites()}
    state = model.initial_state(1)
    with record_commits(model) as log:
        start = 0
        for n in (3, 29, 1, 37):
            piece = {k: v[:, start:start + n] for k, v in signals.items()}
            _, state = model(x[:, start:start + n], state, Ctx(lss=piece))
            start += n
    for (_path, box), positions in log.items():
        c = {"cms_fast": 4, "cms_mid": 16, "cms_slow": 64}[box]
        assert positions == list(range(c, 71, c))


def test_a_commit_changes_the_level():
    """After the first chunk a level reads its updated state: its output differs from what the
    initial state gives for the same input."""
    model = nestc.compile("cms", dict(SMALL, **IN_CONTEXT)).model()
    x = torch.randint(0, 256, (1, 8))
    signals = {k: torch.randn(1, 8, w) for k, w in model.lss_sites()}
    _, state = model(x, ctx=Ctx(lss=signals))
    fast = model.layers[0].cms_sequential.box_cms_fast
    after = state[0]["cms_sequential"]["box_cms_fast"]["W"]
    before = fast.initial_state(1)["W"]
    assert all((a - b).abs().max() > 0 for a, b in zip(after, before))


def test_a_fast_level_update_is_one_gd_step_on_its_chunk():
    """NL Eq. 71 with the dot-product objective on the local surprise signal: after one chunk of
    C tokens, W_1 = W_0 - lr * d/dW sum_t <M_W0(k_t), v_t>, the gradient taken at the chunk-start
    state. The reference is plain autograd on an MLP written here, not nestc's closed form."""
    torch.manual_seed(0)
    c, d = 8, 32
    compiled = nestc.compile("cms", {"n_layers": "1", "d_model": str(d), "heads": "2", "c_fast": str(c),
                                     "cms_lr": "0.5"})
    block = compiled.model().layers[0].cms_sequential
    x = torch.randn(2, c, d)
    signal = torch.randn(2, c, d)
    site = "0." + block.LSS_SITES[0][0]
    _, state = block(x, block.initial_state(2), Ctx(lss={site: signal}))

    fast = block.box_cms_fast
    w0 = [w.detach()[0].clone().requires_grad_() for w in fast._inits()]  # [out, in] per layer (one head)
    keys = block.x_norm(x).detach()

    def mlp(ws, k):  # 2 layers, gelu between, no residual (the cms spec's memory)
        return torch.nn.functional.gelu(k @ ws[0].T) @ ws[1].T

    for b in range(2):
        objective = (mlp(w0, keys[b]) * signal[b]).sum()
        grads = torch.autograd.grad(objective, w0)
        expected = [w - 0.5 * g for w, g in zip(w0, grads)]
        got = [w[b, 0] for w in state["box_cms_fast"]["W"]]
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


NESTED_TOKENS = {"n_layers": "1", "d_model": "32", "heads": "2", "c_fast": "4", "c_mid": "16",
                 "c_slow": "64", "mid_unit": '"tokens"', "slow_unit": '"tokens"'}


@pytest.mark.parametrize("units", ["tokens", "steps"])
def test_nested_cms_resets_the_fast_level_at_the_mid_level_boundary(units):
    """NL Eq. 72: with in-context (token) levels, the fast level restarts from its initial state
    each time the mid level completes a chunk; when the mid level learns across steps, the fast
    level keeps learning through the whole sequence."""
    overrides = dict(NESTED_TOKENS) if units == "tokens" else {"n_layers": "1", "d_model": "32",
                                                               "heads": "2", "c_fast": "4"}
    model = nestc.compile("cms_nested", overrides).model()
    block = model.layers[0].cms_nested_chain
    fast = block.box_nested_fast
    init = fast.initial_state(1)["W"]
    x = torch.randint(0, 256, (1, 16))
    signals = {k: torch.randn(1, 16, w) for k, w in model.lss_sites()}

    def fast_w_after(n):
        _, state = model(x[:, :n], ctx=Ctx(lss={k: v[:, :n] for k, v in signals.items()}))
        return state[0]["cms_nested_chain"]["box_nested_fast"]["W"]

    moved = lambda ws: max(float((a - b).abs().max()) for a, b in zip(ws, init))  # noqa: E731
    assert moved(fast_w_after(12)) > 0  # three fast chunks in: it has learned
    if units == "tokens":
        assert moved(fast_w_after(16)) == 0  # the mid level's chunk ended: back to the start
    else:
        assert moved(fast_w_after(16)) > 0
