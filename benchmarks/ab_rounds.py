"""Alternating A/B rounds of two training steps in one process, for claims of "A is faster than
B" on a VM whose speed drifts by 10% and more within minutes: the two step in turn, the order
flipped every round, so that a drift weighs on both alike. Used by the A/B scripts under
benchmarks/results/, which swap the code under test by a `select(name)` of their own; this
module also has what they share around the rounds: the eager check that the variants compute
the same numbers, and each variant's compiled Hope step."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable


def alternating_rounds(steps: dict[str, Callable[[], object]], select: Callable[[str], None],
                       rounds: int = 8) -> dict[str, list[float]]:
    """Seconds of each step, round by round, the order flipped every round (`nestc bench`'s own
    rounds). `select(name)` runs before each of that variant's steps (the scripts swap the
    function under test there)."""
    from nestc.runtime.bench import alternating_rounds as rounds_of

    return rounds_of(steps, rounds, select=select)


def print_machine() -> None:
    """One line naming the CPU, torch and the commit measured (a results file's header)."""
    from nestc.runtime.bench import machine

    m = machine("cpu")
    print(f"machine: {m['cpu']} ({m.get('cpu_capability')}); torch {m['torch']}; commit {m['commit']}")


def print_rounds(times: dict[str, list[float]], slower: str, faster: str) -> None:
    """Each variant's median and every round (the first round, still warming, is left out of the
    medians), then the per-round ratio slower/faster and its median."""
    for name, ts in times.items():
        print(name, "median ms %.0f" % (1e3 * statistics.median(ts[1:])), "all", [round(1e3 * t) for t in ts])
    pairs = [a / b for a, b in zip(times[slower][1:], times[faster][1:])]
    print(f"{slower}/{faster} per round:", [round(p, 3) for p in pairs], "median", round(statistics.median(pairs), 3))


def gradient_gap(g1: list, g2: list) -> float:
    """The largest difference between two variants' gradients, each relative to that gradient's
    largest entry (the second variant's)."""
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g1, g2))


def same_numbers(names: Iterable[str], select: Callable[[str], None], spec: str = "hope",
                 overrides: dict | None = None) -> None:
    """Print the loss and the largest gradient difference of two variants: one eager step each,
    on the same weights and batch (one layer by default). Gradients, not trained weights: an
    optimizer step would hide them (Adam divides round-off in near-zero gradients by their size)."""
    import torch

    import nestc
    from nestc.runtime.train import make_loss_fns, signals

    overrides = {"n_layers": "1"} if overrides is None else overrides
    runs = []
    for name in names:
        select(name)
        torch.manual_seed(0)
        model = nestc.compile(spec, overrides).model(vocab=256)
        fns = make_loss_fns(model)
        x, y = torch.randint(0, 256, (2, 128)), torch.randint(0, 256, (2, 128))
        loss = fns.main(x, y, signals(model, fns, x, y))
        loss.backward()
        runs.append((float(loss.detach()), [p.grad for p in model.parameters() if p.grad is not None]))
    (l1, g1), (l2, g2) = runs
    print("eager, 1 layer: losses", l1, l2, "largest gradient difference relative to that gradient's largest entry",
          f"{gradient_gap(g1, g2):.1e}", flush=True)


def compiled_steps(names: Iterable[str], select: Callable[[str], None], loops: str,
                   spec: str = "hope", options: dict[str, dict] | None = None) -> dict[str, Callable[[], object]]:
    """Each variant's compiled training step (its own model and graphs, `nestc bench`'s step at
    batch 4 x 128, with `options[name]`'s extra `build_step` keywords, which may set the
    variant's own `loops`), compiled by a first step whose time and loss are printed."""
    from nestc.runtime.bench import build_step

    steps = {}
    for name in names:
        select(name)
        keywords = {"loops": loops, **(options or {}).get(name, {})}
        step, _ = build_step(spec, {}, 4, 128, compile=True, **keywords)
        t0 = time.perf_counter()
        loss = step()
        print(name, "first step", round(time.perf_counter() - t0, 1), "s, loss", round(loss, 6), flush=True)
        steps[name] = step
    return steps


def titans_layer_step(compile: bool, prepare: Callable | None = None, batch: int = 4, seq: int = 512,
                      overrides: dict | None = None):
    """anchor_rows.py's Titans LMM layer (benchmarks/specs/titans_layer.nest at B 4, T 512,
    d 256, 4 heads, chunk 64, unless `batch`, `seq` and spec `overrides` say otherwise; seeded
    weights and input) and its step: a fresh state, forward, out.sum().backward(); the step
    returns the output. `prepare(layer)` may alter the layer first. Returns (layer, step)."""
    from pathlib import Path

    import torch

    import nestc
    from nestc.runtime.context import Ctx

    torch.manual_seed(0)
    spec = Path(__file__).resolve().parent / "specs" / "titans_layer.nest"
    overrides = {"d_model": "256", "heads": "4", "chunk": "64", **(overrides or {})}
    layer = nestc.compile(spec, overrides).model().layers[0]
    if prepare is not None:
        prepare(layer)
    x = torch.randn(batch, seq, int(overrides["d_model"]), generator=torch.Generator().manual_seed(1))

    def forward(x):
        return layer(x, layer.initial_state(x.shape[0]), Ctx())[0]

    fn = torch.compile(forward, fullgraph=True, dynamic=False) if compile else forward

    def step():
        layer.zero_grad(set_to_none=True)
        out = fn(x)
        out.sum().backward()
        return out

    return layer, step


def titans_layer_rounds(names: Iterable[str], select: Callable[[str], None],
                        prepare: Callable[[str], Callable | None] = lambda name: None,
                        rounds: int = 16) -> dict[str, list[float]]:
    """The A/B of two variants of the Titans layer above: one eager step of each on the same
    weights and input, whose largest output and gradient differences are printed; then each
    compiled (its own layer and graphs, first-step time printed) and `alternating_rounds`.
    `select(name)` swaps the code under test; `prepare(name)` gives a layer change, or None."""
    runs = []
    for name in names:
        select(name)
        layer, step = titans_layer_step(False, prepare(name))
        runs.append((step().detach(), [p.grad for p in layer.parameters()]))
    (o1, g1), (o2, g2) = runs
    print("eager: largest output difference", f"{float((o1 - o2).abs().max()):.1e}",
          "largest gradient difference relative to that gradient's largest entry",
          f"{gradient_gap(g1, g2):.1e}", flush=True)
    steps = {}
    for name in names:
        select(name)
        _, steps[name] = titans_layer_step(True, prepare(name))
        t0 = time.perf_counter()
        steps[name]()
        print(name, "first step", round(time.perf_counter() - t0, 1), "s", flush=True)
    return alternating_rounds(steps, select, rounds)
