"""Random memory and optimizer specs, to find what the hand-written tests miss: any spec the
compiler accepts must build, run and train; compiled, it must give eager's results.

    python benchmarks/fuzz_specs.py --seed 1000 --count 300                 # eager, fast
    python benchmarks/fuzz_specs.py --seed 5000 --count 12 --loops unroll,scan  # and compiled
    python benchmarks/fuzz_specs.py --family optimizer --seed 1000 --count 80 --compiled

Each spec is one block with one or two memory boxes (the second reads the first's output, or
the two read side by side and `combine`d),
their properties drawn from the pools below: states, initial states, keys, values (self-
generated ones and `lss` included), learning rates, objectives, retentions, optimizers, update
rules, chunk sizes in tokens or steps, and options (`grad stop`, `grad_state call_start`,
`query`, `reset`, ...); sometimes an attention box before them (windows, persistent tokens,
rope, segments with the memory's tokens as a prefix), and sometimes the block inside another
one. Per spec:

* `nestc.compile`: a NestError (a one-screen diagnostic) is a refusal, counted by message;
  any other exception is an ERR row (an internal error reaches users as one);
* eager, float64, batch 2 × 13 tokens: the two-pass loss and every gradient. A failure is an
  ERR row; a non-finite loss is counted apart (random rates and unnormalised keys can diverge:
  `dgd(step=neurips)` with |k|² = 4 multiplies the state by -3 at each token);
* with --loops, each loop mode compiled: loss and every gradient within 1e-9 of eager's
  (relative to each gradient's largest entry) or a BAD row; with --train as well, the
  parameters after 4 training steps (SGD, the trainer's level schedule), within 1e-9.

`--family optimizer`: optimizer specs instead (one to three `like(W)` boxes over the gradients,
with update rules or objectives (some with `steps N`), every 1 to 3 steps, and a weights box
reading them), each run
for 7 steps on a small float64 MLP: eager, then with --compiled its compiled step over all
parameters and, for an element-wise optimizer, per parameter; parameters within 1e-9 of eager's
(1e-5 where Newton-Schulz runs in float32) or a BAD row.

Exit status 1 when any row is ERR or BAD. Found with earlier versions of this script (then a
/tmp scratch file; each fixed, each with a test): internal errors for `retention none()`, for
self-generated values of expressions and for a matrix memory with self-generated values every
token; `steps N` accepted and ignored; sibling memories with learned generators stacked onto one
member's parameters; compiled scans with wrong gradients (a call_start memory beside a proximal,
stop-gradient one) and Adam on chunks that inductor could not compile; a memory with `lss`
values read at two places (the first step failed); in optimizer boxes,
eleven functions and operators the functions table lists for them that `nestc compile` refused.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # small_models

import nestc  # noqa: E402
from nestc.diagnostics import NestError  # noqa: E402
from nestc.runtime.bench import machine  # noqa: E402
from nestc.runtime.ops import LOOP_MODES  # noqa: E402
from nestc.runtime.train import make_loss_fns, make_optimizer, signals, training_loss  # noqa: E402
from small_models import loss_and_grads  # noqa: E402

STATES = ["matrix(d_head, d_head)", "matrix(d_head, 4)", "mlp(d_head, depth=2, expansion=2)",
          "mlp(d_head, depth=1, residual=false)", "mlp(d_head, depth=3, hidden=6, act=relu, residual=false)",
          "mlp(d_head, depth=2, expansion=1, out=4, residual=false)"]
INITS = ["zeros()", "meta", "random(std=0.2)", "identity()"]
KEYS = ["l2norm(linear(in, d_model), groups=heads)", "in", "silu(conv(linear(in, d_model), 3))",
        "l2norm(g, groups=heads)"]
VALUES = ["lss", "linear(in, d_model)", "in", "M(in)", "stop_grad(M(linear(in, d_model)))",
          "tanh(linear(in, d_model))", "0.5 * M(g) + linear(in, d_model)", "g"]
RATES = ["0.1", "sigmoid(linear(in, heads))", "0.2 * softplus(linear(in, heads))", "1.0"]
OBJECTIVES = ["l2(M(k), v)", "-dot(M(k), v)", "dot(M(k), v)", "lp(M(k), v, 1.5)", "huber(M(k), v, 0.5)",
              "sum(abs(M(k) - v) ** 3)", "l2(M(k), v) + 0.1 * sum(M(k) * M(k))"]
RETENTIONS = [None, "gate(sigmoid(linear(in, heads) + 2.0))", "decay(sigmoid(linear(in, heads) - 3.0))",
              "weight_decay(0.1)", "proximal(0.2)", "0.9 * M", "gate(sigmoid(linear(in, heads)), grad=retained)",
              "none()"]
OPTIMIZERS = [None, "gd()", "momentum(0.6)", "momentum(sigmoid(linear(in, heads)))", "dgd()",
              "dgd(step=neurips)", "adam(0.9, 0.99, 1e-6)"]
UPDATES = ["M + lr * outer(v - M(k), k)", "0.9 * M + 0.1 * outer(v, k)"]  # square matrices only
EVERY = ["1 tokens", "1 tokens", "2 tokens", "3 tokens", "4 tokens", "1 steps", "2 steps"]
OPTIONS = [None, "grad stop", "reset 6", "query l2norm(linear(in, d_model), groups=heads)",
           "grad_state call_start", "read before"]
READS = ["mem(h)", "mem(h)", "read_before(mem, h)", "read_after(mem, h)"]
COMBINE = ["", ", mode=sum", ", mode=mean"]


def box(rng: random.Random, name: str) -> str:
    state = rng.choice(STATES)
    props = [("heads", "heads"), ("state", state), ("init", rng.choice(INITS)), ("keys", rng.choice(KEYS)),
             ("values", rng.choice(VALUES)), ("lr", rng.choice(RATES)), ("every", rng.choice(EVERY))]
    if state == "matrix(d_head, d_head)" and rng.random() < 0.25:
        props.append(("update", rng.choice(UPDATES)))
    else:
        props.append(("objective", rng.choice(OBJECTIVES)))
        props += [("optimizer", o) for o in [rng.choice(OPTIMIZERS)] if o]
    props += [("retention", r) for r in [rng.choice(RETENTIONS)] if r]
    if dict(props)["every"].endswith("steps"):
        # a level that learns across sequences: the form the compiler has for it (CMS's, one
        # backprop step on the loss gradient at its output)
        props = [(k, v) for k, v in props if k not in ("values", "objective", "optimizer", "retention", "update")]
        props += [("values", "lss"), ("objective", "dot(M(k), v)")]
        option = None
    else:
        option = rng.choice(OPTIONS)
    body = "".join(f"        {k} {v}\n" for k, v in props) + (f"        {option}\n" if option else "")
    return f"    box {name} : memory {{\n{body}    }}\n"


ATTENTION = [None, None, "", "window 4", "persistent 2", "rope true", "segment 4", "segment 4\n        persistent 1",
             "window 3\n        rope true"]


def random_spec(seed: int) -> str:
    rng = random.Random(seed)
    read = rng.choice(READS)
    two = rng.random() < 0.4
    attention = rng.choice(ATTENTION)
    nested = rng.random() < 0.3
    text = ('spec fuzz "a random spec"\nparam d_model = 8\nparam heads = 2\nparam d_head = d_model / heads\n'
            "block layer {\n" + box(rng, "mem"))
    lines = "    let h = rmsnorm(x)\n    let g = linear(h, d_model)\n"
    if attention is not None:  # softmax attention before the memories, maybe with their tokens as a prefix
        text += f"    box attn : attention {{\n        heads heads\n        {attention}\n    }}\n"
        prefix = ", prefix=mem(h)" if "segment" in attention and rng.random() < 0.5 else ""
        lines += f"    x = x + linear(attn(h{prefix}), d_model)\n"
    if two and rng.random() < 0.3:  # side by side, their reads combined (CMS's independent form)
        text += box(rng, "mem2").replace("M(g)", "M(in)")
        lines += f"    x = x + linear(combine({read}, mem2(h){rng.choice(COMBINE)}), d_model)\n"
    elif two:
        text += box(rng, "mem2").replace("M(g)", "M(in)")
        lines += (f"    let a = {read}\n"
                  "    x = x + linear(a, d_model) + linear(mem2(h + linear(a, d_model)), d_model)\n")
    else:
        lines += f"    x = x + linear({read}, d_model)\n"
    if nested:  # the block inside another one
        return (text + lines + "}\nblock wrapper {\n    x = layer(x)\n    x = x + swiglu(rmsnorm(x), 16)\n}\n"
                "model {\n    dim d_model\n    repeat 2 { wrapper }\n}\n")
    return text + lines + "}\nmodel {\n    dim d_model\n    repeat 2 { layer }\n}\n"


G_CONTEXTS = ["grad(W)", "grad(W) + 0.01 * W", "grad(W) * grad(W)", "sign(grad(W))", "clamp(grad(W), -0.5, 0.5)"]
G_RATES = ["0.1", "1 - 0.9", "0.5", "1.0"]
G_OBJECTIVES = ["0.5 * l2(M, g)", "l2(M, g)", "-dot(M, g)", "huber(M, g, 0.1)", "0.5 * l2(M, g * g)",
                "lp(M, g, 1.5)"]
G_OPTIMIZERS = [None, "gd()"]
G_UPDATES = ["0.9 * M + g", "0.9 * M + 0.1 * g", "M + g * g", "max(0.99 * M, abs(g))", "lerp(M, g, 0.1)",
             "0.5 * M + 0.5 * sign(g)", "where(g > 0, M + g, 0.9 * M)", "0.9 * M + silu(g) - gelu(g)",
             "0.8 * M + relu(g) + softplus(-abs(g))", "where(step > 2, 0.9 * M + g, g)", "M + (g < 0) * g",
             "0.9 * M + g % 0.01", "0.5 * M + huber(M, g, 0.01)"]
G_EVERY = ["1 step", "1 step", "2 steps", "3 steps"]
G_RETENTIONS = [None, "0.9 * M", "(1 - 0.01) * M"]
W_UPDATES = ["W - lr * {a}", "W - lr * {a} / (sqrt(abs({b})) + 1e-8)", "W - lr * sign({a})",
             "W - lr * ({a} + 0.5 * {b})", "W - lr / (1 - 0.9 ** step) * {a}",
             'W - lr * newton_schulz({a}, steps=3, dtype="float32")', "W - lr * tanh({a}) * {b}"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """b's largest difference from a, relative to a's largest entry."""
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()


def small_mlp() -> torch.nn.Module:
    """The float64 regression model optimizer specs train."""
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def optimizer_box(rng: random.Random, name: str, earlier: str | None) -> str:
    context = rng.choice(G_CONTEXTS + ([earlier] if earlier else []))
    props = [("state", "like(W)"), ("context", f"g = {context}")]
    if rng.random() < 0.5:
        props.append(("update", rng.choice(G_UPDATES)))
    else:
        props += [("lr", rng.choice(G_RATES)), ("objective", rng.choice(G_OBJECTIVES))]
        props += [("optimizer", o) for o in [rng.choice(G_OPTIMIZERS)] if o]
        props += [("retention", r) for r in [rng.choice(G_RETENTIONS)] if r]
        props += [("steps", n) for n in [rng.choice([None, None, None, "2", "3"])] if n]
    props.append(("every", rng.choice(G_EVERY)))
    return f"box {name} : memory {{\n" + "".join(f"    {k} {v}\n" for k, v in props) + "}\n"


def random_optimizer_spec(seed: int) -> str:
    rng = random.Random(seed)
    names = ["A", "B", "C"][:rng.choice([1, 2, 2, 3])]
    text = 'spec fuzzopt "a random optimizer"\nparam lr = 0.01\n'
    for i, name in enumerate(names):
        text += optimizer_box(rng, name, names[i - 1] if i and rng.random() < 0.4 else None)
    update = rng.choice(W_UPDATES).format(a=rng.choice(names), b=rng.choice(names))
    text += f"box W : weights {{\n    update {update}\n"
    if rng.random() < 0.3:
        text += "    retention (1 - lr * 0.01) * M\n"
    if "newton_schulz" in update or rng.random() < 0.2:
        text += "    params matrices\n"
    return text + "}\n"


def optimizer_steps(cls, group: str, start: dict, mode: str, steps: int = 7) -> list[torch.Tensor]:
    """The parameters of a small float64 MLP after `steps` steps of the optimizer (`mode`: eager,
    compiled, per_tensor) on a regression batch drawn from a fixed seed."""
    torch.manual_seed(0)
    model = small_mlp()
    model.load_state_dict(start)
    opt = cls([p for p in model.parameters() if group != "matrices" or p.ndim == 2])
    if mode != "eager":
        torch._dynamo.reset()
        opt.compile_steps(per_tensor=mode == "per_tensor")
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
        y = torch.randn(16, 3, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def run_optimizer_spec(compiled, text: str, seed: int, modes: list[str], show: bool) -> tuple[str, int]:
    """('ran' | 'diverged', how many ERR or BAD rows) for one optimizer spec."""
    (_, group, cls, _), = compiled.module.OPTIMIZERS
    torch.manual_seed(0)
    start = small_mlp().state_dict()
    try:
        eager = optimizer_steps(cls, group, start, "eager")
    except Exception as e:  # noqa: BLE001 - an internal error is what this looks for
        print(f"ERR  seed {seed}: eager steps: {type(e).__name__}: {str(e)[:200]}", flush=True)
        print(text * show, end="")
        return "ran", 1
    if not all(torch.isfinite(p).all() for p in eager):
        return "diverged", 0
    failed = 0
    for mode in modes:
        if mode == "per_tensor" and not cls.ELEMENTWISE:
            continue
        start_time = time.time()
        try:
            got = optimizer_steps(cls, group, start, mode)
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"ERR  seed {seed} {mode}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            print(text * show, end="")
            continue
        worst = max(relative_error(a, b) for a, b in zip(eager, got))
        ok = worst <= (1e-5 if "newton_schulz" in text else 1e-9)
        failed += not ok
        print(f"{'OK ' if ok else 'BAD'}  seed {seed} {mode:10} parameters {worst:.1e} ({time.time() - start_time:.0f} s; "
              f"{'element-wise' if cls.ELEMENTWISE else 'whole matrices'})", flush=True)
        print(text * (show and not ok), end="")
    return "ran", failed


def trained(compiled, start: dict, loops: str | None, steps: int = 4) -> list[torch.Tensor]:
    """The parameters after `steps` training steps from `start` (SGD, lr 0.05, the trainer's level
    schedule: a memory that learns every C steps steps every C steps), eager (loops None) or
    compiled in that loop mode."""
    torch.manual_seed(0)
    model = compiled.model(30).double()
    model.load_state_dict(start)
    opt = make_optimizer(compiled, model, override="sgd", settings={"lr": 0.05})
    if loops is not None:
        torch._dynamo.reset()
        opt.compile_steps()
    fns = make_loss_fns(model, compile=loops is not None, loops=loops or "unroll")
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randint(0, 30, (2, 13), generator=gen), torch.randint(0, 30, (2, 13), generator=gen)
        opt.zero_grad()
        training_loss(model, fns, x, y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def check_training(compiled, model, seed: int, modes: list[str]) -> int:
    """Rows for 4 training steps compiled in each mode against eager; how many are ERR or BAD."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        eager = trained(compiled, start, None)
    except Exception as e:  # noqa: BLE001 - an internal error is what this looks for
        print(f"ERR  seed {seed}: eager training: {type(e).__name__}: {str(e)[:200]}", flush=True)
        return 1
    failed = 0
    for mode in modes:
        try:
            got = trained(compiled, start, mode)
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"ERR  seed {seed} {mode} training: {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        worst = max(relative_error(a, b) for a, b in zip(eager, got))
        ok = worst <= 1e-9
        failed += not ok
        print(f"{'OK ' if ok else 'BAD'}  seed {seed} {mode:6} 4 training steps: parameters {worst:.1e}", flush=True)
    return failed


