"""A/B of one matrix product for a box's linear maps of one input (`L.linears`, and SwiGLU's and
attention's own projections) against one product per map, in one process.

    python benchmarks/results/amd_epyc/sibling_linears/ab_sibling_linears.py [titans|layer|...]

"separate" swaps `nestc.runtime.layers.linears` (which the generated code, SwiGLU and attention
call) for a loop calling each layer on its own: the products as the repo computed them before
this change. "stacked" is the repo's `linears`: the layers' weights concatenated, one product,
split. Each variant gets a model and graphs of its own (`nestc bench`'s training step at the
spec's batch and length, the optimizer step included; or, with `layer`, the anchor Titans layer
of ab_rounds.titans_layer_step); first an eager step of each on the same weights and batch
prints how far apart their losses and gradients are, then eager and compiled steps alternate,
the order flipped every round.
"""
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import alternating_rounds, gradient_gap, print_machine, print_rounds, titans_layer_rounds
import nestc.runtime.attention as attention
import nestc.runtime.layers as layers
from nestc.runtime.inductor_setup import prepare_inductor

torch.set_num_threads(2)
prepare_inductor()


def separate(x, *maps):  # one product per linear map, as before the change
    return tuple(m(x) for m in maps)


variants = {"separate": separate, "stacked": layers.linears}


def select(name):
    layers.linears = attention.linears = variants[name]


def spec_rounds(spec: str, rounds: int) -> None:
    import nestc
    from nestc.resolve import resolve_ref
    from nestc.runtime.bench import build_step
    from nestc.runtime.train import make_loss_fns, signals

    train = resolve_ref(spec, {}).train
    batch, seq = int(train.get("batch", 4)), int(train.get("seq_len", 128))

    grads = []
    for name in variants:
        select(name)
        torch.manual_seed(0)
        model = nestc.compile(spec, {}).model(vocab=256)
        fns = make_loss_fns(model)
        x, y = torch.randint(0, 256, (2, 128)), torch.randint(0, 256, (2, 128))
        loss = fns.main(x, y, signals(model, fns, x, y))
        loss.backward()
        grads.append((float(loss), [p.grad for p in model.parameters() if p.grad is not None]))
    (l1, g1), (l2, g2) = grads
    print(f"eager, one step: losses {l1:.7f} / {l2:.7f}; largest gradient difference relative to that "
          f"gradient's largest entry {gradient_gap(g1, g2):.1e}", flush=True)
    for mode in ("eager", "compiled"):
        steps = {}
        for name in variants:
            select(name)
            step, _ = build_step(spec, {}, batch, seq, compile=mode == "compiled")
            t0 = time.perf_counter()
            step()
            step()
            print(f"{mode} {name}: first two steps {time.perf_counter() - t0:.1f} s", flush=True)
            steps[name] = step
        print(f"\n{spec}, {mode} training step, batch {batch} x {seq}")
        print_rounds(alternating_rounds(steps, select, rounds), "separate", "stacked")


if __name__ == "__main__":
    print_machine()
    what = sys.argv[1] if len(sys.argv) > 1 else "titans"
    if what == "layer":
        print("\nthe anchor Titans layer (B 4, T 512, d 256, 4 heads, chunk 64), compiled")
        print_rounds(titans_layer_rounds(variants, select), "separate", "stacked")
    else:
        spec_rounds(what, int(sys.argv[2]) if len(sys.argv) > 2 else 8)
