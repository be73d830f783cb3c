"""Small operations generated code uses between streams and boxes (imported there as `R`)."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from .layers import merge_heads, split_heads  # noqa: F401  (re-exported for generated code)


def conv(module, x: Tensor, state: dict, key: str) -> Tensor:
    """Apply a short convolution, carrying its streaming state in `state[key]`."""
    y, state[key] = module(x, state.get(key))
    return y


def heads(x, n: int):
    """A block stream [B, T, W] seen per head: [B, H, T, W/H]; width 1 broadcasts to every head."""
    if not torch.is_tensor(x):
        return x
    if x.shape[-1] == 1 and n > 1:
        return x.unsqueeze(1)
    return split_heads(x, n)


def tokens(x, n: int, start, end):
    """Tokens start..end-1 of a block stream seen per head, [B, H, end - start, W/H] (as `heads`);
    a constant (an `lr 0.1`, say) is the same for every token and passes through."""
    if not torch.is_tensor(x):
        return x
    return heads(x, n)[:, :, start:end]


def per_head(x, n: int):
    """A per-token scalar stream (width 1 or one per head) as [B, H, T]; constants pass through."""
    if not torch.is_tensor(x):
        return x
    if x.shape[-1] == 1:
        return x[..., 0].unsqueeze(1).expand(x.shape[0], n, x.shape[1])
    if x.shape[-1] == n:
        return x.transpose(1, 2)
    raise ValueError(f"expected a per-token scalar of width 1 or {n}, got {tuple(x.shape)}")


def minimum(a, b):
    if torch.is_tensor(a) and torch.is_tensor(b):
        return torch.minimum(a, b)
    if torch.is_tensor(a):
        return torch.clamp(a, max=b)
    if torch.is_tensor(b):
        return torch.clamp(b, max=a)
    return min(a, b)


def maximum(a, b):
    if torch.is_tensor(a) and torch.is_tensor(b):
        return torch.maximum(a, b)
    if torch.is_tensor(a):
        return torch.clamp(a, min=b)
    if torch.is_tensor(b):
        return torch.clamp(b, min=a)
    return max(a, b)


def huber(d: Tensor, delta) -> Tensor:
    """Element-wise Huber: d²/2 inside [-delta, delta], delta (|d| - delta/2) outside."""
    a = d.abs()
    return torch.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))


def guarded(fn, x: Tensor, ok: Tensor) -> Tensor:
    """fn(x) where `ok`, 0 elsewhere, with no derivative of any order flowing from the elements
    outside `ok`: fn sees 1 there (the branch `where` does not take keeps finite derivatives, so
    0 · ∞ never forms). For functions singular at a point (sqrt at 0, |d|^p below)."""
    return torch.where(ok, fn(torch.where(ok, x, torch.ones_like(x))), torch.zeros_like(x))


# The lp objective |d|^p (spec function `lp`) and its gradient p sign(d) |d|^(p-1). For p < 2
# the second derivative p (p-1) |d|^(p-2) is infinite at d = 0, and autograd's product there
# (sign'(0) · |0|^(p-1) + sign(0) · ∞, i.e. 0 · ∞) is NaN. An outer gradient taken through an
# inner update (a meta-gradient) goes through that second derivative, so one residual that is
# exactly 0 (a zero-initialised memory meeting a ReLU value, a bf16 rounding) made every
# gradient upstream NaN. Here, where d is exactly 0 and p < 2, the value is 0 (as it is) and no
# derivative of any order flows: the singular element contributes nothing to the meta-gradient,
# the convention sign(0) = 0 already makes for p = 1. Elsewhere both are the plain formulas.
# (d is replaced by 1 in the branch `where` does not take, so that branch's derivatives stay
# finite and 0 · ∞ never forms: `guarded`.) For p >= 2 nothing is singular and nothing changes.
def _lp(fn, d: Tensor, p) -> Tensor:
    """fn(d), guarded where |d|^p is singular (d = 0 and p < 2); plain where nothing is (p >= 2)."""
    if not torch.is_tensor(p):
        return fn(d) if p >= 2 else guarded(fn, d, d != 0)
    return guarded(fn, d, (d != 0) | (p >= 2))


def abs_pow(d: Tensor, p) -> Tensor:
    """|d| ** p, element-wise, without NaN derivatives at d = 0 (see above)."""
    return _lp(lambda x: x.abs() ** p, d, p)


def lp_grad(d: Tensor, p) -> Tensor:
    """d/dd |d|^p = p sign(d) |d|^(p-1), element-wise, without NaN derivatives at d = 0."""
    return _lp(lambda x: p * torch.sign(x) * x.abs() ** (p - 1), d, p)


def segment_bounds(length: int, period: int, offset: int) -> list[tuple[int, int]]:
    """(start, end) of the pieces of a stream cut at a box's chunk boundaries."""
    from .memory import segments

    return [(s, e) for s, e, _ in segments(length, period, offset)]


