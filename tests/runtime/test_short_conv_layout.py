"""ShortConv keeps its [dim, window] weight tap-major in memory, so that each tap's weights are a
contiguous row for inductor's vectorised loops (runtime/layers.py). The layout must survive what
training does to a parameter, and the compiled layer must compute what the eager one does."""

import copy

import torch

from nestc.runtime.layers import ShortConv


def test_each_tap_is_a_contiguous_row():
    conv = ShortConv(16, 4)
    assert conv.weight.shape == (16, 4)
    assert all(conv.weight[:, j].is_contiguous() for j in range(4))
    assert conv.weight[:, -1].eq(1).all() and conv.weight[:, :-1].eq(0).all()  # the identity


def test_layout_survives_loading_copying_and_optimizer_state():
    conv = ShortConv(16, 4)
    row_major = torch.randn(16, 4)  # as a checkpoint written before the change holds it
    conv.load_state_dict({"weight": row_major})
    assert torch.equal(conv.weight, row_major) and conv.weight[:, 0].is_contiguous()
    assert copy.deepcopy(conv).weight[:, 0].is_contiguous()
    opt = torch.optim.AdamW(conv.parameters())
    conv(torch.randn(2, 5, 16))[0].sum().backward()
    opt.step()
    assert opt.state[conv.weight]["exp_avg"][:, 0].is_contiguous()


def test_compiled_matches_eager_forward_and_backward():
    torch.manual_seed(0)
    conv = ShortConv(16, 4)
    conv.load_state_dict({"weight": torch.randn(16, 4)})
    x = torch.randn(2, 9, 16, requires_grad=True)
    state = torch.randn(2, 3, 16)

    def run(fn):
        y, new_state = fn(x, state)
        loss = (torch.nn.functional.silu(y) * torch.linspace(-1, 1, 16)).sum()
        return [y, new_state, *torch.autograd.grad(loss, [x, conv.weight])]

    eager = run(conv)
    compiled = run(torch.compile(conv, fullgraph=True, dynamic=False))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
