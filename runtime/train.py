"""One training step of a compiled spec: optimizers for its parameter groups, the (two-pass) loss,
clipping, the optimizer step, and torch.compile of the parts that run every step.

The loss. Boxes whose values are the local surprise signal (`values lss`: CMS levels learning
from the model's loss) need the gradient of the loss with respect to their outputs before they
can update. A step therefore runs two passes when the model has such boxes: a first pass in
which those boxes read their initial state and a zero "probe" is added to each of their outputs
(the gradient of the loss with respect to the probe is the signal), then the real pass, in which
they learn from those signals chunk by chunk; the second pass's loss trains the outer level.
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .context import Ctx
from .devices import autocast
from .model import sequence_loss


# ---------------------------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------------------------


def partition(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameter groups: `matrices` are 2-D weights other than the embedding/head; the rest is
    everything else (norm gains, biases, initial memory states of other shapes, the embedding)."""
    embed = getattr(model, "embed", None)
    skip = {id(embed.weight)} if embed is not None else set()
    head = getattr(model, "head", None)
    if head is not None:
        skip.add(id(head.weight))
    matrices, rest = [], []
    for p in model.parameters():
        if not p.requires_grad or getattr(p, "_nest_period", 1) > 1:
            continue
        (matrices if p.ndim == 2 and id(p) not in skip else rest).append(p)
    return {"all": matrices + rest, "matrices": matrices, "rest": rest}


def slow_params(model: nn.Module) -> dict[int, list[nn.Parameter]]:
    """Parameters of levels that learn every C steps (rule cms_steps), by period C."""
    out: dict[int, list[nn.Parameter]] = {}
    for p in model.parameters():
        period = getattr(p, "_nest_period", 1)
        if p.requires_grad and period > 1:
            out.setdefault(period, []).append(p)
    return out


class LevelOptimizer(torch.optim.Optimizer):
    """The optimizers of a model's levels behaving as one torch optimizer.

    Each entry is (optimizer, period): the per-step optimizers (period 1; e.g. Muon/M3 on the
    matrices and AdamW on the rest) step every step; a level that learns every C steps (NL Eq. 71)
    keeps accumulating gradients and steps -- and only then clears them -- every C steps."""

    def __init__(self, entries: list[tuple[torch.optim.Optimizer, int]],
                 boxes: dict[str, int] | None = None):
        self.entries = entries
        # "optimizer.box" -> period in steps, for the optimizer specs in use (what a metrics log
        # reports as updated): the train section's, or those of an --optimizer override
        self.boxes = dict(boxes or {})
        self.optimizers = [o for o, _ in entries]
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
        self.defaults = {}
        self.state = {}
        self.steps = 0

    def due(self, period: int) -> bool:
        return (self.steps + 1) % period == 0

    def compile_steps(self) -> "LevelOptimizer":
        """A compiled training step's optimizer steps: each element-wise optimizer of parameters
        on the CPU compiled per tensor (NestOptimizer.compile_steps), where torch's foreach
        operations run one operation at a time over each tensor (the Titans model's AdamW step:
        20.2 ms eager, 13.1 ms compiled; benchmarks/results/amd_epyc/optimizer_per_tensor/).
        Elsewhere the foreach steps stay as they are (on a GPU they are multi-tensor kernels
        already), as do Muon's and M3's (whole matrices), and so do the optimizers of levels
        that learn every C steps: their rare steps would gain little, and each would compile in
        the middle of training, at its level's first update, not in the first step."""
        for opt, period in self.entries:
            on_cpu = all(p.device.type == "cpu" for g in opt.param_groups for p in g["params"])
            if period == 1 and getattr(opt, "ELEMENTWISE", False) and on_cpu:
                opt.compile_steps(per_tensor=True)
        return self

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for opt, period in self.entries:
            if period == 1 or self.due(period):
                opt.step()
        self.steps += 1
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt, period in self.entries:
            if period == 1 or self.steps % period == 0:  # a slow level just stepped (or has not begun)
                opt.zero_grad(set_to_none=set_to_none)

    def levels_due(self) -> dict[int, bool]:
        return {period: self.due(period) for _, period in self.entries}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        # torch's load_state_dict replaces each optimizer's param-group dicts: point at the new
        # ones, or a schedule setting `lr` here would no longer reach the optimizers
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]