# How torch.compile traces a chunk loop: "unroll" (one copy of the body per chunk: long compiles,
# the fastest steps), "scan" (the body traced once: compiles several times faster, but on CPU
# inductor runs the scan slower than eager), "region" (unrolled, each chunk a call of one
# reusable compiled region, `_region_loop`: for Hope 40% less compile time than "unroll", steps
# about 7-10% slower) or "call" (`_call_loop`: the loop itself runs outside the graph, each chunk
# a call of the body compiled on its own, once for every chunk, layer and step; the code around
# the loop compiles as the graphs before and after it, so the step has a graph break at each
# such loop, by design: for Hope a third of "unroll"'s compile time, steps about 45% slower).
# `nestc bench SPEC --loops MODE` measures them; the README reports them for Hope. Set by
# make_loss_fns. A general-rule box's tokens (runtime/memory.py `GeneralMemory`) run as one scan
# in mode "scan" and as calls of one region in the others.
LOOP_MODES = ("unroll", "scan", "region", "call")
# Loop modes that do not compile under autocast (`--precision bf16`) in torch 2.13: inductor finds
# products of float32 and bfloat16 operands in a region's body, and dynamo finds a scan's carry
# changing dtype. Unrolled loops and calls compile under it; nestc refuses these two up front
# (runtime/devices.py `check_loops_precision`) rather than fail inside torch.compile.
NO_AUTOCAST_LOOPS = ("region", "scan")
_loop_mode = "unroll"
# block class -> {loop method name: its compiled body}; weak, so that a generated class and its
# compiled bodies go when the model does (tests and notebooks compile many specs in one process)
_COMPILED_BODIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_body_options: dict = {}  # torch.compile options of loop mode "call"'s bodies


def set_loop_mode(mode: str, compile_options: dict | None = None) -> None:
    """`compile_options`: what loop mode "call" compiles its bodies with (torch.compile keywords;
    fullgraph and static shapes unless they say otherwise)."""
    global _loop_mode, _body_options
    if mode not in LOOP_MODES:
        raise ValueError(f"loop mode must be one of {LOOP_MODES}, got {mode!r}")
    if mode in ("region", "scan"):  # their compiled code needs these fixes (runtime/inductor_setup.py)
        from .inductor_setup import mend_region_bugs

        mend_region_bugs()
    _loop_mode = mode
    options = {"fullgraph": True, "dynamic": False, **(compile_options or {})}
    if options != _body_options:
        _COMPILED_BODIES.clear()
        _body_options = options


def loop_mode() -> str:
    return _loop_mode


