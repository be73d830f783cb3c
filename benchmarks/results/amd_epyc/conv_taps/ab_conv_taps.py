"""A/B of the short convolution's weight reads on the compiled Titans LMM layer, in one process.

    python benchmarks/results/amd_epyc/conv_taps/ab_conv_taps.py

"columns" is the short convolutions' weight [C, W] as it was stored at 9d02807, row-major, so that
tap j (``weight[:, j]``) is a column of stride W. Inductor inlines those reads into the fused
conv + SiLU loops and, with four strided loads among a dozen operations, leaves the loops scalar.
"taps" is the repo's: the same [C, W] parameter stored tap-major (runtime/layers.py ShortConv),
each tap's weights a contiguous row.
The layer is anchor_rows.py's (benchmarks/specs/titans_layer.nest at B 4, T 512, d 256, 4 heads,
chunk 64; a fresh state, forward, out.sum().backward()). Each variant gets a layer and graphs of
its own; then the two step in turn, the order flipped every round (benchmarks/ab_rounds.py).
Before timing, one eager step of each on the same weights checks that they compute the same
output and gradients.
"""
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import alternating_rounds, print_rounds
import nestc
from nestc.runtime.context import Ctx
from nestc.runtime.inductor_setup import prepare_inductor
from nestc.runtime.layers import ShortConv

torch.set_num_threads(2)
prepare_inductor()


variants = ("columns", "taps")


def select(name):  # each variant is a layer of its own; nothing to swap
    pass


def layer_step(name, compile):
    torch.manual_seed(0)
    overrides = {"d_model": "256", "heads": "4", "chunk": "64"}
    layer = nestc.compile(HERE.parents[2] / "specs" / "titans_layer.nest", overrides).model().layers[0]
    if name == "columns":
        for conv in (m for m in layer.modules() if isinstance(m, ShortConv)):
            conv.weight = torch.nn.Parameter(conv.weight.detach().contiguous())
    x = torch.randn(4, 512, 256, generator=torch.Generator().manual_seed(1))

    def forward(x):
        return layer(x, layer.initial_state(x.shape[0]), Ctx())[0]

    fn = torch.compile(forward, fullgraph=True, dynamic=False) if compile else forward

    def step():
        layer.zero_grad(set_to_none=True)
        out = fn(x)
        out.sum().backward()
        return out

    return layer, step


runs = []
for name in variants:
    layer, step = layer_step(name, compile=False)
    runs.append((step().detach(), [p.grad for p in layer.parameters()]))
(o1, g1), (o2, g2) = runs
print("eager: largest output difference", f"{float((o1 - o2).abs().max()):.1e}",
      "largest gradient difference relative to that gradient's largest entry",
      f"{max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g1, g2)):.1e}", flush=True)
steps = {}
for name in variants:
    _, steps[name] = layer_step(name, compile=True)
    t0 = time.perf_counter()
    steps[name]()
    print(name, "first step", round(time.perf_counter() - t0, 1), "s", flush=True)
print_rounds(alternating_rounds(steps, select, rounds=16), "columns", "taps")
