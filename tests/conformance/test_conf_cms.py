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