def chunk_loop(body, state: dict, inputs: dict, period: int, anchor: str, carried: list[str],
               scannable: bool, flush: bool = False, outputs: tuple[str, ...] = ()):
    """Run a block's chunk loop: `body(state, piece, flush) -> (state, outputs)` over pieces of
    the stream cut at the anchor memory's chunk boundaries; returns (state, outputs
    concatenated). A flushed call commits its memories' partial chunks at its last piece.

    Under torch.compile in loop mode "scan", a stream of whole chunks from a chunk boundary runs
    as a scan, so the body is traced once rather than once per chunk; in loop mode "region" as
    calls of one compiled region; in loop mode "call" as calls of the body compiled on its own.
    `scannable` (decided by the code generator) says that every memory of the loop commits at
    each piece and the carried state keeps its shapes (the code generator then makes the body a
    method of the block); eager runs always take the plain loop.
    `outputs`: the names of the streams the body returns."""
    from .memory import segments

    t = next(iter(inputs.values())).shape[1]
    offset = state[anchor]["offset"]
    whole_chunks = offset == 0 and t % period == 0 and t // period > 1
    if scannable and not flush and whole_chunks and torch.compiler.is_compiling():
        if _loop_mode == "scan":
            return _scan_loop(body, state, inputs, period, carried)
        if _loop_mode == "region":
            return _region_loop(body, state, inputs, period, carried, outputs)
        if _loop_mode == "call":
            return _call_loop(body, state, inputs, period, carried, outputs)
    parts: dict[str, list] = {}
    for s, e, _ in segments(t, period, offset):
        state, out = body(state, {k: v[:, s:e] for k, v in inputs.items()}, flush and e == t)
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
    return state, {k: torch.cat(v, dim=1) for k, v in parts.items()}


def scan(step, init, xs):
    """torch's scan (`torch._higher_order_ops.scan`), with every output's gradient made dense on
    its way back (`_ContiguousGrad`). In torch 2.13, inductor compiles a scan's backward loop for
    the layout of the first incoming carry gradient; where that gradient is a broadcast (the
    gradient of `final.sum()` in the same graph: stride 0), later iterations' carry gradients are
    written in that layout too, and the gradients come out silently wrong (off by more than their
    own size in tests/runtime/test_scan_grads.py). Dense gradients cost one copy per output.

    And an initial carry that needs no gradient (a memory's frozen or fixed initial state) while
    the scan's inputs need one goes in requiring grad (`_as_carried`, one copy), as region and
    call loops hand their first chunk its carry: torch 2.13's compiled scan otherwise gave wrong
    gradients for the inputs (a memory's chunk loop from a state that needs no gradient, compiled
    inside a model's layer; in a 2-layer Hope's frozen first pass, layer 0's signal was off by up
    to a third of its entries' size, tests/compile/test_compile_specs.py
    test_first_pass_signals_in_scan_mode_equal_eager_through_a_later_layer). Not reproduced in a
    plain-torch scan of a few lines, so the trigger is narrower than "no gradient on the carry"."""
    from torch._higher_order_ops.scan import scan as torch_scan
    from torch.utils import _pytree as pytree

    def dense_grad(x):
        return _ContiguousGrad.apply(x) if torch.is_tensor(x) and x.requires_grad else x

    anchor = _grad_anchor(pytree.tree_leaves((init, xs)))  # None without grad: then nothing changes
    init = pytree.tree_map(lambda x: _as_carried(x, anchor) if torch.is_tensor(x) else x, init)
    final, ys = torch_scan(step, init, xs)
    return pytree.tree_map(dense_grad, final), pytree.tree_map(dense_grad, ys)


def _scan_loop(body, state: dict, inputs: dict, period: int, carried: list[str]):
    t = next(iter(inputs.values())).shape[1]
    n = t // period
    tree = _Carry(state, carried)

    def chunks(x):  # [B, T, ...] -> [T/P, B, P, ...]
        return x.reshape(x.shape[0], n, period, *x.shape[2:]).movedim(1, 0)

    def step(carry, piece):
        st, out = body(dict(state, **tree.rebuild(carry)), piece, False)
        new = [x.clone(memory_format=torch.contiguous_format) for x in _Carry(st, carried).tensors()]
        return new, {k: v.clone(memory_format=torch.contiguous_format) for k, v in out.items()}

    # fresh copies: two carried leaves may be one tensor (a memory's W and M between chunks)
    init = [x.clone(memory_format=torch.contiguous_format) for x in tree.tensors()]
    final, ys = scan(step, init, {k: chunks(v) for k, v in inputs.items()})
    new_state = _moved_on(dict(state, **tree.rebuild(final)), state, carried, t)
    outs = {k: v.movedim(0, 1).reshape(v.shape[1], t, *v.shape[3:]) for k, v in ys.items()}
    return new_state, outs