def make_optimizer(compiled, model: nn.Module, override: str | None = None,
                   settings: dict[str, Any] | None = None) -> LevelOptimizer:
    """The train section's optimizers (or `override`, an optimizer spec such as "m3") over the
    model's parameter groups. An optimizer for matrices only (Muon, M3) gets AdamW for the rest;
    levels that learn every C steps get an optimizer of their own, of the kind the rest uses."""
    import nestc

    entries = list(compiled.module.OPTIMIZERS)
    infos = list(compiled.program.optimizers)
    if override is not None:
        chosen = nestc.compile(override)
        entries = list(chosen.module.OPTIMIZERS)
        infos = list(chosen.program.optimizers)
    if [e[1] for e in entries] == ["matrices"]:  # biases, norms, embeddings must learn too
        rest = nestc.compile("adamw")
        entries += list(rest.module.OPTIMIZERS)
        entries[-1] = (entries[-1][0], "rest", entries[-1][2], entries[-1][3])
        infos += list(rest.program.optimizers)
    if not entries:  # bad input, not a bug: the spec has no train section's optimizer
        from nestc.diagnostics import NestError, Pos

        raise NestError.at(Pos(file=compiled.program.path or compiled.program.name),
                           f"spec {compiled.program.name} has no optimizer to train with",
                           hint="give it a train section with an optimizer (e.g. `train { optimizer "
                                "adamw(lr=1e-3) }`), or pass --optimizer adamw")
    groups = partition(model)
    built: list[tuple[torch.optim.Optimizer, int]] = []
    taken: set[int] = set()

    def settings_for(cls, defaults):
        return {k: v for k, v in {**defaults, **(settings or {})}.items() if k in cls.HYPERPARAMETERS}

    for _name, group, cls, defaults in entries:
        params = [p for p in groups["all" if group == "rest" else group] if id(p) not in taken]
        taken |= {id(p) for p in params}
        if params:
            built.append((cls(params, **settings_for(cls, defaults)), 1))
    _name, _group, cls, defaults = entries[-1]
    for period, params in sorted(slow_params(model).items()):
        built.append((cls(params, **settings_for(cls, defaults)), period))
    boxes = {f"{info.name}.{name}": b.freq.period for info in infos for name, b in info.boxes.items()}
    return LevelOptimizer(built, boxes)


# ---------------------------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------------------------


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then constant or cosine decay to 10% (step counts from 0)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine" and total > warmup:
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


# ---------------------------------------------------------------------------------------------
# the loss, with local surprise signals
# ---------------------------------------------------------------------------------------------


def forward_loss(model: nn.Module, tokens: Tensor, targets: Tensor, lss: dict[str, Tensor]) -> Tensor:
    """The real pass: boxes learn from `lss`; returns the batch-mean next-token loss."""
    logits, _ = model(tokens, ctx=Ctx(lss=lss))
    return sequence_loss(logits, targets) / tokens.shape[0]


def probe_loss(model: nn.Module, tokens: Tensor, targets: Tensor, probes: dict[str, Tensor],
               mask: Tensor | None = None) -> Tensor:
    """The first pass: lss boxes read their initial state plus a zero probe. Its loss is summed
    over sequences of per-sequence means, so each probe's gradient is its own sequence's signal.
    `mask` [T] (1 = counted) limits the loss to a prefix without changing the input's shape.
    Run it under `frozen(model)`: only the probes' gradients are wanted."""
    logits, _ = model(tokens, ctx=Ctx(probing=True, lss=probes))
    return sequence_loss(logits, targets, mask)


@contextmanager
def frozen(model: nn.Module):
    """The model's parameters with requires_grad off for the duration (restored after).

    The first pass needs the loss's gradient with respect to the probes only. Eager autograd
    would prune the parameters' branches by itself, but a torch.compile'd pass has one backward
    graph that computes the gradient of every input that requires grad: with the parameters
    among them, the first pass's backward cost as much as the real pass's. Frozen, its graph
    keeps only the activations' path (and saves less in the forward)."""
    live = [p for p in model.parameters() if p.requires_grad]
    for p in live:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in live:
            p.requires_grad_(True)


@dataclass
class LossFns:
    main: Callable
    probe: Callable
    compiled: bool = False  # compiled passes keep one input shape (see `signals`)


FIRST_PASSES = ("frozen", "shared")


