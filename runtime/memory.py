"""In-context memories: the boxes that learn inside the forward pass.

Three implementations, one contract. Each holds its *initial* state as parameters of the outer
level (meta-learned, NL §1.6 item 4) or as a fixed buffer, and processes a stream chunk by chunk:

* :class:`DeepMemory` -- matrix or MLP state, any objective of M(k), GD / momentum / DGD, and a
  per-token retention gate. All gradients of a chunk are taken at the chunk-start ("committed")
  state in one batched pass: one forward and one closed-form backward of the MLP give every
  token's layer inputs a_t and output errors delta_t, and the per-token gradient of layer l is
  delta_t a_tᵀ. Retention and momentum across the chunk's tokens are linear recurrences with
  scalar coefficients, so the chunk's update is sum_t w_t delta_t a_tᵀ with per-token weights w_t
  in closed form (Titans Eqs. 16-18): no per-token loop. DGD's state-dependent decay
  M (gamma I - b a aᵀ) is the general delta rule, solved by the chunked kernel
  (runtime/kernels/delta.py). With `grad_state call_start` every chunk's gradients are taken at
  the state the call began with instead, so GD and momentum run all chunks at once (`_parallel`).
* :class:`DeltaMemory` -- a matrix memory updated at every token (linear attention, DeltaNet,
  Gated DeltaNet), exactly, by the chunked delta-rule kernel.
* :class:`GeneralMemory` -- anything else the language can say: a per-token loop within each
  chunk, gradients by torch.func. Slow and obviously correct; the tests use it as the reference
  of the two fast forms.

Streaming. A state carries the committed weights, the running recurrence state inside the
current chunk, momentum, and the offset into the chunk, so a stream fed in pieces of any size
gives what one long call gives. `flush=True` commits a partial chunk at the end of a call (a
sequence shorter than a chunk still updates its memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels.delta import delta_rule, delta_rule_step
from .ops import _as_carried, _ContiguousGrad, _grad_anchor, _TiedToState, guarded, lp_grad, scan

LOG_FLOOR = -80.0  # log of a gate that is (numerically) zero; exp(-80) underflows cleanly
# grad_state call_start (DeepMemory._parallel): up to this many chunks per call, the chunk-start
# states come from one batched product over all pairs of chunks; beyond, from a loop over chunks
CLOSED_FORM_CHUNKS = 16


# ---------------------------------------------------------------------------------------------
# MLP memories: forward, and the closed-form backward that yields per-token layer gradients
# ---------------------------------------------------------------------------------------------


def _act(name: str, z: Tensor) -> Tensor:
    if name == "gelu":
        return torch.nn.functional.gelu(z)
    if name == "silu":
        return torch.nn.functional.silu(z)
    if name == "relu":
        return torch.relu(z)
    if name == "tanh":
        return torch.tanh(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    return z


def _act_grad(name: str, z: Tensor) -> Tensor:
    """d act / d z, exactly (tests compare with autograd)."""
    if name == "gelu":  # exact erf GELU: Phi(z) + z phi(z)
        cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
        return cdf + z * pdf
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if name == "relu":
        return (z > 0).to(z.dtype)
    if name == "tanh":
        return 1.0 - torch.tanh(z) ** 2
    if name == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1.0 - s)
    return torch.ones_like(z)


@dataclass(frozen=True)
class MLPShape:
    """Per head: layer widths [d_in, hidden..., d_out], activation, residual (out = x + mlp(x))."""

    dims: tuple[int, ...]
    act: str = "gelu"
    residual: bool = False

    @property
    def layers(self) -> int:
        return len(self.dims) - 1


class _StateTimes(torch.autograd.Function):
    """W x per token with W's gradient laid out as W is, [out, in] row-major. Autograd's own
    gradient of the product, xᵀ g transposed back, is a [in, out] buffer viewed as [out, in]; in
    a compiled step it meets the states' row-major updates in the same fused loops (the
    backward of the next chunk's update, its decay's and momentum's sums over the state), and
    inductor's C++ backend leaves loops that mix the two layouts scalar. Here gᵀ x is computed
    as such. Used under torch.compile only; eager keeps einsum's autograd."""

    @staticmethod
    def forward(x: Tensor, w: Tensor) -> Tensor:
        return torch.einsum("bhnd,bhed->bhne", x, w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g: Tensor):
        # Under autocast the forward's einsum ran in g's dtype (bf16) on float32 inputs: the
        # products run in g's dtype here too, and each gradient comes back in its input's dtype
        # (as the casts autocast records would give them). Without autocast the casts are no-ops.
        x, w = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.einsum("bhne,bhed->bhnd", g, w.to(g.dtype)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = torch.matmul(g.transpose(-1, -2), x.to(g.dtype)).to(w.dtype)
        return gx, gw


def _times(w, x: Tensor) -> Tensor:
    """W x per token: w [B, H, out, in] (or a `PendingUpdates`), x [B, H, N, in] -> [B, H, N, out]."""
    if isinstance(w, PendingUpdates):
        return w.times(x)
    if w.stride(0) == 0:  # an initial state shared by the batch (expanded): one product, not B
        return torch.einsum("bhnd,hed->bhne", x, w[0])
    if torch.compiler.is_compiling() and torch.is_grad_enabled():
        return _StateTimes.apply(x, w)
    return torch.einsum("bhnd,bhed->bhne", x, w)


def _times_t(w, y: Tensor) -> Tensor:
    """Wᵀ y per token: y [B, H, N, out] -> [B, H, N, in]."""
    if isinstance(w, PendingUpdates):
        return w.times_t(y)
    if w.stride(0) == 0:
        return torch.einsum("bhne,hed->bhnd", y, w[0])
    return torch.einsum("bhne,bhed->bhnd", y, w)


def _plain_times(w: Tensor, x: Tensor) -> Tensor:
    """W x per token as one einsum, without _times's shortcuts (see GeneralMemory.apply)."""
    return torch.einsum("bhnd,bhed->bhne", x, w)


def mlp_apply(shape: MLPShape, weights: list, x: Tensor, times: Callable = _times) -> Tensor:
    """Read a memory: weights[l] [B, H, out_l, in_l], x [B, H, N, d_in] -> [B, H, N, d_out]."""
    a = x
    for i, w in enumerate(weights):
        z = times(w, a)
        a = _act(shape.act, z) if i < len(weights) - 1 else z
    return a + x if shape.residual else a


def mlp_forward(shape: MLPShape, weights: list, x: Tensor, extra: tuple[Tensor, ...] = ()):
    """The memory's forward at `weights` for tokens x, keeping what the closed-form backward
    needs: (pred, each layer's input, each layer's pre-activation), all [B,H,N,.].

    `extra` token blocks [B,H,N_i,d_in] go through the same products as x (concatenated along
    the tokens), and their outputs come back as a fourth item: reads of one state at several
    inputs then pass over the state once, not once per input (a chunk of self-modifying Hope
    reads its memory at the keys and at the self-generated values' inputs)."""
    if extra:
        sizes = [x.shape[2]] + [t.shape[2] for t in extra]
        pred, acts, pres, _ = mlp_forward(shape, weights, torch.cat([x, *extra], dim=2))
        n = sizes[0]
        firsts = lambda ts: [t[:, :, :n] for t in ts]  # noqa: E731  (the key tokens' part)
        return pred[:, :, :n], firsts(acts), firsts(pres), list(pred[:, :, n:].split(sizes[1:], dim=2))
    acts, pres = [x], []
    a = x
    for i, w in enumerate(weights):
        z = _times(w, a)
        pres.append(z)
        a = _act(shape.act, z) if i < len(weights) - 1 else z
        if i < len(weights) - 1:
            acts.append(a)
    return (a + x if shape.residual else a), acts, pres, []


def mlp_backward(shape: MLPShape, weights: list, acts: list, pres: list, delta: Tensor):
    """Per layer (a, delta): the layer's input and the gradient of the token's objective w.r.t.
    the layer's output, from `mlp_forward`'s acts and pres and delta = d objective / d pred."""
    per_layer: list[tuple[Tensor, Tensor]] = []
    for i in range(len(weights) - 1, -1, -1):
        per_layer.append((acts[i], delta))
        if i > 0:
            delta = _times_t(weights[i], delta) * _act_grad(shape.act, pres[i - 1])
    per_layer.reverse()
    return per_layer


def mlp_layer_grads(shape: MLPShape, weights: list, x: Tensor,
                    out_grad: Callable[[Tensor], Tensor]):
    """Forward at `weights`, then backward of the per-token objective in closed form.

    Returns the prediction and, per layer, (a, delta): the layer's input a_t [B,H,N,in] and the
    gradient of the token's objective w.r.t. the layer's output delta_t [B,H,N,out], so that the
    token's gradient w.r.t. that layer's weights is delta_t a_tᵀ, and the layers' pre-activations
    z_t = W a_t [B,H,N,out] (what DGD's delta rule reads at its keys).
    """
    pred, acts, pres, _ = mlp_forward(shape, weights, x)
    return pred, mlp_backward(shape, weights, acts, pres, out_grad(pred)), pres


class SelfValues:
    """Self-generated values v̂ = M(x) (NL Eq. 84): the memory's own output, at the state its
    gradients are taken at, for the inputs x [B,H,T,d_in] (`stop`: no gradient through v̂).

    The code generator passes this instead of a function of the weights when `values` is M(e)
    or stop_grad(M(e)). The memory then reads x in the same products as its keys
    (`mlp_forward`'s extra tokens), and a chunk loop traced as a scan cuts x into chunks as it
    cuts the keys (a function of the weights cannot be told which chunk it is in there)."""

    def __init__(self, inputs: Tensor, stop: bool = False):
        self.inputs, self.stop = inputs, stop

    def chunk(self, s: int, e: int) -> "SelfValues":
        return SelfValues(self.inputs[:, :, s:e], self.stop)


# ---------------------------------------------------------------------------------------------
# closed-form output gradients of the built-in objectives
# ---------------------------------------------------------------------------------------------


def objective_grad(kind: str, scale: float, extra: float | Tensor | None = None):
    """d(scale * objective(pred, target)) / d pred for l2, dot, lp, huber (summed over the last axis)."""
    if kind == "l2":
        return lambda pred, target: (2.0 * scale) * (pred - target)
    if kind == "dot":
        return lambda pred, target: scale * target.expand_as(pred)
    if kind == "lp":
        p = float(extra)
        return lambda pred, target: scale * lp_grad(pred - target, p)
    if kind == "huber":
        return lambda pred, target: scale * torch.clamp(pred - target, -extra, extra)
    raise ValueError(kind)


def func_objective_grad(objective: Callable[[Tensor, Tensor], Tensor]):
    """d objective / d pred by torch.func, for user-written objectives of the prediction."""
    def grad(pred: Tensor, target: Tensor) -> Tensor:
        return torch.func.grad(lambda p: objective(p, target).sum())(pred)
    return grad


# ---------------------------------------------------------------------------------------------
# chunk segmentation
# ---------------------------------------------------------------------------------------------


def segments(length: int, period: int, offset: int) -> list[tuple[int, int, bool]]:
    """Cut [0, length) at the chunk boundaries of a box that is `offset` tokens into its current
    chunk. Returns (start, end, completes_chunk) for each piece."""
    out, start, pos = [], 0, offset
    while start < length:
        end = min(length, start + period - pos)
        pos = (pos + end - start) % period
        out.append((start, end, pos == 0))
        start = end
    return out


def _slice_time(x, s: int, e: int):
    """Slice a per-head stream [B, H, T, ...] or per-head scalars [B, H, T] along time."""
    if not torch.is_tensor(x):
        return x
    return x[:, :, s:e]


def _after_segment(state: dict, n: int, period: int, completes: bool, flush: bool,
                   recorder=None, name: str = "") -> dict:
    """Advance the offset; at a chunk boundary (or on flush) the running state becomes visible."""
    state = dict(state, offset=(state["offset"] + n) % period, pos=state["pos"] + n)
    if completes or flush:
        state["W"] = state["M"]
        state["offset"] = 0
        if recorder is not None:  # the cadence audit (eager runs only)
            recorder(name, state["pos"])
    return state


def _log_gate(gate, like: Tensor) -> Tensor:
    if gate is None:
        return torch.zeros(like.shape[:3], dtype=like.dtype, device=like.device)
    if not torch.is_tensor(gate):
        return torch.full(like.shape[:3], math.log(max(float(gate), 1e-35)), dtype=like.dtype, device=like.device)
    return torch.log(gate.clamp_min(1e-35)).clamp_min(LOG_FLOOR)


def _cumsum_tokens(log: Tensor, factor) -> Tensor:
    """The running sum over tokens (last axis) of the logs of `factor`, a gate or momentum. A
    constant factor (a number, or None: no gate, zeros) is summed as a product with a triangle of
    ones: inductor rewrites the cumsum of a constant (`full`) into a broadcast, whose layout then
    differs between two calls of one compiled region that save it, and the region fails to
    compile ("subgraph args must have consistent values!"; loop mode "region")."""
    if torch.is_tensor(factor):
        return torch.cumsum(log, dim=-1)
    n = log.shape[-1]
    return log @ torch.ones(n, n, dtype=log.dtype, device=log.device).triu()


def _as_tokens(x, like: Tensor) -> Tensor:
    """A per-token coefficient as [B, H, N] (constants broadcast)."""
    if torch.is_tensor(x):
        return x
    return torch.full(like.shape[:3], float(x), dtype=like.dtype, device=like.device)


def _masked_exp(log: Tensor, mask: Tensor) -> Tensor:
    """exp(log) where `mask`, zero elsewhere; the masked-out logs never reach exp (they may be
    large positive differences that overflow, and their gradient would be inf * 0)."""
    zeros = torch.zeros_like(log)
    return torch.where(mask, torch.exp(torch.where(mask, log, zeros)), zeros)


def momentum_weights(theta: Tensor, lg: Tensor, lb: Tensor, factors: tuple | None = None):
    """The closed form of n tokens of GD with momentum and retention (Titans Eqs. 9-10, 13, 16-18):

        S_t = beta_t S_{t-1} - theta_t G_t,    M_t = gamma_t M_{t-1} + S_t

    theta, lg = log gamma_t, lb = log beta_t: [..., n]; `factors`: the gate and momentum they are
    the logs of, where either may be a constant (`_cumsum_tokens`). Returns the per-token
    weights w, u [..., n] and the per-segment factors gam, c_s, b_n [...] with

        M_n = gam M_0 + c_s S_0 - sum_s w_s G_s,    S_n = b_n S_0 - sum_s u_s G_s.
    """
    gamma, beta = factors if factors is not None else (lg, lb)
    cum = _cumsum_tokens(lg, gamma)  # log Gamma_t
    total = cum[..., -1:]  # log Gamma_n
    cb = _cumsum_tokens(lb, beta)  # log B_t
    n = lg.shape[-1]
    # R[r, s] = (Gamma_n / Gamma_r) (B_r / B_s) for s <= r: how much of token s's step
    # reaches the end of the segment through the momentum and then the retention
    log_r = (total[..., :, None] - cum[..., :, None]) + (cb[..., :, None] - cb[..., None, :])
    tri = torch.ones(n, n, dtype=torch.bool, device=lg.device).tril()
    r = _masked_exp(log_r, tri)
    w = theta * r.sum(dim=-2)  # weight of token s's gradient in M_n
    c_s = torch.exp(total - cum + cb).sum(dim=-1)  # weight of S_0 in M_n
    u = theta * torch.exp(cb[..., -1:] - cb)  # weight of token s's gradient in S_n
    return w, u, torch.exp(total[..., 0]), c_s, torch.exp(cb[..., -1])


def weighted_sum(w: Tensor, d: Tensor, a: Tensor) -> Tensor:
    """sum_s w_s d_s a_sᵀ per batch item (and head): w [..., n], d [..., n, out], a [..., n, in]
    -> [..., out, in]; the sum of n weighted rank-one gradients (one product).

    Written as dᵀ (w∘a), the weight on the layer inputs and d transposed as a view. As an einsum
    the weight went on d, and under torch.compile inductor wrote w∘d out transposed ([out, n]
    rows from [n, out] ones) for the product; its C++ backend leaves such a loop nest scalar. In
    the compiled Titans layer that was 13 of its 19 scalar kernels (`benchmarks/step_profile.py
    --anchor-layer`). d's transpose is a view that bmm reads as it is, without a copy."""
    return torch.matmul(d.transpose(-1, -2), w[..., None] * a)


def load_initial_weights(source: tuple, name: str, heads: int, dims: tuple[int, ...]) -> list[Tensor]:
    """`init checkpoint(path, key)`: a memory's initial weights from a safetensors file -- one
    tensor `key` for a single matrix, or `key.0`, `key.1`, ... per MLP layer, each [out, in]
    (shared by every head) or [heads, out, in]. NL §7.3 stacks levels this way: a CMS level
    starting from a pre-trained MLP."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from nestc.diagnostics import NestError, Pos

    path, key = source
    where = Pos(file=str(path))
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise NestError.at(where, f"box `{name}`: cannot read its initial state: {e}",
                           hint="`init checkpoint(path, key)` needs a safetensors file; a relative "
                                "path is relative to the spec file") from None
    layers = len(dims) - 1
    out = []
    for i in range(layers):
        names = [f"{key}.{i}"] + ([key] if layers == 1 else [])
        found = next((n for n in names if n in tensors), None)
        want = (dims[i + 1], dims[i])
        if found is None:
            raise NestError.at(where, f"box `{name}`: no tensor `{names[0]}` for layer {i} of its "
                               f"initial state", hint=f"the file has: {', '.join(sorted(tensors)[:8])}")
        t = tensors[found].float()
        if tuple(t.shape) == want:
            t = t.expand(heads, *want).clone()
        if tuple(t.shape) != (heads, *want):
            raise NestError.at(where, f"box `{name}`: `{found}` has shape {tuple(t.shape)}, but layer "
                               f"{i} needs {want} or {(heads, *want)}")
        out.append(t)
    return out


class PendingUpdates:
    r"""One layer's weights at a chunk start, kept as the state entering the call plus the updates
    since, never materialised (the dual form of rule deep_memory_chunked, `DeepMemory._dual`):

    .. math::

        W_c = \Gamma_c W_0 - \sum_{s < c} (\Gamma_c / \Gamma_s)\, u_s a_s^\top

    a [B,H,S,in]: the layer inputs of the S tokens before the chunk; u [B,H,S,out]: their output
    errors times the learning rate; log_s [B,H,S]: log Γ up to each of them; log_c [B,H]: log Γ up
    to the chunk start (both None without a retention gate). Then W_c x = Γ_c W_0 x - U ((A x) ∘
    coef) costs a product with the S past tokens instead of a pass over the whole state."""

    def __init__(self, w0: Tensor, a: Tensor, u: Tensor, log_s: Tensor | None, log_c: Tensor | None):
        self.w0, self.a, self.u, self.log_s, self.log_c = w0, a, u, log_s, log_c

    def _scale(self, out: Tensor) -> Tensor:
        return out if self.log_c is None else out * torch.exp(self.log_c)[..., None, None]

    def _weigh(self, scores: Tensor) -> Tensor:  # scores [B,H,N,S]
        if self.log_c is None:
            return scores
        return scores * torch.exp(self.log_c[..., None] - self.log_s)[:, :, None, :]

    def times(self, x: Tensor) -> Tensor:
        scores = self._weigh(torch.einsum("bhnd,bhsd->bhns", x, self.a))
        return self._scale(_times(self.w0, x)) - torch.einsum("bhns,bhse->bhne", scores, self.u)

    def times_t(self, y: Tensor) -> Tensor:
        scores = self._weigh(torch.einsum("bhne,bhse->bhns", y, self.u))
        return self._scale(_times_t(self.w0, y)) - torch.einsum("bhns,bhsd->bhnd", scores, self.a)


# ---------------------------------------------------------------------------------------------
# DeepMemory
# ---------------------------------------------------------------------------------------------


@dataclass
class MemorySettings:
    heads: int
    shape: MLPShape
    period: int = 1
    optimizer: str = "gd"  # gd | momentum | dgd
    dgd_step: str = "exact"  # exact | paper | neurips
    dgd_decay_keys: str = "layer"  # layer | first
    read: str = "before"  # before | after
    reset: object = "sequence"  # sequence | never | int (tokens)
    init: str = "meta"  # meta | zeros | identity | random | checkpoint
    init_std: float = 0.02
    init_from: tuple | None = None  # (safetensors path, key) for init "checkpoint"
    grad: str = "through"  # through | stop (stop-gradient writes)
    form: str = "auto"  # auto | state | dual: how plain GD keeps its chunk-start weights (DeepMemory._dual)
    grad_state: str = "chunk_start"  # chunk_start | call_start: the state inner gradients are taken at
    grad_at: str = "previous"  # previous | retained: before the retention gate or after (GeneralMemory)
    name: str = "memory"
    extra: dict = field(default_factory=dict)


class DeepMemory(nn.Module):
    """A matrix or MLP memory learned chunk by chunk (rule deep_memory_chunked)."""

    recorder = None  # set by nestc.runtime.audit to observe every commit

    def __init__(self, settings: MemorySettings):
        super().__init__()
        self.s = settings
        shape = settings.shape
        h = settings.heads
        inits = []
        for i in range(shape.layers):
            d_in, d_out = shape.dims[i], shape.dims[i + 1]
            if settings.init == "zeros":
                w = torch.zeros(h, d_out, d_in)
            elif settings.init == "identity":
                w = torch.zeros(h, d_out, d_in)
                if shape.layers == 1 and d_in == d_out:
                    w = torch.eye(d_in).expand(h, d_in, d_in).clone()
            else:
                # a residual MLP starts close to the identity map: small output layer
                std = settings.init_std if settings.init == "random" else 1.0 / math.sqrt(d_in)
                if shape.residual and i == shape.layers - 1:
                    std = settings.init_std
                w = torch.randn(h, d_out, d_in) * std
            inits.append(w)
        if settings.init == "checkpoint":
            inits = load_initial_weights(settings.init_from, settings.name, h, shape.dims)
        if settings.init == "meta":
            self.init_weights = nn.ParameterList([nn.Parameter(w) for w in inits])
        else:
            for i, w in enumerate(inits):
                self.register_buffer(f"init_w{i}", w)
            self.init_weights = None

    # -- state --
    def _inits(self) -> list[Tensor]:
        if self.init_weights is not None:
            return list(self.init_weights)
        return [getattr(self, f"init_w{i}") for i in range(self.s.shape.layers)]

    def initial_state(self, batch: int) -> dict:
        ws = [w.unsqueeze(0).expand(batch, *w.shape) for w in self._inits()]
        state = {"W": ws, "M": ws, "offset": 0, "pos": 0}
        if self.s.optimizer == "momentum":
            state["S"] = [torch.zeros_like(w) for w in ws]
        return state

    def apply(self, weights: list[Tensor], x: Tensor) -> Tensor:
        return mlp_apply(self.s.shape, weights, x)

    def read(self, state: dict, query: Tensor) -> Tensor:
        """Read with the committed state (the chunk-start state of the current chunk)."""
        return self.apply(state["W"], query)

    def apply_initial(self, query: Tensor) -> Tensor:
        """Read with the initial state (the first pass of a local-surprise-signal step)."""
        ws = [w.unsqueeze(0).expand(query.shape[0], *w.shape) for w in self._inits()]
        return self.apply(ws, query)

    def _inner(self, W: list, k: Tensor, target, grad: Callable, query: Tensor | None = None):
        """One segment's inner forward and closed-form backward at weights W: (prediction at
        the keys, per layer (a, delta), the keys' pre-activations, the read at `query` or None).

        `target`: the segment's target tensor, its `SelfValues`, or a function of the weights;
        `grad(pred, target)`: d objective / d pred. Self-generated values' inputs and `query`
        go through the keys' products (one pass over the state for all of them)."""
        extra = [t for t in ((target.inputs if isinstance(target, SelfValues) else None), query) if t is not None]
        pred, acts, pres, outs = mlp_forward(self.s.shape, W, k, tuple(extra))
        if isinstance(target, SelfValues):
            tgt = outs.pop(0)
            tgt = tgt.detach() if target.stop else tgt
        else:
            tgt = target(W) if callable(target) else target
        layers = mlp_backward(self.s.shape, W, acts, pres, grad(pred, tgt))
        if self.s.grad == "stop":
            layers = [(a.detach(), d.detach()) for a, d in layers]
        return pred, layers, pres, (outs[0] if query is not None else None)

    @staticmethod
    def _segment_target(target, s: int, e: int):
        """The target of tokens s:e (a function of the weights stays one, told the span)."""
        if isinstance(target, SelfValues):
            return target.chunk(s, e)
        if callable(target):
            return lambda W: target(W, s, e)
        return target[:, :, s:e]

    # -- processing --
    def forward(self, state: dict, *, keys: Tensor, target, lr=1.0, gate=None, beta=None,
                query: Tensor | None = None, out_grad: Callable, flush: bool = False):
        """Process T tokens; returns (read output [B,H,T,d_out] or None, new state).

        keys [B,H,T,d_in]; target [B,H,T,d_out], `SelfValues` (v̂ = M(e)), or a callable
        (weights, s, e) -> target for other self-generated values; lr, gate, beta: [B,H,T] or constants; query [B,H,T,d_in] (read
        with the committed state, or the updated one for `read after` at period 1).
        """
        T = keys.shape[2]
        if self.s.grad_state == "call_start":
            if self._can_parallel(state, T):
                return self._parallel(state, keys, target, lr, gate, beta, query, out_grad)
        elif self._can_scan(state, T, flush, target, out_grad):
            return self._scan(state, keys, target, lr, gate, beta, query, out_grad)
        elif self._can_call(state, T, flush, target, out_grad):
            return self._call_chunks(state, keys, target, lr, gate, beta, query, out_grad)
        elif self._can_dual(state, T):
            return self._dual(state, keys, target, lr, gate, query, out_grad)
        # (the scan and the dual form take gradients at each chunk's start, so call_start skips
        # them) grad_state call_start: every gradient of the call at the state the call began with
        W_call = state["W"]
        outs = []
        for s, e, completes in segments(T, self.s.period, state["offset"]):
            W = state["W"]
            Wg = W if self.s.grad_state == "chunk_start" else W_call
            k = keys[:, :, s:e]
            # queries that are the keys (codegen passes one tensor) read what the inner forward
            # computes; other queries read W in the same products when the gradients are taken at W
            reads = query is not None and self.s.read == "before"
            shared = reads and query is not keys and Wg is W
            pred, layers, pres, read = self._inner(Wg, k, self._segment_target(target, s, e),
                                                   lambda p, t: out_grad(p, t, s, e),
                                                   query[:, :, s:e] if shared else None)
            if reads:
                outs.append(read if shared else pred if query is keys and Wg is W
                            else self.apply(W, query[:, :, s:e]))
            state = self._advance(state, layers, _slice_time(lr, s, e), _slice_time(gate, s, e),
                                  _slice_time(beta, s, e), pres=self._reusable(state, Wg, pres))
            state = _after_segment(state, e - s, self.s.period, completes, flush and e == T,
                                   self.recorder, self.s.name)
            if query is not None and self.s.read == "after":
                outs.append(self.apply(state["M"], query[:, :, s:e]))
            state = self._maybe_reset(state)
        out = torch.cat(outs, dim=2) if outs else None
        return out, state

    # -- plain GD without materialising the chunk-start states --
    def _can_dual(self, state: dict, T: int) -> bool:
        """The dual form of rule deep_memory_chunked, picked per call (it depends on the call's
        length). Plain GD (with or without retention) makes each chunk-start state
        the entering state plus a sum of rank-one updates, so a chunk can read it through the
        past tokens (`PendingUpdates`) instead of writing a new state every chunk. That is cheaper
        while the past tokens' inputs and errors, T (in + out) floats per layer, stay under
        about twice the state's in * out (form "auto"); whole chunks from a boundary only."""
        s = self.s
        if s.form == "state" or s.optimizer != "gd" or not self._whole_chunks(state, T):
            return False
        dims = s.shape.dims
        return s.form == "dual" or all(T * (i + o) <= 2 * i * o for i, o in zip(dims, dims[1:]))

    def _dual(self, state, keys, target, lr, gate, query, out_grad):
        """The chunk loop of `forward` with every chunk-start state kept as `PendingUpdates`; the
        state after the call is materialised once at the end (and dropped by torch.compile when
        nothing reads it, as in training)."""
        T, c = keys.shape[2], self.s.period
        theta = _as_tokens(lr, keys)  # [B,H,T]
        cum = None if gate is None else _cumsum_tokens(_log_gate(gate, keys), gate)  # log Γ_t
        w0 = state["W"]
        A: list = [None] * len(w0)
        U: list = [None] * len(w0)
        W, outs = list(w0), []
        for s in range(0, T, c):
            e = s + c
            shared = query is not None and query is not keys
            pred, layers, _, read = self._inner(W, keys[:, :, s:e], self._segment_target(target, s, e),
                                                lambda p, t: out_grad(p, t, s, e),
                                                query[:, :, s:e] if shared else None)
            if query is not None:
                outs.append(read if shared else pred)
            for i, (a, d) in enumerate(layers):
                u = theta[:, :, s:e, None] * d
                A[i] = a if A[i] is None else torch.cat([A[i], a], dim=2)
                U[i] = u if U[i] is None else torch.cat([U[i], u], dim=2)
            log_s = None if cum is None else cum[:, :, :e]
            log_c = None if cum is None else cum[:, :, e - 1]
            W = [PendingUpdates(w, a, u, log_s, log_c) for w, a, u in zip(w0, A, U)]
        # the whole call as one segment of plain GD (U already carries the learning rates)
        final = self._advance(dict(state, M=list(w0)), list(zip(A, U)), 1.0, gate, None)["M"]
        out = torch.cat(outs, dim=2) if outs else None
        return out, dict(state, W=final, M=final, offset=0, pos=state["pos"] + T)

    # -- gradients at the call's starting state: every chunk at once --
    def _can_parallel(self, state: dict, T: int) -> bool:
        """grad_state call_start with GD or momentum on whole chunks: nothing in the call depends on
        a state the call computes except the reads, so no chunk waits for the one before."""
        return self.s.optimizer in ("gd", "momentum") and self._whole_chunks(state, T)

    def _parallel(self, state, keys, target, lr, gate, beta, query, out_grad):
        r"""The chunk loop of `forward` for grad_state call_start, without a loop over chunks.

        All T tokens' layer inputs a_t and errors delta_t come from one forward and backward of
        the memory at the call's starting state. Each chunk j then contributes P_j = sum_s w_s
        delta_s a_sᵀ (and Q_j = sum_s u_s delta_s a_sᵀ with momentum) with the in-chunk weights of
        `momentum_weights`, all chunks in one batched product, and the chunk-start states follow
        from the chunk-level recurrence in closed form,

        .. math::

            S_c = B_c S_0 - \sum_{j<c} (B_c / B_{j+1}) Q_j, \qquad
            M_c = G_c M_0 + \sum_{j<c} (G_c / G_{j+1}) (\kappa_j S_j - P_j)

        (G_c, B_c: products of the chunks' retention and momentum factors before chunk c;
        kappa_j: the weight of S_j in chunk j's update), one more batched product (a loop over
        the chunks' elementwise recurrence past CLOSED_FORM_CHUNKS chunks). Each chunk's queries
        then read their own chunk-start state, all chunks at once."""
        b, h, T = keys.shape[:3]
        c = self.s.period
        n = T // c
        W0 = state["W"]
        _, layers, _, _ = self._inner(W0, keys, self._segment_target(target, 0, T),
                                      lambda p, t: out_grad(p, t, 0, T))

        def per_chunk(x):  # [B, H, T, ...] -> [B, H * N, C, ...]: each chunk a batch item
            return x.reshape(b, h * n, c, *x.shape[3:])

        a0 = layers[0][0]
        theta, lg = per_chunk(_as_tokens(lr, a0)), per_chunk(_log_gate(gate, a0))
        momentum = self.s.optimizer == "momentum" and beta is not None
        if momentum:
            lb = per_chunk(_log_gate(beta, a0))
            w, u, _, kappa, _ = momentum_weights(theta, lg, lb, (gate, beta))
        else:  # plain GD with retention
            cum = _cumsum_tokens(lg, gate)
            w = theta * torch.exp(cum[..., -1:] - cum)

        def chunk_sums(weights, d, a):  # [B, H, N, out, in]
            g = weighted_sum(weights, per_chunk(d), per_chunk(a))
            return g.reshape(b, h, n, *g.shape[2:])

        def carry(log_f):
            """[B,H,N+1,N]: the product of factors f_i for j < i < c, zero unless j < c; and
            [B,H,N+1]: the product of f_i for i < c."""
            ex = F.pad(torch.cumsum(log_f, dim=-1), (1, 0))  # log of the product before chunk c
            below = torch.ones(n + 1, n, dtype=torch.bool, device=ex.device).tril(-1)
            return _masked_exp(ex[..., :, None] - ex[..., None, 1:], below), torch.exp(ex)

        def unroll(start, log_f, inputs):  # X_c = F_c X_0 + sum_{j<c} (F_c / F_{j+1}) inputs_j
            if n > CLOSED_FORM_CHUNKS:  # the closed form costs N² states, the recurrence N
                f = torch.exp(log_f)
                xs = [start.expand(b, h, *start.shape[2:])]
                for j in range(n):
                    xs.append(f[:, :, j, None, None] * xs[-1] + inputs[:, :, j])
                return torch.stack(xs, 2)
            coef, f = carry(log_f)
            return (f[..., None, None] * start[:, :, None]
                    + torch.einsum("bhcj,bhjed->bhced", coef, inputs))

        # the chunks' factors as logs, summed from the tokens' (finite where exp would underflow)
        log_gam = lg.sum(-1).reshape(b, h, n)
        M, S = [], []
        for i, ((a, d), m0) in enumerate(zip(layers, state["M"])):
            P = chunk_sums(w, d, a)
            if momentum:
                Q = chunk_sums(u, d, a)
                s_all = unroll(state["S"][i], lb.sum(-1).reshape(b, h, n), -Q)  # S_0 .. S_N
                S.append(s_all)
                P = kappa.reshape(b, h, n)[..., None, None] * s_all[:, :, :n] - P
            else:
                P = -P
            M.append(unroll(m0, log_gam, P))  # M_0 .. M_N
        final = [m[:, :, n] for m in M]
        new_state = dict(state, W=final, M=final, pos=state["pos"] + T)
        if momentum:
            new_state["S"] = [s[:, :, n] for s in S]
        out = None
        if query is not None:  # chunk j's queries read M_j
            starts = [m[:, :, :n].reshape(b, h * n, *m.shape[3:]) for m in M]
            out = self.apply(starts, per_chunk(query)).reshape(b, h, T, -1)
        return out, new_state

    # -- the chunk loop as one traced body (torch.compile) --
    def _can_scan(self, state: dict, T: int, flush: bool, target, out_grad) -> bool:
        """Under torch.compile in loop mode "scan" (nestc.runtime.ops.set_loop_mode), a stream of
        whole chunks from a chunk boundary runs as a scan: the loop body is traced once instead
        of once per chunk. Eager runs keep the plain loop, which also serves the audit recorder,
        flushes and resets. So does a target given as a function of the weights and the span
        (s, e), or an objective gradient that reads other streams at the span (`_span_free`):
        inside a scan the span is not a Python int, and the function would read the first
        chunk's inputs at every chunk (self-generated values come as `SelfValues`)."""
        from .ops import loop_mode

        return (torch.compiler.is_compiling() and loop_mode() == "scan" and not flush
                and self._whole_chunks(state, T) and not callable(target) and _span_free(out_grad))

    # -- the chunk loop run between graphs, each chunk a call of one compiled step --
    def _can_call(self, state: dict, T: int, flush: bool, target, out_grad) -> bool:
        """Under torch.compile in loop mode "call", a call of whole chunks from a chunk boundary
        runs its chunks between graphs, each a call of one compiled chunk step (`_call_chunks`),
        as a block's chunk loop does in that mode (nestc.runtime.ops._call_loop): the step is
        compiled once for every chunk, layer and later step, instead of every chunk unrolled
        into the layer's graph (CMS levels and Hope's main memory loop inside one memory call).
        What the scan needs, it needs too."""
        from .ops import loop_mode

        return (torch.compiler.is_compiling() and loop_mode() == "call" and not flush
                and self._whole_chunks(state, T) and not callable(target) and _span_free(out_grad))

    @torch.compiler.disable
    def _call_chunks(self, state, keys, target, lr, gate, beta, query, out_grad):
        """The chunk loop of `forward` (gradients at each chunk's start), run eagerly in the middle
        of a compiled step (dynamo breaks the graph at this call), each chunk one call of
        `_chunk_step` compiled by itself. The carried states go in as every chunk's outputs come
        out (contiguous, requiring grad when the outputs will), so no chunk compiles a variant of
        its own; the chunks see fixed positions, fixed up once at the end."""
        from .ops import _as_carried, _grad_anchor, compiled_fn

        T, c = keys.shape[2], self.s.period
        self_values = isinstance(target, SelfValues)
        stream = target.inputs if self_values else target
        read_q = None if query is None or query is keys else query  # keys that are the queries: the prediction
        inputs = [*state["W"], *state.get("S", []), keys, stream, read_q, lr, gate, beta, *self.parameters()]
        anchor = _grad_anchor(inputs)
        W = [_as_carried(w, anchor) for w in state["W"]]
        S = [_as_carried(v, anchor) for v in state["S"]] if "S" in state else None
        step = compiled_fn(type(self), f"{self.s.name}_chunk", _chunk_step)
        outs = []
        for s in range(0, T, c):
            e = s + c
            W, S, read = step(self, W, S, keys[:, :, s:e], stream[:, :, s:e], self_values,
                              target.stop if self_values else False, _slice_time(lr, s, e),
                              _slice_time(gate, s, e), _slice_time(beta, s, e),
                              None if read_q is None else read_q[:, :, s:e], query is not None, out_grad)
            outs.append(read)
        new_state = dict(state, W=W, M=W, offset=0, pos=state["pos"] + T)
        if S is not None:
            new_state["S"] = S
        return (torch.cat(outs, dim=2) if query is not None else None), new_state

    def _whole_chunks(self, state: dict, T: int) -> bool:
        """What the scan and the dual form both need: a call of whole chunks (more than one) from
        a chunk boundary, and nothing only the per-segment loop does (`_acts_between_segments`,
        reads after the update)."""
        s = self.s
        return (state["offset"] == 0 and T % s.period == 0 and T // s.period > 1 and s.read == "before"
                and not self._acts_between_segments())

    def _acts_between_segments(self) -> bool:
        """Whether the per-segment loop does Python work between segments that no scan or batched
        form can: the cadence audit's recorder, or a reset after a token count."""
        r = self.s.reset
        return self.recorder is not None or (isinstance(r, int) and not isinstance(r, bool))

    def _scan(self, state, keys, target, lr, gate, beta, query, out_grad):
        b, h, T = keys.shape[:3]
        c = self.s.period

        def chunks(x):  # [B, H, T, ...] -> [T/C, B, H, C, ...] (constants pass through)
            if not torch.is_tensor(x):
                return None
            return x.reshape(b, h, T // c, c, *x.shape[3:]).movedim(2, 0)

        self_values = isinstance(target, SelfValues)
        xs = {"k": chunks(keys), "t": chunks(target.inputs if self_values else target),
              "lr": chunks(lr), "gate": chunks(gate), "beta": chunks(beta),
              "q": chunks(query)}
        xs = {k: v for k, v in xs.items() if v is not None}
        momentum = "S" in state

        def body(carry, x):
            W = list(carry["W"])
            tgt = SelfValues(x["t"], target.stop) if self_values else x["t"]
            _, layers, pres, _ = self._inner(W, x["k"], tgt, lambda p, t: out_grad(p, t, 0, c))
            st = {"W": W, "M": W, "offset": 0, "pos": 0}
            if momentum:
                st["S"] = list(carry["S"])
            st = self._advance(st, layers, x.get("lr", lr), x.get("gate", gate), x.get("beta", beta),
                               pres=self._reusable(st, W, pres))
            # fresh contiguous tensors: scan's carry must not alias its input and must keep the
            # initial layout (the DGD kernel returns transposed states)
            new = {"W": [m.clone(memory_format=torch.contiguous_format) for m in st["M"]]}
            if momentum:
                new["S"] = [v.clone(memory_format=torch.contiguous_format) for v in st["S"]]
            y = self.apply(W, x["q"]).clone() if "q" in x else keys.new_zeros(())
            return new, y

        init = {"W": [w.contiguous() for w in state["W"]]}
        if momentum:
            init["S"] = [v.contiguous() for v in state["S"]]
        final, ys = scan(body, init, xs)
        new_state = dict(state, W=final["W"], M=final["W"], pos=state["pos"] + T)
        if momentum:
            new_state["S"] = final["S"]
        out = ys.movedim(0, 2).reshape(b, h, T, -1) if query is not None else None
        return out, new_state

    def _maybe_reset(self, state: dict) -> dict:
        r = self.s.reset
        if isinstance(r, int) and not isinstance(r, bool) and state["pos"] % r == 0 and state["offset"] == 0:
            fresh = self.initial_state(state["W"][0].shape[0])
            fresh["pos"] = state["pos"]
            return fresh
        return state

    def _reusable(self, state: dict, W: list[Tensor], pres: list[Tensor]) -> list[Tensor] | None:
        """The pre-activations of the inner gradients' forward, where they are what DGD's delta
        rule reads at its keys: the state being advanced is the committed one they were computed
        at (a chunk that starts on a boundary), and gradients flow through the inner step."""
        if self.s.optimizer != "dgd" or self.s.grad == "stop":
            return None
        if not all(m is w for m, w in zip(state["M"], W)):
            return None
        return pres

    def _advance(self, state: dict, layers, lr, gate, beta, pres=None) -> dict:
        """The running state after the segment's tokens, gradients at the committed state."""
        a0 = layers[0][0]
        theta = _as_tokens(lr, a0)  # [B,H,n]
        lg = _log_gate(gate, a0)  # log gamma_t
        cum = _cumsum_tokens(lg, gate)  # log Gamma_t
        total = cum[..., -1:]  # log Gamma_n
        opt = self.s.optimizer
        new_M, new_S = [], []
        if opt == "dgd":
            return self._advance_dgd(state, layers, theta, gate, lg, cum, total, pres)
        if opt == "momentum" and beta is not None:
            w, u, gam, c_s, b_n = momentum_weights(theta, lg, _log_gate(beta, a0), (gate, beta))
            for (a, d), m, s0 in zip(layers, state["M"], state["S"]):
                grad_w, grad_u = weighted_sum(w, d, a), weighted_sum(u, d, a)
                new_M.append(gam[..., None, None] * m + c_s[..., None, None] * s0 - grad_w)
                new_S.append(b_n[..., None, None] * s0 - grad_u)
            return dict(state, M=new_M, S=new_S)
        # plain GD with retention: M_n = Gamma_n M_0 - sum_s (Gamma_n / Gamma_s) theta_s G_s
        w = theta * torch.exp(total - cum)
        gam = torch.exp(total[..., 0])
        for (a, d), m in zip(layers, state["M"]):
            new_M.append(gam[..., None, None] * m - weighted_sum(w, d, a))
        return dict(state, M=new_M)

    def _advance_dgd(self, state, layers, theta, gate, lg, cum, total, pres=None) -> dict:
        """Delta gradient descent, NL Eq. 88, per layer along the layer's own input a_t:

            M_t = M_{t-1} (gamma_t I - b_t a_t a_tᵀ) - c_t delta_t a_tᵀ

        with b = c = eta / (1 + eta |a|²) ("exact", the Sherman-Morrison solution of NL Eq. 56),
        b = c = eta ("paper"), or b = 1, c = eta ("neurips")."""
        new_M = []
        step = self.s.dgd_step
        if torch.compiler.is_compiling():
            # Inductor recomputes the delta rule's small factors in the backward from saved
            # inputs, and in long unrolled Hope graphs it gave them a layout with the batch axis
            # innermost (following the per-head scalars, which arrive heads-last), a layout
            # ATen's CPU bmm cannot batch: it loops over the batch, copying every item. Pinned
            # inputs keep most of those calls batched; benchmarks/audit_bmm_layouts.py counts them.
            theta, lg = fixed_layout_copy(theta), fixed_layout_copy(lg)
            layers = [(fixed_layout_copy(a), fixed_layout_copy(d)) for a, d in layers]
            if pres is not None:
                pres = [fixed_layout_copy(z) for z in pres]
        for i, ((a, d), m) in enumerate(zip(layers, state["M"])):
            decays = self.s.dgd_decay_keys == "layer" or i == 0
            if step == "exact":
                b = theta / (1.0 + theta * (a * a).sum(-1))
                c = b
            elif step == "paper":
                b, c = theta, theta
            else:
                b, c = torch.ones_like(theta), theta
            if decays and pres is not None:
                m_new = delta_rule_step(a, -c[..., None] * d, b, lg, m, pres[i])
            elif decays:
                _, m_new = delta_rule(None, a, -c[..., None] * d, b=b, log_g=lg,
                                      initial_state=m, chunk=max(a.shape[2], 1))
            else:
                w = c * torch.exp(total - cum)
                m_new = torch.exp(total[..., 0])[..., None, None] * m - weighted_sum(w, d, a)
            new_M.append(m_new)
        return dict(state, M=new_M)


def _span_free(out_grad) -> bool:
    """Whether an objective gradient ignores the span (s, e) it is told. The code generator's
    gradients read other streams only through the enclosing forward's variables, sliced to the
    span, so one without a closure reads none (l2, dot, and any objective of M(k) and v alone).
    (Its code's free variables, which dynamo can read where it cannot read `__closure__`.)"""
    return not out_grad.__code__.co_freevars


def _chunk_step(mem: "DeepMemory", W: list, S: list | None, k: Tensor, target: Tensor,
                self_values: bool, stop: bool, lr, gate, beta, query: Tensor | None, reads: bool, out_grad):
    """One chunk of `DeepMemory._call_chunks`: the inner gradients at the chunk-start weights W,
    the update, and the chunk's read (the prediction at the keys when the keys are the queries,
    the read at `query` otherwise, None without reads). Returns (new weights, new momentum or
    None, read), the states contiguous: what the next chunk gets."""
    c = k.shape[2]
    tgt = SelfValues(target, stop) if self_values else target
    pred, layers, pres, read = mem._inner(W, k, tgt, lambda p, t: out_grad(p, t, 0, c), query)
    state = {"W": W, "M": W, "offset": 0, "pos": 0}
    if S is not None:
        state["S"] = S
    state = mem._advance(state, layers, lr, gate, beta, pres=mem._reusable(state, W, pres))
    new_S = [v.contiguous() for v in state["S"]] if S is not None else None
    out = None if not reads else (read if query is not None else pred)
    return [m.contiguous() for m in state["M"]], new_S, out


@torch.library.custom_op("nestc::fixed_layout_copy", mutates_args=())
def fixed_layout_copy(x: Tensor) -> Tensor:
    """A contiguous copy that torch.compile keeps as one (an opaque op: inductor neither fuses it
    nor re-lays its output out). See `DeepMemory._advance_dgd` for why."""
    return x.clone(memory_format=torch.contiguous_format)


@fixed_layout_copy.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


fixed_layout_copy.register_autograd(lambda ctx, grad: grad)


# ---------------------------------------------------------------------------------------------
# DeltaMemory: matrix memory at every token (linear attention, DeltaNet, Gated DeltaNet)
# ---------------------------------------------------------------------------------------------


class DeltaMemory(nn.Module):
    """M_t = M_{t-1}(g_t I - b_t k_t k_tᵀ) + c_t v_t k_tᵀ at every token, exactly, in chunked form.

    `kind` is "l2" (the delta rule: b = c = lr * 2 * scale, objective scale * |Mk - v|²) or "dot"
    (Hebbian: b = 0, c = -lr * scale for objective scale * <Mk, v>). With `grad_at="retained"`
    the gradient is taken at the gated state (Gated DeltaNet's form: b = g * lr).
    """

    def __init__(self, heads: int, d_in: int, d_out: int, kind: str, scale: float,
                 init: str = "zeros", read: str = "after", chunk: int = 64, grad_at: str = "previous",
                 reset: object = "sequence", init_from: tuple | None = None, name: str = "memory"):
        super().__init__()
        self.heads, self.d_in, self.d_out = heads, d_in, d_out
        self.kind, self.scale, self.read, self.chunk = kind, scale, read, chunk
        self.grad_at, self.reset = grad_at, reset
        w = torch.zeros(heads, d_out, d_in)
        if init == "identity" and d_in == d_out:
            w = torch.eye(d_in).expand(heads, d_in, d_in).clone()
        if init == "checkpoint":
            (w,) = load_initial_weights(init_from, name, heads, (d_in, d_out))
        if init == "meta":
            self.init_state = nn.Parameter(w)
        else:
            self.register_buffer("init_state", w)

    def initial_state(self, batch: int) -> dict:
        return {"S": self.init_state.unsqueeze(0).expand(batch, *self.init_state.shape), "pos": 0}

    def forward(self, state: dict, *, query: Tensor | None, keys: Tensor, values: Tensor, lr=1.0,
                gate=None, flush: bool = False):
        lr_t = _as_tokens(lr, keys)
        log_g = _log_gate(gate, keys) if gate is not None else None
        if self.kind == "l2":
            c = lr_t * (2.0 * self.scale)
            b = c * torch.exp(log_g) if (self.grad_at == "retained" and log_g is not None) else c
        else:
            c = -lr_t * self.scale
            b = None
        o, s_new = delta_rule(query, keys, c[..., None] * values, b=b, log_g=log_g,
                              initial_state=state["S"], chunk=self.chunk,
                              inclusive=self.read == "after")
        new = {"S": s_new, "pos": state["pos"] + keys.shape[2]}
        if isinstance(self.reset, int) and not isinstance(self.reset, bool):
            raise NotImplementedError("reset every N tokens is lowered through DeepMemory")
        return o, new


# ---------------------------------------------------------------------------------------------
# GeneralMemory: the per-token reference for everything else
# ---------------------------------------------------------------------------------------------


def _root(x: Tensor) -> Tensor:
    """sqrt(x) with gradient 0 where x is 0, where torch's is inf. Adam's second moment is
    exactly 0 wherever every gradient so far was (a ReLU memory's dead units, a layer behind a
    zero-initialised one), and the outer backward through sqrt would give inf * 0 = NaN there
    (d sqrt(x)/dx = inf times dx/dg = 2 (1 - b2) g = 0). The product itself stays bounded as g
    goes to 0 (its limit is sqrt(1 - b2) sign(g)), and 0 is its value at sign(0) = 0."""
    return guarded(torch.sqrt, x, x > 0)


# what a general-rule box's state carries from token to token: the running weights, momentum, and
# Adam's two moments (those its optimizer keeps)
CARRIED = ("M", "S", "m1", "m2")


class GeneralMemory(DeepMemory):
    """Per-token recurrence inside each chunk, gradients by torch.func (rule memory_general).

    `loss(weights, s, e)` gives the summed objective of the tokens s..e-1 at the given weights
    (the generated code writes it from the spec's objective); `retain(weights, t)` and
    `update(weights, t)` are the spec's retention and update rule when they are not of the
    forms DeepMemory handles.
    """

    def __init__(self, settings: MemorySettings, adam: tuple[float, float, float] | None = None):
        from .inductor_setup import mend_region_bugs

        super().__init__(settings)
        self.adam = adam
        mend_region_bugs()  # its compiled form calls a region per token (or scans its tokens)

    def initial_state(self, batch: int) -> dict:
        state = super().initial_state(batch)
        if (self.s.optimizer == "momentum" or self.s.extra.get("dgd_momentum")) and "S" not in state:
            state["S"] = [torch.zeros_like(w) for w in state["W"]]
        if self.adam is not None:
            state["m1"] = [torch.zeros_like(w) for w in state["W"]]
            state["m2"] = [torch.zeros_like(w) for w in state["W"]]
            state["steps"] = 0
        return state

    def apply(self, weights: list[Tensor], x: Tensor) -> Tensor:
        """Read the memory with plain products. The generated objective reads it through this,
        and torch.func differentiates that read, which _times's two shortcuts get wrong: a state
        shared by the batch (the initial one, expanded) is read with one product of its first
        item, so the gradient with respect to the expanded state lands on batch item 0, summed
        over the batch; and under torch.compile the custom autograd Function that lays out state
        gradients row-major (_StateTimes) gave wrong values inside torch.func.grad (torch 2.13;
        tests/conformance/test_conf_reference_rules.py and tests/compile/test_compile_specs.py
        have a case for each)."""
        return mlp_apply(self.s.shape, weights, x, times=_plain_times)

    def forward(self, state: dict, *, length: int, loss=None, lr=1.0, gate=None, beta=None,
                retain=None, update=None, query: Tensor | None = None, flush: bool = False,
                layer_inputs: Callable | None = None, proximal=None, streams: dict | None = None,
                owner: nn.Module | None = None):
        """`streams`: the box's named streams per head ({name: [B, H, T, w]}, or constants); the
        spec's closures read one token's slice of them, z = {name: [B, H, 1, w]}: `loss(W, z)`
        (the objective at weights W), `retain(Ms, z)`, `update(W, z)`, `layer_inputs(W, z)`.
        `proximal`: the weight w of `retention proximal(w)`, a constant or [B, H, T]: each
        token's objective gains w/2 |W - W_0|², W_0 the box's initial state (its `init`).
        `owner`: the block whose methods those functions are (generated code's are), if any.

        Under torch.compile each token's step (and the reads it makes) is one call of
        `_token_step`, a compiled region, or in loop mode "scan" the tokens run as one scan
        (`_token_scan`); either way dynamo traces one token's step once, where an unrolled loop
        traced every token's torch.func gradients again (a compile about 3.5 s per token). Eager
        runs take the loop below too (each `_token_step` call then a plain call): the reference
        the compiled forms are tested against."""
        streams = streams or {}
        fns = _by_name((loss, retain, update, layer_inputs), owner)
        per_token = {"lr": lr, "gate": gate, "beta": beta, "proximal": proximal}
        if self._can_scan_tokens(state, length, streams, per_token, query):
            return self._token_scan(state, length, fns, streams, per_token, query, flush)
        # a tensor that requires grad where the tokens' states will (`ops._as_carried`)
        anchor = _grad_anchor([*state["M"], *streams.values(), *per_token.values(), *self.parameters()])
        outs = []
        for s, e, completes in segments(length, self.s.period, state["offset"]):
            for t in range(s, e):
                reads = {}
                if query is not None and self.s.read == "before" and t == s:
                    reads["before"] = query[:, :, s:e]
                if query is not None and self.s.read == "after":
                    reads["after"] = query[:, :, t:t + 1]
                # as every call sees them: contiguous (the initial state is broadcast over the
                # batch) and requiring grad where the state after a token will (zero moments at the
                # start do not); W only where it is not the running state M (a region's inputs may
                # not be one tensor twice), else None
                carried = {k: [_as_carried(x, anchor) for x in state[k]] for k in CARRIED if k in state}
                committed = all(w is m for w, m in zip(state["W"], state["M"]))
                W = None if committed else [w.contiguous() for w in state["W"]]
                coeffs = {k: self._at(v, t) for k, v in per_token.items() if v is not None}
                if self.adam is not None:  # bias corrections as tensors: one region for every step count
                    n = state["steps"] + 1
                    like = carried["M"][0]
                    for k, v in zip(("bc1", "bc2"), self._bias_corrections(n)):
                        coeffs[k] = torch.full((), v, dtype=like.dtype, device=like.device)
                    state = dict(state, steps=n)
                z = {k: _slice_time(v, t, t + 1) for k, v in streams.items()}
                flat = _token_step(self, fns, carried, W, z, coeffs, reads)
                # (M, S, m1, m2 as kept, each one tensor per layer; then the reads)
                layers, n = len(carried["M"]), len(carried) * len(carried["M"])
                new_state, read = flat[:n], flat[n:]
                state = dict(state, **{k: list(new_state[i * layers:(i + 1) * layers]) for i, k in enumerate(carried)})
                for j, v in enumerate(read):
                    # a copy whose gradient is a fresh row-major tensor, the same for every token:
                    # the concatenation's would be a view at an offset that differs per token, and
                    # each layout would cost a backward of the region traced again. The last
                    # token's first read also gives its state a (zero) gradient, as every earlier
                    # token's state gets one from the token after it. (With no read at the last
                    # token, its call is dead code in training.)
                    # (Without grad there is no layout to keep, and dynamo 2.13 traced the
                    # Function's forward under no_grad with its context as `v`: an error.)
                    if anchor is None:
                        outs.append(v)
                        continue
                    last = t == length - 1 and j == 0
                    outs.append(_TiedToState.apply(v, *(new_state if last else ())))
            state = _after_segment(state, e - s, self.s.period, completes, flush and e == length,
                                   self.recorder, self.s.name)
            state = self._maybe_reset(state)
        return (torch.cat(outs, dim=2) if outs else None), state

    def scans_adam_chunks(self) -> bool:
        """Adam on chunks of several tokens: compiled, its tokens run as a scan in every loop mode
        but call (see `_can_scan_tokens`)."""
        return self.adam is not None and self.s.period > 1

    def _can_scan_tokens(self, state: dict, length: int, streams: dict, per_token: dict, query) -> bool:
        """Under torch.compile in loop mode "scan", a call of more than one token runs its tokens
        as one scan (`_token_scan`): traced once, whatever the length, for steps 1.49-1.76x as
        long as the region calls' (benchmarks/results/amd_epyc/general_rule/, in-process A/B at
        64 and 128 tokens). In the other modes, the default "unroll" among them, each token is a
        call of one region (`_token_step`): a compile that grows with the sequence, the faster
        steps. (Loop mode "call" compiles with graph breaks allowed, where torch 2.13's inductor
        cannot lower a scan at all: DataDependentOutputException on the loop index.) Not with
        the cadence audit's recorder (it acts between tokens, in Python), nor where a stream is
        not one slice per token, nor without a query (generated code always reads; a scan with
        no per-token output failed under torch.compile in torch 2.13: IndexError in its
        backward). Resets after a token count run inside the scan (`_resets_in_scan`)."""
        from .ops import loop_mode

        # Adam on chunks of several tokens: torch 2.13's inductor cannot compile the region calls
        # (AssertionError: subgraph args must have consistent values!, or with `reset N` NaN
        # gradients), so those run as a scan in loop modes unroll and region too (call mode
        # lowers no scan: `train.check_call_loops` refuses it)
        adam_chunks = self.scans_adam_chunks() and loop_mode() in ("unroll", "region")
        if not (torch.compiler.is_compiling() and (loop_mode() == "scan" or adam_chunks) and length > 1
                and query is not None):
            return False
        if self.recorder is not None:
            return False
        tensors = [v for v in (*streams.values(), *per_token.values(), query) if torch.is_tensor(v)]
        return all(v.dim() >= 3 and v.shape[2] == length for v in tensors)

    def _token_scan(self, state: dict, length: int, fns: tuple, streams: dict, per_token: dict,
                    query: Tensor | None, flush: bool):
        """The call's tokens as one scan (`ops.scan`): the same steps as the token-by-token loop
        (`step`), with the committed weights W carried beside the running state and replaced by
        it at each token that completes a chunk (a 0/1 flag per token, a `where`). A read before
        the update reads each token's query at W, which holds still inside a chunk: the chunk's
        reads at its start state, as the loop makes them."""
        period, offset = self.s.period, state["offset"]
        commits = [(offset + t + 1) % period == 0 for t in range(length)]
        resets = self._resets_in_scan(state, length, commits)
        keys = [k for k in CARRIED if k in state]
        # fresh contiguous tensors: a scan's carry may not alias its input (W is often M)
        init = {k: [x.clone(memory_format=torch.contiguous_format) for x in state[k]] for k in keys}
        init["W"] = [w.clone(memory_format=torch.contiguous_format) for w in state["W"]]
        like = init["W"][0]

        def tokens(x):  # [B, H, T, ...] -> [T, B, H, 1, ...]: token t's slice as the loop cuts it
            return x.movedim(2, 0).unsqueeze(3)

        xs = {"z": {k: tokens(v) for k, v in streams.items() if torch.is_tensor(v)},
              "c": {k: v.movedim(2, 0)[..., None, None] for k, v in per_token.items() if torch.is_tensor(v)},
              "commit": torch.tensor(commits, device=like.device)}
        xs["q"] = tokens(query)
        fresh = None
        if any(resets):  # the state a reset starts again from, and a 0/1 flag per token
            start = self.initial_state(like.shape[0])
            fresh = {k: [x.contiguous() for x in start[k]] for k in (*keys, "W")}
            xs["reset"] = torch.tensor(resets, device=like.device)
        steps = state.get("steps", 0)
        if self.adam is not None:  # bias corrections per token, from the steps since the last reset
            per_step = []
            for t in range(length):
                steps += 1
                per_step.append(self._bias_corrections(steps))
                steps = 0 if resets[t] else steps
            for k, vs in zip(("bc1", "bc2"), zip(*per_step)):
                xs["c"][k] = torch.tensor(vs, dtype=like.dtype, device=like.device)
        fns = _resolved(fns)
        const_z = {k: v for k, v in streams.items() if not torch.is_tensor(v)}
        const_c = {k: v for k, v in per_token.items() if v is not None and not torch.is_tensor(v)}
        read = self.s.read

        def body(carry, x):
            W = list(carry["W"])
            new = self.step(fns, {k: list(carry[k]) for k in keys}, W, {**const_z, **x["z"]}, {**const_c, **x["c"]})
            ys = self.apply(W if read == "before" else new["M"], x["q"]).clone()
            out = {k: [v.clone(memory_format=torch.contiguous_format) for v in new[k]] for k in keys}
            out["W"] = [torch.where(x["commit"], m, w) for m, w in zip(out["M"], W)]
            if fresh is not None:
                out = {k: [torch.where(x["reset"], f, v) for f, v in zip(fresh[k], vs)] for k, vs in out.items()}
            return out, ys

        final, ys = scan(body, init, xs)
        state = dict(state, **{k: list(final[k]) for k in keys})
        state["W"] = list(final["W"])
        if self.adam is not None:
            state["steps"] = steps
        state = _after_segment(state, length, period, commits[-1], flush, None, self.s.name)
        state = self._maybe_reset(state)
        return ys.movedim(0, 2).flatten(2, 3), state  # [B, H, T, d]

    def _resets_in_scan(self, state: dict, length: int, commits: list[bool]) -> list[bool]:
        """Per token of a scanned call, whether the state starts again from the initial one after
        it: where the token-by-token loop's `_maybe_reset` does, at a chunk boundary whose
        position is a multiple of `reset`. The call's last token is left to that Python check
        after the scan (a flush may end its chunk there)."""
        r = self.s.reset
        if not isinstance(r, int) or isinstance(r, bool):
            return [False] * length
        return [commits[t] and (state["pos"] + t + 1) % r == 0 and t < length - 1 for t in range(length)]

    def _bias_corrections(self, n: int) -> tuple[float, float]:
        """Adam's bias corrections 1 - beta1^n and 1 - beta2^n at its n-th step."""
        b1, b2, _ = self.adam
        return 1 - b1 ** n, 1 - b2 ** n

    @staticmethod
    def _at(x, t: int):
        if torch.is_tensor(x):
            return x[:, :, t][..., None, None]
        return x

    def _kept(self, M: list[Tensor], z: dict, retain, gate) -> list[Tensor]:
        """What the retention keeps of the state before this token's step."""
        if retain is not None:
            return retain(M, z)
        if gate is not None:
            return [gate * m for m in M]
        return M

    def step(self, fns, carried: dict, W: list[Tensor], z: dict, coeffs: dict) -> dict:
        """One token's step: the carried state after it ({"M": ..., and "S", "m1", "m2" where the
        optimizer keeps them}), from the committed weights W and the token's slices z and
        coefficients (lr, gate, beta, proximal, and Adam's bias corrections bc1, bc2)."""
        loss, retain, update, layer_inputs = fns
        gate = coeffs.get("gate")
        M = carried["M"]
        if update is not None:
            # a user-written rule: its increment at the committed state (NL Eq. 71), added to
            # what the retention keeps (as an optimizer box applies a rule to its kept state)
            new = update(W, z)
            return dict(carried, M=[m + (n - w) for m, n, w in zip(self._kept(M, z, retain, gate), new, W)])
        if self.s.grad_at == "retained":  # at the gated state (every token, so W is M_{t-1})
            W = self._kept(list(W), z, retain, gate)
        grads = list(torch.func.grad(lambda ws: loss(ws, z))(list(W)))
        if "proximal" in coeffs:  # d/dW of w/2 |W - W_0|², at the state the gradients are taken at
            w = coeffs["proximal"]
            grads = [g + w * (wt - w0) for g, wt, w0 in zip(grads, W, self._inits())]
        if self.s.grad == "stop":
            grads = [g.detach() for g in grads]
        eta = coeffs["lr"]
        opt = self.s.optimizer
        if opt == "dgd":
            return self._dgd_step(carried, W, z, grads, eta, coeffs, retain, layer_inputs)
        M = self._kept(M, z, retain, gate)
        if opt == "momentum":
            S = [coeffs["beta"] * sv - eta * g for sv, g in zip(carried["S"], grads)]
            return dict(carried, M=[m + sv for m, sv in zip(M, S)], S=S)
        if self.adam is not None:
            b1, b2, eps = self.adam
            m1 = [b1 * a + (1 - b1) * g for a, g in zip(carried["m1"], grads)]
            m2 = [b2 * a + (1 - b2) * g * g for a, g in zip(carried["m2"], grads)]
            M = [m - eta * (a / coeffs["bc1"]) / (_root(c / coeffs["bc2"]) + eps)
                 for m, a, c in zip(M, m1, m2)]
            return dict(carried, M=M, m1=m1, m2=m2)
        return dict(carried, M=[m - eta * g for m, g in zip(M, grads)])

    def _dgd_step(self, carried, W, z, grads, eta, coeffs, retain, layer_inputs) -> dict:
        """NL Eq. 88 for one token: M <- M (gamma I - b a aᵀ) - c grad, per layer along its own
        input a (at the committed state), plus optional Titans-style momentum on the gradient."""
        ins = layer_inputs(W, z)
        out, new_s = [], []
        for i, (m, g, a) in enumerate(zip(carried["M"], grads, ins)):
            a = a[:, :, 0]  # [B,H,in]
            decays = self.s.dgd_decay_keys == "layer" or i == 0
            if self.s.dgd_step == "exact":
                b = eta / (1.0 + eta * (a * a).sum(-1)[..., None, None])
                c = b
            elif self.s.dgd_step == "paper":
                b = c = eta
            else:
                b, c = 1.0, eta
            kept = self._kept([m], z, retain, coeffs.get("gate"))[0]
            if decays:
                kept = kept - b * torch.einsum("bhe,bhd->bhed", torch.einsum("bhed,bhd->bhe", m, a), a)
            if "S" in carried:
                sv = coeffs["beta"] * carried["S"][i] - c * g
                new_s.append(sv)
                out.append(kept + sv)
            else:
                out.append(kept - c * g)
        new = dict(carried, M=out)
        if new_s:
            new["S"] = new_s
        return new


def _by_name(fns: tuple, owner: nn.Module | None) -> tuple:
    """The spec's functions of a general-rule box as `_token_step` takes them: (the block, the
    names of its methods) when they are methods of `owner`, as generated code's are -- dynamo
    reuses a region only for arguments that are tensors, constants or modules, not functions --
    else the functions themselves (a region traced again at every call, but right)."""
    if owner is None:
        return fns
    return owner, tuple(None if f is None else f.__name__ for f in fns)


def _resolved(fns: tuple) -> tuple:
    """`_by_name`'s result as the functions again."""
    if isinstance(fns[0], nn.Module):
        return tuple(None if n is None else getattr(fns[0], n) for n in fns[1])
    return fns


@torch.compiler.nested_compile_region
def _token_step(memory: GeneralMemory, fns: tuple, carried: dict, W: list[Tensor] | None, z: dict,
                coeffs: dict, reads: dict) -> tuple[Tensor, ...]:
    """One token of a general-rule memory as a compiled region (eagerly: a plain call): the carried
    state after the token (each of carried's lists in turn, as one flat tuple: what a region that
    dynamo reuses may return), then the reads asked for. W: the committed weights, None where they are
    the running state carried["M"]. The reads (`reads`): "before", the segment's queries, read
    at W; "after", the token's query, read at the new state. Dynamo traces it once for every call
    alike (same closures, layouts and constants), so every token of every step shares one graph."""
    out = []
    # the gradients handed back for the carried state, contiguous: each token's then match the
    # layout the next token's region gives its own (one backward for all tokens)
    carried = {k: [_ContiguousGrad.apply(x) for x in xs] for k, xs in carried.items()}
    W = carried["M"] if W is None else W
    fns = _resolved(fns)
    if "before" in reads:
        out.append(memory.apply(W, reads["before"]))
    new = memory.step(fns, carried, W, z, coeffs)
    if "after" in reads:
        out.append(memory.apply(new["M"], reads["after"]))
    # a region's output may not be one of its inputs: copy what came back unchanged
    inputs = [x for xs in carried.values() for x in xs] + W
    flat = [x for k in carried for x in new[k]]
    return (*(x.clone() if any(x is y for y in inputs) else x for x in flat), *out)


# ---------------------------------------------------------------------------------------------
# StepMemory: a level that learns across training steps (every C steps)
# ---------------------------------------------------------------------------------------------


class StepMemory(nn.Module):
    """An MLP level updated every C optimizer steps (rule cms_steps, NL Eq. 71 with steps as time).

    Its weights are ordinary parameters, tagged with their period: the trainer accumulates their
    gradients -- the backprop error of the model's loss (values lss, objective dot(M(k), v),
    NL Eq. 31) -- for C steps and applies them with the optimizer only then. The state of a
    sequence does not change it, so its reads need no chunking and no first pass.
    """

    def __init__(self, settings: MemorySettings):
        super().__init__()
        self.s = settings
        shape = settings.shape
        ws = []
        for i in range(shape.layers):
            d_in, d_out = shape.dims[i], shape.dims[i + 1]
            std = 1.0 / math.sqrt(d_in)
            if shape.residual and i == shape.layers - 1:
                std = settings.init_std
            w = torch.randn(settings.heads, d_out, d_in) * std
            if settings.init == "checkpoint":
                w = load_initial_weights(settings.init_from, settings.name, settings.heads, shape.dims)[i]
            w = nn.Parameter(w)
            w._nest_period = settings.period  # read by nestc.runtime.train.partition
            ws.append(w)
        self.weights = nn.ParameterList(ws)

    def initial_state(self, batch: int) -> dict:
        return {}

    def forward(self, query: Tensor) -> Tensor:
        ws = [w.unsqueeze(0).expand(query.shape[0], *w.shape) for w in self.weights]
        return mlp_apply(self.s.shape, ws, query)

