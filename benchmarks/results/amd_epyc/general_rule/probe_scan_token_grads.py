"""Probe (not a test): one token step of an MLP memory (torch.func gradients of its objective) as
the body of a scan over tokens, compiled, against the same scan run eagerly: the gradients with
respect to the memory's initial weights and the keys.

    python benchmarks/results/amd_epyc/general_rule/probe_scan_token_grads.py 8 inductor
    python benchmarks/results/amd_epyc/general_rule/probe_scan_token_grads.py 8 aot_eager_decomp_partition
    python benchmarks/results/amd_epyc/general_rule/probe_scan_token_grads.py 8 inductor noreuse

A scan would compile a general-rule box's tokens once, whatever the sequence (the per-token
region still puts one call per token in the graph). In torch 2.13 this compiles in seconds but
inductor's gradients are wrong (0.81, 0.11, 0.06 of each one's largest entry at 8 tokens), with or
without buffer reuse; aot_eager_decomp_partition's are right. See README.md beside this file.

Later found (stop 39): the wrong gradients come from the loss's `final[0].sum()`, whose gradient
reaches the scan as a broadcast (stride 0); inductor compiles the scan's backward loop for that
layout. Without that term, or with nestc.runtime.ops.scan (dense output gradients), they are right.
This probe is kept as it ran.
"""

import sys, time, torch
from torch._higher_order_ops.scan import scan
from nestc.runtime.inductor_setup import prepare_inductor
prepare_inductor()
import torch._inductor.config as ic
if "noreuse" in sys.argv: ic.allow_buffer_reuse = False
torch.set_default_dtype(torch.float64)
B,H,D,F=4,2,16,32
def apply(W, x):
    h = torch.nn.functional.gelu(x @ W[0].transpose(-1,-2))
    return x + h @ W[1].transpose(-1,-2)
T = int(sys.argv[1])
def run(W0, W1, keys, vals, eta):
    def step(carry, xs):
        k, v, e = xs
        o = apply(carry, k)
        g = torch.func.grad(lambda ws: (apply(ws, k) - v).pow(2).sum())(list(carry))
        return [w - e * gi for w, gi in zip(carry, g)], o
    init = [W0.expand(B, *W0.shape).contiguous(), W1.expand(B, *W1.shape).contiguous()]
    xs = (keys.movedim(2, 0).unsqueeze(3), vals.movedim(2, 0).unsqueeze(3), eta.movedim(2, 0)[..., None, None])
    final, outs = scan(step, init, xs)
    return outs.pow(2).sum() + final[0].sum()
torch.manual_seed(0)
W0 = (torch.randn(H, F, D) * 0.1).requires_grad_()
W1 = (torch.randn(H, D, F) * 0.1).requires_grad_()
keys = torch.randn(B, H, T, D, requires_grad=True); vals = torch.randn(B, H, T, D)
eta = torch.rand(B, H, T) * 0.01
params = [W0, W1, keys]
ref = torch.autograd.grad(run(W0, W1, keys, vals, eta), params)
t0 = time.time()
c = torch.compile(run, fullgraph=True, backend=sys.argv[2] if len(sys.argv) > 2 else "inductor")
got = torch.autograd.grad(c(W0, W1, keys, vals, eta), params)
print("T", T, "compile+run %.1f" % (time.time() - t0))
for a, b in zip(ref, got): print("grad rel diff", ((a-b).abs().max() / a.abs().max()).item())
t0 = time.time(); torch.autograd.grad(c(W0, W1, keys, vals, eta), params); print("step s", time.time() - t0)