def check_shared_first_pass(model: nn.Module) -> None:
    """A user error unless a zero signal leaves every lss box of `model` at its initial state
    (what first pass "shared" relies on; the code generator lists the boxes it would move)."""
    moved = getattr(model, "lss_moved_by_zero", list)()
    if moved:
        from nestc.diagnostics import NestError, Pos

        key, why = moved[0]
        raise NestError.at(Pos(file="--first-pass"), f"`--first-pass shared` needs a zero local surprise "
                           f"signal to leave every lss box at its initial state, and box {key} moves: {why}",
                           hint="use --first-pass frozen (the default) for this spec")


def check_call_loops(model: nn.Module, loops: str) -> None:
    """A user error for loop mode "call" with a general-rule memory running Adam on chunks of
    several tokens: its per-token region calls do not compile with torch 2.13's inductor (an
    internal error, "subgraph args must have consistent values!", or with `reset N`, NaN
    gradients); the other modes run its tokens as a scan, which call mode cannot lower."""
    if loops != "call":
        return
    from .memory import GeneralMemory

    for m in model.modules():
        if isinstance(m, GeneralMemory) and m.scans_adam_chunks():
            from nestc.diagnostics import NestError, Pos

            raise NestError.at(Pos(file="--loops"), f"`--loops call` cannot compile box `{m.s.name}`: Adam on "
                               f"chunks of {m.s.period} tokens runs as a scan, which call loops do not lower",
                               hint="use --loops unroll (the default), region or scan")


def make_loss_fns(model: nn.Module, compile: bool = False, loops: str = "unroll",
                  first_pass: str = "frozen", **compile_kw) -> LossFns:
    """The two passes of a training step, eager or compiled.

    Compiled, each layer runs through one torch.compile'd function (fullgraph) that takes the
    layer module as an argument: all layers of one class share a single graph (their parameters
    are the graph's inputs), so compile time is that of one layer, not of the whole stack.
    `loops` picks how chunk loops trace (nestc.runtime.ops.LOOP_MODES); in mode "call" each chunk
    loop runs between two graphs of the layer, its body compiled by itself.

    `first_pass` (compiled only; FIRST_PASSES) says how the first pass of a model with lss boxes
    compiles. "frozen" (the default, faster steps): a compiled function of its own, run with the
    parameters frozen and the lss boxes reading their initial state, so its backward computes
    the probes' gradients only; it compiles a second set of graphs. "shared" (a shorter cold
    compile): the first pass runs through the real pass's compiled code and graphs, with zero
    signals (under which the lss boxes learn nothing, so they read their initial state, as the
    frozen pass's do; a model whose lss boxes a zero signal would move, `lss_moved_by_zero`, is
    refused) and the probes added to their outputs; the real pass adds zero probes
    that require grad too, so both passes pass the same guards. Its steps are slower: the first
    pass's backward also computes the parameters' gradients (discarded), and the boxes run their
    (zero) updates."""
    if first_pass not in FIRST_PASSES:
        raise ValueError(f"first pass must be one of {FIRST_PASSES}, got {first_pass!r}")
    if compile and first_pass == "shared":
        check_shared_first_pass(model)
    if not compile:
        def eager_probe(x, y, probes, mask=None):
            with frozen(model):
                return probe_loss(model, x, y, probes, mask)

        return LossFns(lambda x, y, lss: forward_loss(model, x, y, lss), eager_probe)
    from .inductor_setup import prepare_inductor
    from .ops import NO_AUTOCAST_LOOPS, set_loop_mode

    prepare_inductor()  # compile time only: the generated code is the same (runtime/inductor_setup.py)
    # static shapes: a new shape gets its own graph. Symbolic shapes over the unrolled chunk
    # loops send sympy into a search of tens of minutes (seen with a second Titans layer size).
    compile_kw.setdefault("dynamic", False)
    from .memory import GeneralMemory

    check_call_loops(model, loops)
    if loops == "scan" or any(isinstance(m, GeneralMemory) and m.scans_adam_chunks() for m in model.modules()):
        # Inductor's joint-graph constant folding gave wrong gradients through a scan (a memory
        # with grad_state call_start beside a general-rule memory with proximal retention and
        # grad stop: up to 100% off; tests/compile/test_compile_specs.py
        # test_stop_gradient_proximal_memory_beside_a_call_start_memory). With it off they are
        # eager's; the cause inside inductor is not pinned down, so whatever compiles a scan goes
        # without it: loop mode scan, and Adam on chunks, which scans in the other modes too.
        compile_kw["options"] = {"joint_graph_constant_folding": False, **compile_kw.get("options", {})}
    set_loop_mode(loops, compile_kw)
    shared = first_pass == "shared"
    run_main = _compiled_layer(probing=False, **compile_kw)
    run_probe = None if shared else _compiled_layer(probing=True, **compile_kw)
    # a graph per pass (frozen or not)
    head = torch.compile(own_code(_head_loss), fullgraph=True, **compile_kw)

    def refuse_autocast(x):  # what check_loops_precision says up front, for callers of this API
        if loops in NO_AUTOCAST_LOOPS and torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"loop mode {loops!r} does not compile under autocast in torch 2.13 "
                             "(runtime/ops.py NO_AUTOCAST_LOOPS): use 'unroll' or 'call'")

    def main(x, y, lss):
        refuse_autocast(x)
        # shared: zero probes that require grad, so that this pass and the first pass it shares
        # its graphs with pass the same guards
        probes = {k: torch.zeros_like(v).requires_grad_() for k, v in lss.items()} if shared else None
        return head(model, _layers(model, run_main, model.embed(x), lss, probes), y, None) / x.shape[0]

    def probe(x, y, probes, mask=None):
        refuse_autocast(x)
        if shared:  # the real pass's code; zero signals leave the lss boxes at their initial state
            zero_signals = {k: torch.zeros_like(v) for k, v in probes.items()}
            return head(model, _layers(model, run_main, model.embed(x), zero_signals, probes), y, mask)
        with frozen(model):
            # Frozen, the embedding's output needs no grad while later layers' inputs do (they
            # depend on the probes), so layer 0 compiles a graph of its own here. Deliberately:
            # making that input a leaf that requires grad shares one graph (Hope: 46-108 s less
            # cold compile) but has layer 0's backward compute a gradient nothing needs, through
            # every inner update (steps 16-30% slower; measured, benchmarks/results/amd_epyc_avx2/layer0/).
            return head(model, _layers(model, run_probe, model.embed(x), probes), y, mask)

    return LossFns(main, probe, compiled=True)


