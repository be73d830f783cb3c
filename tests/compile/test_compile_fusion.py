"""Sibling memories (declared together, read with the same input) are generated as one stacked
memory. That is an optimisation only: the fused model must compute what the unfused one does."""

import torch

import nestc
from nestc.runtime.context import Ctx

HOPE_SMALL = {"n_layers": "2", "d_model": "32", "heads": "2", "c_memory": "8", "c_other": "4",
              "c_fast": "4"}
SIBLINGS = ["M_alpha", "M_eta", "M_k", "M_v"]  # the stacking order of the generated code


def test_fused_siblings_equal_separate_memories():
    fused = nestc.compile("hope", HOPE_SMALL)
    separate = nestc.compile("hope", HOPE_SMALL, options={"fuse": False})
    assert "box_M_alpha_M_eta_M_k_M_v" in fused.source
    assert "box_M_alpha_M_eta_M_k_M_v" not in separate.source
    a, b = fused.model(), separate.model()
    torch.manual_seed(0)
    sb = {k: (torch.randn_like(v) * 0.1 if "init_weights" in k else v) for k, v in b.state_dict().items()}
    b.load_state_dict(sb)
    sa = {}
    for k in a.state_dict():
        if "box_M_alpha_M_eta_M_k_M_v" in k:  # the stack is the members' heads, in order
            sa[k] = torch.cat([sb[k.replace("box_M_alpha_M_eta_M_k_M_v", f"box_{m}")] for m in SIBLINGS], 0)
        else:
            sa[k] = sb[k]
    a.load_state_dict(sa)
    x = torch.randint(0, 256, (2, 21))
    lss = {k: torch.randn(2, 21, w) * 0.1 for k, w in a.lss_sites()}
    la, _ = a(x, ctx=Ctx(lss=lss))
    lb, _ = b(x, ctx=Ctx(lss=lss))
    assert (la - lb).abs().max().item() < 1e-5
    # and the gradients of the meta-learned initial states agree, member by member
    ga = torch.autograd.grad(la.square().mean(), [p for n, p in a.named_parameters() if "M_alpha_M_eta" in n])
    gb = torch.autograd.grad(lb.square().mean(), [p for n, p in b.named_parameters()
                                                  if any(f"box_{m}." in n for m in SIBLINGS)])
    # gb holds [layer0: M_alpha w0, w1, M_eta w0, w1, ...]; regroup into stacks per layer and weight
    per_layer = len(gb) // 2
    for layer in range(2):
        mine = gb[layer * per_layer:(layer + 1) * per_layer]
        for w in range(2):
            stacked = torch.cat([mine[i * 2 + w] for i in range(len(SIBLINGS))], 0)
            assert (ga[layer * 2 + w] - stacked).abs().max().item() < 1e-5
