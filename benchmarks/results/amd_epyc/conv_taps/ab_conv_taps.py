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
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import print_rounds, titans_layer_rounds
from nestc.runtime.inductor_setup import prepare_inductor
from nestc.runtime.layers import ShortConv

torch.set_num_threads(2)
prepare_inductor()


def row_major(layer):  # the layout before the change
    for conv in (m for m in layer.modules() if isinstance(m, ShortConv)):
        conv.weight = torch.nn.Parameter(conv.weight.detach().contiguous())


times = titans_layer_rounds(["columns", "taps"], select=lambda name: None,
                            prepare=lambda name: row_major if name == "columns" else None)
print_rounds(times, "columns", "taps")