def _compiled_layer(probing: bool, **compile_kw):
    def run(layer: nn.Module, h: Tensor, signals_: dict[str, Tensor], probes_: dict[str, Tensor]) -> Tensor:
        out, _ = layer(h, layer.initial_state(h.shape[0]), Ctx(probing=probing, lss=signals_, probes=probes_))
        return out

    from .ops import loop_mode

    # loop mode "call" runs chunk loops between graphs (a graph break at each, nestc.runtime.ops)
    return torch.compile(own_code(run), fullgraph=loop_mode() != "call", **compile_kw)


_CODE_COPIES = itertools.count()


def own_code(fn: Callable) -> Callable:
    """`fn` with a code object of its own. Dynamo keeps a function's compiled variants, and its
    limit on them (8), per code object: without a copy, every model a process compiles (a test
    session, a notebook) would add its variants of these few functions to one shared budget,
    and the ninth would fail in a fullgraph compile."""
    from .ops import renamed

    return renamed(fn, f"{fn.__code__.co_name}_{next(_CODE_COPIES)}")


def _layers(model: nn.Module, run: Callable, h: Tensor, lss: dict[str, Tensor],
            probes: dict[str, Tensor] | None = None) -> Tensor:
    def mine(signals: dict[str, Tensor], i: int) -> dict[str, Tensor]:
        # keys relative to the layer ("0.<box>"), so the compiled graph does not depend on i
        return {"0." + k.split(".", 1)[1]: v for k, v in signals.items() if k.split(".", 1)[0] == str(i)}

    for i, layer in enumerate(model.layers):
        h = run(layer, h, mine(lss, i), mine(probes or {}, i))
    return h


def _head_loss(model: nn.Module, h: Tensor, targets: Tensor, mask: Tensor | None) -> Tensor:
    h = model.norm(h)
    logits = h @ model.embed.weight.t() if model.tie_embeddings else model.head(h)
    return sequence_loss(logits, targets, mask)