class _Carry:
    """A chunk loop's carried state as the flat list of its tensors (what a compiled body takes
    and returns) and back; the leaves that are not tensors (offsets, flags) stay as they were."""

    def __init__(self, state: dict, carried):
        from torch.utils import _pytree as pytree

        self.leaves, self.spec = pytree.tree_flatten({k: state[k] for k in carried})
        self.is_tensor = [torch.is_tensor(x) for x in self.leaves]

    def tensors(self) -> list[Tensor]:
        return [x for x, is_t in zip(self.leaves, self.is_tensor) if is_t]

    def rebuild(self, tensors) -> dict:
        from torch.utils import _pytree as pytree

        it = iter(tensors)
        return pytree.tree_unflatten([next(it) if is_t else x for x, is_t in zip(self.leaves, self.is_tensor)],
                                     self.spec)


# Two carried tensors may be one tensor (a memory's W and M between chunks: a memory tells its
# committed state by `W is M`). A compiled function returns each tensor once and never one
# object twice, so the loops pass the pattern across: pattern[j] is the first position that
# holds the same tensor as position j.
def _alias_pattern(tensors: list[Tensor]) -> tuple[int, ...]:
    return tuple(next(i for i, y in enumerate(tensors) if y is x) for x in tensors)


def _distinct(tensors: list[Tensor], pattern: tuple[int, ...]) -> list[Tensor]:
    return [x for j, x in enumerate(tensors) if pattern[j] == j]


def _with_aliases(distinct, pattern: tuple[int, ...]) -> list[Tensor]:
    it = iter(distinct)
    first = {j: next(it) for j, p in enumerate(pattern) if p == j}
    return [first[p] for p in pattern]


def _whole_chunks(inputs: dict, period: int):
    """The pieces of a stream of whole chunks, in order."""
    t = next(iter(inputs.values())).shape[1]
    for i in range(t // period):
        yield {k: v[:, i * period:(i + 1) * period] for k, v in inputs.items()}


def _loop_result(state: dict, carry: dict, carried: list[str], t: int, parts: dict[str, list]):
    """(the state after the loop, its outputs concatenated) for the loops whose calls saw fixed
    positions (`_moved_on`)."""
    new_state = _moved_on(dict(state, **carry), state, carried, t)
    return new_state, {k: torch.cat(v, dim=1) for k, v in parts.items()}


def _region_loop(body, state: dict, inputs: dict, period: int, carried: list[str], outputs: tuple[str, ...]):
    """The chunk loop unrolled, each chunk one call of a compiled region that dynamo traces once
    and stamps out for the others (`torch.compiler.nested_compile_region`): most of the compile
    time a scan saves, without the scan's slow steps. `body` is a method of the block
    (the code generator makes it one), so the region is keyed on (module, method name) and its
    inputs are tensors and constants only. Every call sees the state the loop began with, less
    the carried tensors (as in the scan: whole chunks from a boundary, so positions and offsets
    are fixed up once at the end).

    Every chunk calls the same region, forward and backward, as long as no chunk differs in what
    the region is specialised on: the first chunk gets its carried tensors as the later ones do
    (`_first_carry`), and the last chunk's carried outputs get a gradient as the others'
    do (`_TiedToState`). Otherwise dynamo traces a region for the first chunk (and inlines it)
    and AOTAutograd a second backward for the last one: a fifth of region mode's nodes in Hope."""
    t = next(iter(inputs.values())).shape[1]
    tree = _Carry(state, carried)
    owner = body.__self__
    anchor, carry, pattern = _first_carry(tree, inputs, owner)  # pattern: the region returns the distinct ones
    n = sum(p == j for j, p in enumerate(pattern))
    parts: dict[str, list] = {k: [] for k in outputs}
    pieces = list(_whole_chunks(inputs, period))
    for i, piece in enumerate(pieces):
        flat = _region_call(owner, body.__name__, dict(state, **carry), piece, tuple(carried), outputs, pattern)
        carry = tree.rebuild(_with_aliases(flat[:n], pattern))
        for j, (k, v) in enumerate(zip(outputs, flat[n:])):
            if anchor is not None and i == len(pieces) - 1 and j == 0:
                v = _TiedToState.apply(v, *flat[:n])
            else:
                # times one: its gradient is a fresh tensor, where the concatenation's would be a
                # view at an offset that differs per chunk, and each offset would cost a backward trace
                v = v * 1.0
            parts[k].append(v)
    return _loop_result(state, carry, carried, t, parts)


def _first_carry(tree: "_Carry", inputs: dict, owner) -> tuple:
    """What the first chunk of a region or call loop gets: (the grad anchor, its carried state,
    the alias pattern of the carried tensors). The first chunk gets its carried tensors as every
    later chunk will (`_as_carried`), or it would compile a body of its own; tensors that are one
    tensor stay one."""
    anchor = _grad_anchor([*tree.tensors(), *inputs.values(), *owner.parameters()])
    start = tree.tensors()
    pattern = _alias_pattern(start)
    carry = tree.rebuild(_with_aliases([_as_carried(x, anchor) for x in _distinct(start, pattern)], pattern))
    return anchor, carry, pattern


def _grad_anchor(tensors) -> Tensor | None:
    """With grad enabled, the first of `tensors` that requires grad (a chunk's outputs will, then),
    else None. Non-tensors (a constant learning rate, say) are skipped."""
    if not torch.is_grad_enabled():
        return None
    return next((x for x in tensors if torch.is_tensor(x) and x.requires_grad), None)


def _as_carried(x: Tensor, anchor: Tensor | None) -> Tensor:
    """A carried tensor as a compiled body returns it: contiguous, and requiring grad when the
    body's outputs will (`anchor`, a tensor that does, is given then). The initial state is often
    broadcast over the batch, and may not require grad (a conv's zero state; every state in the
    frozen first pass) where the state after one chunk does. Inside a graph dynamo refuses
    `requires_grad_()` on an intermediate, so the tensor requires grad through `_GradThrough`,
    in the graph (region loops) and out of it (call loops) alike."""
    if anchor is not None and not x.requires_grad and x.is_floating_point():
        return _GradThrough.apply(x, anchor)
    return x.contiguous()


class _GradThrough(torch.autograd.Function):
    """A contiguous copy of x that requires grad because `anchor` does; `anchor` gets no gradient
    from it (a structural input only), x gets the copy's."""

    @staticmethod
    def forward(x: Tensor, anchor: Tensor) -> Tensor:
        return x.clone(memory_format=torch.contiguous_format)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g: Tensor):
        return g, None


