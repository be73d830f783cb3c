"""Probe (not a test): a memory read twice, no gate, constant momentum, compiled with each chunk-
loop mode against eager: the loss and each parameter's largest gradient difference.

    python benchmarks/results/amd_epyc/region_two_reads/probe_region_grads.py region [backend]

See README.md beside this file: at e99c7e8, `region` fails to compile this spec (an
InductorError); with the cumsums of constants written as products it compiles but gives wrong
gradients under inductor (right under aot_eager), unless inductor's buffer reuse is off.
"""

import sys

import torch

import nestc
from nestc.runtime.inductor_setup import prepare_inductor
from nestc.runtime.ops import set_loop_mode
from nestc.runtime.train import forward_loss

SPEC = """spec two_reads "an MLP memory read twice, no gate, constant momentum"
param d_model = 16
param heads   = 2
block layer {
    box mem : memory {
        heads     heads
        state     mlp(8, depth=2, expansion=2)
        keys      l2norm(linear(in, d_model), groups=heads)
        values    linear(in, d_model)
        lr        0.5 * sigmoid(linear(in, heads))
        objective l2(M(k), v)
        optimizer momentum(0.9)
        every     4 tokens
    }
    let h = rmsnorm(x)
    let a = read_before(mem, h)
    x = x + linear(a + read_before(mem, rmsnorm(a)), d_model)
}
model {
    dim d_model
    repeat 1 { layer }
}
"""


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "region"
    backend = sys.argv[2] if len(sys.argv) > 2 else "inductor"
    prepare_inductor()
    set_loop_mode(mode)
    c = nestc.compile("two_reads.nest", text=SPEC)
    torch.manual_seed(0)
    model = c.model(50)
    x, y = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))
    eager_loss = forward_loss(model, x, y, {})
    eager = torch.autograd.grad(eager_loss, list(model.parameters()), allow_unused=True)
    fn = torch.compile(lambda a, b: forward_loss(model, a, b, {}), fullgraph=mode != "call", backend=backend)
    try:
        loss = fn(x, y)
        compiled = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    except Exception as err:  # noqa: BLE001 - a probe reports what failed
        print(f"{mode} / {backend}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
        return
    print(f"{mode} / {backend}: loss eager {eager_loss.item():.7f} compiled {loss.item():.7f}")
    print(f"  {'parameter':40s} {'max |eager grad|':>16s} {'max |difference|':>16s}")
    for (name, _), a, b in zip(model.named_parameters(), eager, compiled):
        if a is not None:
            print(f"  {name:40s} {a.abs().max().item():16.3e} {(a - b).abs().max().item():16.3e}")


if __name__ == "__main__":
    main()