def worst_gradient(model, grads_a, grads_b) -> tuple[float, str]:
    worst, where = 0.0, "-"
    for (name, _), a, b in zip(model.named_parameters(), grads_a, grads_b):
        if a is None or b is None:  # unused on one side: then the other's must be zero
            if not all(g is None or g.abs().max() == 0 for g in (a, b)):
                return float("inf"), f"{name} (a gradient on one side only)"
            continue
        err = relative_error(a, b)
        if err > worst:
            worst, where = err, name
    return worst, where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="the first spec's seed (then seed + 1, ...)")
    ap.add_argument("--count", type=int, default=100, help="how many specs to run (refusals not counted)")
    ap.add_argument("--family", default="memory", choices=["memory", "optimizer"], help="which specs to draw")
    ap.add_argument("--loops", default="", help=f"memory specs: comma-separated loop modes to compile in ({', '.join(LOOP_MODES)})")
    ap.add_argument("--compiled", action="store_true", help="optimizer specs: also the compiled steps (all "
                    "parameters at once, and per parameter)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train", action="store_true", help="memory specs: also 4 training steps (levels that learn "
                    "every C steps update in them), eager, and with --loops compiled against eager")
    ap.add_argument("--show", action="store_true", help="print each ERR or BAD row's spec")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    modes = [m for m in a.loops.split(",") if m]
    for m in modes:
        if m not in LOOP_MODES:
            ap.error(f"--loops: {m!r} is not one of {', '.join(LOOP_MODES)}")
    if a.family == "optimizer" and modes:
        ap.error("--loops compiles memory specs; for optimizer specs, use --compiled")
    if a.family == "memory" and a.compiled:
        ap.error("--compiled is for --family optimizer; memory specs compile with --loops")
    if a.family == "optimizer":
        modes = ["compiled", "per_tensor"] if a.compiled else []
    info = machine()
    print(f"fuzz_specs: {a.family} specs, seeds from {a.seed}, {a.count} run, compiled: "
          f"{', '.join(modes) or '(eager only)'}; {info['cpu']}, torch {info['torch']}, commit {info['commit']}",
          flush=True)
    refusals: collections.Counter = collections.Counter()
    ran = diverged = failed = 0
    seed = a.seed - 1
    while ran < a.count:
        seed += 1
        text = (random_optimizer_spec if a.family == "optimizer" else random_spec)(seed)
        try:
            compiled = nestc.compile("fuzz.nest", text=text)
        except NestError as e:
            refusals[re.sub(r"`[^`]*`", "`…`", str(e).splitlines()[0].split(": error: ")[-1])[:100]] += 1
            continue
        except Exception as e:  # noqa: BLE001 - an internal error is what this looks for
            failed += 1
            print(f"ERR  seed {seed}: compile: {type(e).__name__}: {str(e)[:200]}", flush=True)
            print(text * a.show, end="")
            continue
        ran += 1
        if a.family == "optimizer":
            outcome, bad = run_optimizer_spec(compiled, text, seed, modes, a.show)
            diverged += outcome == "diverged"
            failed += bad
            continue
        torch.manual_seed(0)
        model = compiled.model(30).double()
        x, y = torch.randint(0, 30, (2, 13)), torch.randint(0, 30, (2, 13))
        try:
            loss, grads = loss_and_grads(model, x, y)
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"ERR  seed {seed}: eager step: {type(e).__name__}: {str(e)[:200]}", flush=True)
            print(text * a.show, end="")
            continue
        if not torch.isfinite(loss):
            diverged += 1
            print(f"inf  seed {seed}: a non-finite loss (not a failure: random rates diverge)", flush=True)
            continue
        if a.train:
            failed += check_training(compiled, model, seed, modes)
        rules = " ".join(r for r in compiled.module.__doc__.split("Lowering:")[1].split() if "_" in r and ":" not in r)
        for mode in modes:
            start = time.time()
            try:
                torch._dynamo.reset()
                fns = make_loss_fns(model, compile=True, loops=mode)
                loss_c = fns.main(x, y, signals(model, fns, x, y))
                grads_c = torch.autograd.grad(loss_c, list(model.parameters()), allow_unused=True)
            except Exception as e:  # noqa: BLE001
                failed += 1
                print(f"ERR  seed {seed} {mode}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                print(text * a.show, end="")
                continue
            dl = abs(loss - loss_c).item() / abs(loss).item()
            dg, where = worst_gradient(model, grads, grads_c)
            ok = dl <= 1e-9 and dg <= 1e-9
            failed += not ok
            print(f"{'OK ' if ok else 'BAD'}  seed {seed} {mode:6} loss {dl:.1e} grads {dg:.1e} at {where} "
                  f"({time.time() - start:.0f} s; {rules})", flush=True)
            print(text * (a.show and not ok), end="")
    print(f"{ran} specs ran ({diverged} with a non-finite result), {sum(refusals.values())} refused, "
          f"{failed} ERR or BAD rows")
    for message, n in refusals.most_common(8):
        print(f"  refused {n:3}×  {message}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