class _ContiguousGrad(torch.autograd.Function):
    """x itself (a view of it), whose gradient is made contiguous on its way back."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g: Tensor):
        return g.contiguous()


class _TiedToState(torch.autograd.Function):
    """The last chunk's first output (a copy), tied to the loop's final carried state: the state
    tensors that require grad get a zero gradient from it (added to any real one). The last
    chunk's region then gets dense gradients for its carried outputs, as every earlier chunk's
    does from the chunk after it, and AOTAutograd traces one backward for all chunks instead of
    a second one for the last (whose final state nothing may read)."""

    @staticmethod
    def forward(v: Tensor, *state: Tensor) -> Tensor:
        return v.clone(memory_format=torch.contiguous_format)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.state_meta = [(x.shape, x.dtype, x.device) for x in inputs[1:]]

    @staticmethod
    def backward(ctx, g: Tensor):
        zeros = [torch.zeros(shape, dtype=dtype, device=device) if needs else None
                 for (shape, dtype, device), needs in zip(ctx.state_meta, ctx.needs_input_grad[1:])]
        # a fresh tensor, as `v * 1.0` gives the other chunks' outputs
        return g.clone(memory_format=torch.contiguous_format), *zeros


@torch.compiler.disable
def _call_loop(body, state: dict, inputs: dict, period: int, carried: list[str], outputs: tuple[str, ...]):
    """The chunk loop run eagerly in the middle of a compiled step (dynamo breaks the graph at
    this call), each chunk one call of the body compiled by itself (`compiled_body`). The body
    is traced and compiled once, not once per chunk, and the same compiled code serves every
    layer of its class and every later step; the code before and after the loop compiles as
    graphs of their own. As in `_region_loop`, every call sees the loop's starting positions
    (whole chunks from a chunk boundary; positions are fixed up once at the end), so no chunk
    differs from another in anything the compiled body is specialised on."""
    t = next(iter(inputs.values())).shape[1]
    tree = _Carry(state, carried)
    owner = body.__self__
    _, carry, _ = _first_carry(tree, inputs, owner)
    run = compiled_body(type(owner), body.__name__)
    parts: dict[str, list] = {k: [] for k in outputs}
    for piece in _whole_chunks(inputs, period):
        distinct, pattern, out = run(owner, body.__name__, dict(state, **carry), piece, tuple(carried))
        carry = tree.rebuild(_with_aliases(distinct, pattern))
        for k in outputs:
            parts[k].append(out[k])
    return _loop_result(state, carry, carried, t, parts)


def _call_body(owner, name: str, state: dict, piece: dict, carried: tuple):
    """One chunk of `_call_loop`: the carried state's distinct tensors, contiguous (so every chunk
    passes the next one the layout the first one got), their alias pattern, and the body's
    outputs."""
    st, out = getattr(owner, name)(state, piece, False)
    new = _Carry(st, carried).tensors()
    pattern = _alias_pattern(new)
    return [x.contiguous() for x in _distinct(new, pattern)], pattern, out


def compiled_body(owner: type, name: str):
    """`_call_body` compiled (with the options `set_loop_mode` was given) for one block class and
    loop method. The block's parameters are graph inputs, so every layer of the class shares
    it."""
    return compiled_fn(owner, name, _call_body)


def compiled_fn(owner: type, name: str, fn):
    """`fn` compiled with loop mode "call"'s options, once per (owner class, name). Each gets a
    code object of its own: dynamo keeps its compiled variants (and its limit on them) per code
    object, and one loop's variants should not use up another's."""
    bodies = _COMPILED_BODIES.setdefault(owner, {})
    if name not in bodies:
        bodies[name] = torch.compile(renamed(fn, f"{owner.__name__}_{name}"), **_body_options)
    return bodies[name]


def renamed(fn, name: str):
    """`fn` with a copy of its code object named `name` (same globals, defaults and closure).
    Dynamo keeps compiled variants, and its limit on them, per code object: a copy gets a cache
    and a budget of its own."""
    import types

    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _moved_on(new_state: dict, state: dict, carried: list[str], t: int) -> dict:
    """The state after a loop traced as one body, whose calls saw fixed positions: its memories
    advanced t tokens, and whole chunks leave them on a chunk boundary."""
    for k in carried:
        if isinstance(new_state[k], dict) and "pos" in new_state[k]:
            new_state[k] = dict(new_state[k], pos=state[k]["pos"] + t, offset=0)
    return new_state


@torch.compiler.nested_compile_region
def _region_call(owner, name: str, state: dict, piece: dict, carried: tuple, outputs: tuple, same: tuple):
    """One chunk of `_region_loop`: the carried state's distinct tensors (`same[j]`: the first
    position that holds the same tensor as position j), then the outputs, as one flat tuple of
    tensors (what a reusable region may return). A tensor that comes back unchanged is copied,
    since a region's output must not alias its input."""
    tree = _Carry(state, carried)
    # the gradients the region hands back for its carried inputs, contiguous: a chunk's carried
    # outputs then get the same layout of gradient from the chunk after them as the last chunk's
    # get from `_TiedToState`, and all chunks share one backward
    before = _with_aliases([_ContiguousGrad.apply(x) if x.is_floating_point() else x
                            for x in _distinct(tree.tensors(), same)], same)
    state = dict(state, **tree.rebuild(before))
    st, out = getattr(owner, name)(state, piece, False)
    new = _Carry(st, carried).tensors()
    if len(new) != len(same) or any(new[j] is not new[first] for j, first in enumerate(same)):
        raise RuntimeError(f"chunk loop {name}: its state changed structure in a chunk, so it "
                           "cannot run as a compiled region (use loop mode 'unroll')")
    # contiguous, as `_region_loop` hands the first chunk its carried tensors
    new = [x.clone(memory_format=torch.contiguous_format) if any(x is y for y in before) else x.contiguous()
           for x in _distinct(new, same)]
    return (*new, *(out[k] for k in outputs))