def heldout_loss(model: nn.Module, fns: LossFns, batches, device: torch.device,
                 precision: str = "fp32", on_batch: Callable[[int], None] | None = None) -> tuple[float, int]:
    """Mean next-token loss over held-out batches ((tokens, targets) pairs) and the number of
    sequences. Each sequence starts from fresh memories, as in training, and the local surprise
    signals are the held-out text's own causal ones: each chunk's signal sees only the targets
    up to its end, so no later target leaks into the loss. `Trainer.evaluate` and `nestc eval`
    (`generate.perplexity`) both report this.

    The real pass runs without autograd when eager. A compiled pass keeps grad mode as in
    training, so the training step's graphs serve it: grad mode is one of dynamo's guards, and
    under no_grad the first evaluation compiled every layer's graph a second time.
    `on_batch(i)` is called after the i-th batch, from 1 (a progress display)."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        for i, (x, y) in enumerate(batches, 1):
            x, y = x.to(device), y.to(device)
            with autocast(device, precision):
                with torch.enable_grad():
                    lss = signals(model, fns, x, y, scope="causal")
                with torch.enable_grad() if fns.compiled else torch.no_grad():
                    total += float(fns.main(x, y, lss).detach()) * x.shape[0]  # main: the batch mean
            n += x.shape[0]
            if on_batch is not None:
                on_batch(i)
    finally:
        model.train(was_training)
    return total / max(n, 1), n


LSS_SCOPES = ("sequence", "causal")


def signals(model: nn.Module, fns: LossFns, tokens: Tensor, targets: Tensor,
            scope: str = "sequence") -> dict[str, Tensor]:
    """The local surprise signals of every lss box (empty when the model has none): the gradient
    of the model's loss with respect to each box's output, at the box's initial state.

    scope "sequence" takes the loss of the whole sequence (one extra pass). Through the layers
    above a box, a later position's loss also reaches an earlier position's output, so the signal
    of a chunk can carry a little of the targets after it, which the box's update then passes on
    to the tokens after the chunk. scope "causal" gives each chunk of a box the gradient of the
    loss up to the end of that chunk only, each token's loss weighted 1/T as in the whole
    sequence's mean, so both scopes give signals of one scale (a pass per chunk boundary: exact,
    several times the cost); held-out evaluation always uses it."""
    sites = model.lss_sites()
    if not sites:
        return {}
    if scope not in LSS_SCOPES:
        raise ValueError(f"lss scope must be one of {LSS_SCOPES}, got {scope!r}")
    b, t = tokens.shape
    like = next(model.parameters())  # probes in the model's dtype and on its device
    if scope == "sequence":
        return _probe_grads(fns, tokens, targets, {k: (b, t, w) for k, w in sites}, like)
    periods = model.lss_periods()
    ends = sorted({min(e, t) for k, _ in sites for e in range(periods[k], t + periods[k], periods[k])})
    out = {k: like.new_zeros(b, t, w) for k, w in sites}
    for end in ends:  # the model is causal: the first `end` tokens alone give the loss up to `end`
        if fns.compiled:  # one shape for every end (a compiled pass per prefix length is slow)
            mask = (torch.arange(t, device=tokens.device) < end).to(like.dtype)
            grads = _probe_grads(fns, tokens, targets, {k: (b, t, w) for k, w in sites}, like, mask)
        else:  # the prefix's mean loss, reweighted to 1/T per token (as the masked form)
            grads = _probe_grads(fns, tokens[:, :end], targets[:, :end], {k: (b, end, w) for k, w in sites}, like)
            grads = {k: g * (end / t) for k, g in grads.items()}
        for k, _ in sites:
            if end % periods[k] == 0 or end == t:  # a chunk of box k ends here: its tokens' signal
                lo = ((end - 1) // periods[k]) * periods[k]
                out[k][:, lo:end] = grads[k][:, lo:end]
    return out


def _probe_grads(fns: LossFns, tokens: Tensor, targets: Tensor, shapes: dict, like: Tensor,
                 mask: Tensor | None = None) -> dict[str, Tensor]:
    probes = {k: like.new_zeros(shape).requires_grad_() for k, shape in shapes.items()}
    loss = fns.probe(tokens, targets, probes, mask)
    grads = torch.autograd.grad(loss, list(probes.values()))
    return {k: g.detach() for k, g in zip(probes, grads)}


def training_loss(model: nn.Module, fns: LossFns, tokens: Tensor, targets: Tensor) -> Tensor:
    return fns.main(tokens, targets, signals(model, fns, tokens, targets))
