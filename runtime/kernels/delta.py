r"""The general gated delta rule, chunked (fast) and token by token (reference).

Per (batch, head) a matrix state :math:`S \in \mathbb{R}^{D_v \times D_k}` follows

.. math::

    S_t = S_{t-1}\,(g_t I - b_t k_t k_t^\top) + v_t k_t^\top,
    \qquad g_t = e^{\log g_t} \in (0, 1],

and is read as :math:`o_t = S_t q_t` (``inclusive=True``, read after the update) or
:math:`o_t = S_{t-1} q_t` (``inclusive=False``, read before it).

One kernel covers the whole family, by choice of ``b``, ``log_g`` and ``v``:

==========================  ==============  ======================  =============
model                        ``b``            ``log_g``               ``v``
==========================  ==============  ======================  =============
linear attention             ``None``         ``None``                 v
gated linear attention       ``None``         log α                    v
DeltaNet                     β                ``None``                 β v
Gated DeltaNet               α β              log α                    β v
delta gradient descent       η'               log α                    −η δ
==========================  ==============  ======================  =============

Chunked form (WY / UT representation)
-------------------------------------
Inside one chunk of ``C`` tokens, write :math:`\Gamma_t = \prod_{s \le t} g_s` (``Γ_0 = 1``,
computed as ``exp`` of a cumulative sum of ``log_g``) and :math:`S_0` for the state entering
the chunk. Unrolling the recurrence gives

.. math::

    S_t = \Gamma_t S_0 + \sum_{s \le t} \frac{\Gamma_t}{\Gamma_s}\, w_s k_s^\top

where the pseudo-values :math:`w_s` solve the unit lower-triangular system

.. math::

    w_t + b_t \sum_{s<t} \frac{\Gamma_{t-1}}{\Gamma_s} (k_t \cdot k_s)\, w_s
        = v_t - b_t \Gamma_{t-1} S_0 k_t .

(Proof: substitute the ansatz into :math:`S_t = g_t S_{t-1} - b_t (S_{t-1} k_t) k_t^\top
+ v_t k_t^\top`; the terms with :math:`s<t` and the :math:`S_0` term match, leaving
:math:`w_t = v_t - b_t S_{t-1} k_t`, which is the system above.)
The system is linear in :math:`S_0`, so with :math:`A_{ts} = b_t (\Gamma_{t-1}/\Gamma_s)
(k_t \cdot k_s)` for :math:`s<t` it is solved once per chunk, for all chunks in parallel,

.. math::

    U = (I + A)^{-1} V, \qquad M = (I + A)^{-1} \operatorname{diag}(b_t \Gamma_{t-1}) K,
    \qquad W = U - M S_0^\top .

Reads and the carried state are then

.. math::

    o_t = \Gamma_t S_0 q_t + \sum_{s \le t} \frac{\Gamma_t}{\Gamma_s} (k_s \cdot q_t)\, w_s,
    \qquad
    S_C = \Gamma_C S_0 + \sum_{s} \frac{\Gamma_C}{\Gamma_s} w_s k_s^\top

(for ``inclusive=False``: strict :math:`s<t` and :math:`\Gamma_{t-1}` in place of
:math:`\Gamma_t`). Substituting :math:`W` makes both affine in :math:`S_0`; in matrix form,
with :math:`\tilde K_s = (\Gamma_C/\Gamma_s) k_s`, :math:`\tilde Q_t = \Gamma_t q_t` and
:math:`P_{ts} = (\Gamma_t/\Gamma_s)(q_t \cdot k_s)` masked to :math:`s \le t`,

.. math::

    S_C^\top = (\Gamma_C I - \tilde K^\top M)\, S_0^\top + \tilde K^\top U, \qquad
    O = (\tilde Q - P M)\, S_0^\top + P U .

So the only sequential work is the first map, one :math:`D_k \times D_k` by
:math:`D_k \times D_v` product per chunk; every read is then one batched product with the
states entering the chunks. With ``b = None`` the system is the identity (:math:`U = V`,
:math:`M = 0`) and no solve is done: that is chunked (gated) linear attention.

Every ratio :math:`\Gamma_x/\Gamma_s` with :math:`x \ge s` is ``exp(L_x - L_s)`` of a
non-positive difference of cumulative log-gates, so nothing overflows however strong the
decay; pairs that a causal mask drops are set to ``-inf`` *before* the ``exp``.

Layout: ``q, k: [B, H, T, Dk]``, ``v: [B, H, T, Dv]``, per-token scalars ``b, log_g:
[B, H, T]``, state ``[B, H, Dv, Dk]`` (the same orientation as :math:`S` above).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["delta_rule", "delta_rule_step", "naive_delta_rule"]


def delta_rule(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    b: Tensor | None = None,
    log_g: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk: int = 64,
    inclusive: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """Chunked gated delta rule (see the module docstring for the math).

    Args:
        q: queries ``[B, H, T, Dk]``, or ``None`` to only advance the state (then ``o`` is None).
        k: keys ``[B, H, T, Dk]``.
        v: values ``[B, H, T, Dv]``.
        b: delta strength per token ``[B, H, T]`` (broadcastable); ``None`` means 0, i.e. plain
            or gated linear attention, which skips the triangular solve.
        log_g: log of the decay per token ``[B, H, T]`` (broadcastable), finite and ``<= 0``
            (any magnitude: only differences are exponentiated); ``None`` means no decay.
        initial_state: ``[B, H, Dv, Dk]``; ``None`` means zeros.
        chunk: tokens per chunk (64 was fastest on CPU for D = 64, T = 1024, see
            ``benchmarks/kernels.py``); the last chunk is padded with identity tokens
            (``k = v = q = 0``, ``b = 0``, ``g = 1``), which leave the state unchanged.
        inclusive: read ``S_t q_t`` (True) or ``S_{t-1} q_t`` (False).

    Returns:
        ``(o [B, H, T, Dv] or None, final_state [B, H, Dv, Dk])``.
    """
    if _autocast_on(k):
        return _in_float32(delta_rule, q, k, v, b, log_g, initial_state, chunk=chunk, inclusive=inclusive)
    batch, heads, length, d_k = k.shape
    d_v = v.shape[-1]
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    # A chunk longer than the sequence would only add padding work.
    size = max(1, min(chunk, length))
    n_chunks = -(-length // size)
    pad = n_chunks * size - length

    def chunked(x: Tensor) -> Tensor:
        """[B, H, T, *rest] -> [B, H, N, C, *rest], zero padded at the end of time."""
        if pad:
            x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
        return x.reshape(batch, heads, n_chunks, size, *x.shape[3:])

    k_c = chunked(k)
    v_c = chunked(v)
    q_c = chunked(q) if q is not None else None
    b_c = chunked(b.expand(batch, heads, length)) if b is not None else None

    # Causal masks inside a chunk: rows are the reading token t, columns the written token s.
    idx = torch.arange(size, device=k.device)
    strict = idx[:, None] > idx[None, :]  # s < t
    causal = idx[:, None] >= idx[None, :]  # s <= t

    if log_g is None:
        decay = None
    else:
        decay = _ChunkDecay(chunked(log_g.expand(batch, heads, length)))

    # --- Everything that does not depend on the incoming state, for all chunks at once. ---
    # The pseudo-values are W = U - M S_0ᵀ (M = None when b = 0).
    if b_c is None:
        u, m = v_c, None
    else:
        lower = _system(k_c, b_c, decay, strict)
        start_k = b_c[..., None] * k_c  # the S_0 coefficient of the right-hand side,
        if decay is not None:  # b_t Γ_{t-1} k_t
            start_k = start_k * decay.prev_from_start()[..., None]
        # One solve for both right-hand sides; unitriangular=True ignores the diagonal and
        # upper part of `lower` and takes 1 on the diagonal, i.e. it solves (I + A) X = R.
        rhs = torch.cat([v_c, start_k], dim=-1)
        solved = _solve_unit_lower(lower, rhs)
        u, m = solved[..., :d_v], solved[..., d_v:]

    # Carried state, transposed (Sᵀ: [Dk, Dv]) so every product is a right-multiplication:
    #   S_Cᵀ = Γ_C S_0ᵀ + K̃ᵀ W = (Γ_C I - K̃ᵀ M) S_0ᵀ + K̃ᵀ U,   K̃_s = (Γ_C/Γ_s) k_s.
    k_to_end = k_c if decay is None else k_c * decay.end_minus()[..., None]
    k_to_end = k_to_end.transpose(-1, -2)  # [B, H, N, Dk, C]
    chunk_decay = None if decay is None else decay.total()[..., None, None]  # Γ_C
    # A chunk shorter than half the key width (a deep memory's hidden layer read a few tokens at
    # a time) keeps the transition factored: Γ S + K̃ᵀ (U - M S) costs 2 C Dk Dv per chunk, where
    # forming Γ I - K̃ᵀ M costs C Dk² and applying it Dk² Dv. It also writes the full-size state
    # only twice per chunk (Γ S, then one fused product), which is what a small chunk pays for.
    low_rank = m is not None and 2 * size <= d_k
    # K̃ᵀ U [B, H, N, Dk, Dv], for all chunks at once (the low-rank form folds it into its product)
    state_input = None if low_rank else k_to_end @ u
    if m is None or low_rank:
        transition = None  # the map is S_0ᵀ -> Γ_C S_0ᵀ (or the identity), plus the low-rank part
    else:
        transition = -(k_to_end @ m)  # -K̃ᵀ M   [B, H, N, Dk, Dk]
        eye = torch.eye(d_k, dtype=k.dtype, device=k.device)
        transition = transition + (eye if chunk_decay is None else chunk_decay * eye)

    # --- The only sequential part: one affine map of the state per chunk. ---
    if initial_state is None:
        state_t = k.new_zeros(batch, heads, d_k, d_v)
    else:
        state_t = initial_state.transpose(-1, -2)
    # unbind rather than indexing in the loop: the backward of unbind stacks the chunk
    # gradients once instead of adding a full-size zero tensor per chunk.
    inputs_n = state_input.unbind(2) if state_input is not None else [None] * n_chunks
    transitions_n = transition.unbind(2) if transition is not None else [None] * n_chunks
    decays_n = chunk_decay.unbind(2) if chunk_decay is not None else [None] * n_chunks
    factors_n = zip(k_to_end.unbind(2), m.unbind(2), u.unbind(2)) if low_rank else [None] * n_chunks
    entering = []  # Sᵀ entering each chunk
    for input_, transition_, decay_, factors in zip(inputs_n, transitions_n, decays_n, factors_n):
        entering.append(state_t)
        if transition_ is not None:
            state_t = transition_ @ state_t + input_
        elif factors is not None:  # Γ S + K̃ᵀ (U - M S), as one fused batched product
            k_n, m_n, u_n = factors
            carried = state_t if decay_ is None else decay_ * state_t
            state_t = _plus_low_rank(carried, k_n, u_n - m_n @ state_t)
        else:
            state_t = state_t + input_ if decay_ is None else torch.addcmul(input_, decay_, state_t)
    final_state = state_t.transpose(-1, -2)
    if q_c is None:
        return None, final_state

    # --- Reads, for all chunks at once from the states entering them. ---
    #   O = Q̃ S_0ᵀ + P W = (Q̃ - P M) S_0ᵀ + P U,
    # Q̃_t = Γ_t q_t and P_ts = (Γ_t/Γ_s)(q_t . k_s) for s <= t (Γ_{t-1} and s < t when
    # reading before the update).
    mask = causal if inclusive else strict
    scores = q_c @ k_c.transpose(-1, -2)  # (q_t . k_s)
    q_from_state = q_c
    if decay is None:
        scores = scores.masked_fill(~mask, 0)
    else:
        scores = scores * _masked(decay.read_minus() if inclusive else decay.prev_minus(), mask)
        q_start = decay.read_from_start() if inclusive else decay.prev_from_start()
        q_from_state = q_c * q_start[..., None]
    if m is not None:
        q_from_state = q_from_state - scores @ m
    o = q_from_state @ torch.stack(entering, dim=2) + scores @ u  # [B, H, N, C, Dv]
    return o.reshape(batch, heads, n_chunks * size, d_v)[:, :, :length], final_state


def delta_rule_step(
    k: Tensor,
    v: Tensor,
    b: Tensor,
    log_g: Tensor | None,
    initial_state: Tensor,
    state_keys: Tensor,
) -> Tensor:
    r"""The state after one chunk of the delta rule, given what the entering state reads at its keys.

    ``delta_rule(None, k, v, b, log_g, initial_state, chunk=T)[1]`` when the caller already has
    ``state_keys[t] = S_0 k_t`` ``[B, H, T, Dv]``: a deep memory's inner step has them, they are
    its layers' pre-activations at the chunk-start weights (DGD: the keys are the layers' inputs).
    Then :math:`M S_0^\top = (I + A)^{-1} \operatorname{diag}(b_t \Gamma_{t-1}) (K S_0^\top)`
    needs no product with the state (one full read of it per chunk), and by linearity the
    pseudo-values are one solve with one right-hand side:

    .. math::

        W = U - M S_0^\top = (I + A)^{-1} \bigl(V - \operatorname{diag}(b_t \Gamma_{t-1})
            (K S_0^\top)\bigr), \qquad S_C^\top = \Gamma_C S_0^\top + \tilde K^\top W.

    Shapes as :func:`delta_rule` (``b`` and ``log_g`` per token ``[B, H, T]``); returns
    ``[B, H, Dv, Dk]``. The gradient reaches ``S_0`` through ``state_keys`` too, so the caller
    must pass pre-activations computed from ``initial_state`` itself.
    """
    if _autocast_on(k):
        return _in_float32(delta_rule_step, k, v, b, log_g, initial_state, state_keys)
    batch, heads, length, d_k = k.shape
    k_c = k.unsqueeze(2)  # one chunk: [B, H, 1, T, Dk], the layout _ChunkDecay works in
    b_c = b.expand(batch, heads, length).unsqueeze(2)
    idx = torch.arange(length, device=k.device)
    strict = idx[:, None] > idx[None, :]
    decay = None if log_g is None else _ChunkDecay(log_g.expand(batch, heads, length).unsqueeze(2))
    lower = _system(k_c, b_c, decay, strict)
    start = b_c if decay is None else b_c * decay.prev_from_start()  # b_t Γ_{t-1}
    end = k_c if decay is None else k_c * decay.end_minus()[..., None]  # K̃
    # W = U - M S_0ᵀ = (I + A)⁻¹ (V - diag(b_t Γ_{t-1}) K S_0ᵀ): with S_0 k_t given, the two
    # right-hand sides combine before the solve, one of width Dv instead of two
    rhs = v.unsqueeze(2) - start[..., None] * state_keys.unsqueeze(2)
    pseudo = _solve_unit_lower(lower, rhs)[:, :, 0]  # [B, H, T, Dv]
    # S_C = Γ_C S_0 + Wᵀ K̃, formed in the state's own [Dv, Dk] layout rather than as a
    # transposed view of S_Cᵀ: a deep memory carries this state from chunk to chunk, and a
    # transposed result costs a transposing copy of the whole state at every chunk (loop mode
    # "call" makes each carried state contiguous; inductor wrote such copies in "unroll" too).
    # Compiled Hope's steps took 1.074× (call mode) and 1.108× (unroll) as long the transposed
    # way: medians of alternating A/B rounds, benchmarks/results/amd_epyc/profile/README.md
    carried = initial_state if decay is None else decay.total()[..., None, None][:, :, 0] * initial_state
    return _plus_low_rank(carried, pseudo.transpose(-1, -2), end[:, :, 0])


def _autocast_on(x: Tensor) -> bool:
    kind = x.device.type
    return kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind)


def _in_float32(kernel, *args, **kwargs):
    """`kernel` with autocast off and its half-precision tensors in float32. Under mixed
    precision the delta rule still carries its state in float32: the state is a memory that
    accumulates over the whole sequence, and products rounded to bfloat16 every chunk would
    round the memory itself (measured: DeltaNet's state came out in bfloat16). The kernel's
    intra-chunk products give up the bf16 speed-up with it."""
    def up(x):
        return x.float() if torch.is_tensor(x) and x.dtype in (torch.bfloat16, torch.float16) else x

    device = next(a for a in args if torch.is_tensor(a)).device.type
    with torch.autocast(device, enabled=False):
        return kernel(*map(up, args), **{key: up(val) for key, val in kwargs.items()})


def _solve_unit_lower(lower: Tensor, rhs: Tensor) -> Tensor:
    """X with (I + strictly-lower part of `lower`) X = rhs, in float32 at least: the CPU has no
    half-precision triangular solve, and this solve is where a chunk's keys interact. Under
    autocast the whole kernel already runs in float32 (`_in_float32`); this covers half-precision
    operands passed in without it. A no-op cast in float32."""
    dtype = torch.promote_types(torch.promote_types(lower.dtype, rhs.dtype), torch.float32)
    return torch.linalg.solve_triangular(lower.to(dtype), rhs.to(dtype), upper=False, unitriangular=True)


def _system(k_c: Tensor, b_c: Tensor, decay: "_ChunkDecay | None", strict: Tensor) -> Tensor:
    """A of the UT system (I + A) W = V - ...: A_ts = b_t (Γ_{t-1}/Γ_s) (k_t . k_s), read only
    below the diagonal. [B, H, N, C, C]."""
    kk = k_c @ k_c.transpose(-1, -2)  # (k_t . k_s)
    if decay is not None:
        kk = kk * _masked(decay.prev_minus(), strict)  # Γ_{t-1}/Γ_s, s < t
    return b_c[..., None] * kk


def _plus_low_rank(carried: Tensor, k_t: Tensor, w: Tensor) -> Tensor:
    """carried + k_t w, as one fused batched product: carried [..., R, S], k_t [..., R, C], w
    [..., C, S] (in the chunk loop: a [Dk, Dv] state plus K̃ᵀ W)."""
    flat = (-1,) + carried.shape[-2:]
    return torch.baddbmm(carried.reshape(flat), k_t.reshape((-1,) + k_t.shape[-2:]),
                         w.reshape((-1,) + w.shape[-2:])).reshape(carried.shape)


class _ChunkDecay:
    """Cumulative log-gates of each chunk and the (non-positive) differences the kernel needs.

    ``cum[..., t] = L_t = log Γ_t`` (inclusive), ``prev[..., t] = L_{t-1}`` (exclusive cumsum,
    computed by shifting rather than ``cum - log_g`` so that it is exact).
    """

    def __init__(self, log_g: Tensor) -> None:
        self.cum = log_g.cumsum(dim=-1)  # [B, H, N, C]
        self.prev = F.pad(self.cum[..., :-1], (1, 0))

    def read_minus(self) -> Tensor:
        """``L_t - L_s`` as a [.., C, C] matrix (log Γ_t/Γ_s), valid where s <= t."""
        return self.cum[..., :, None] - self.cum[..., None, :]

    def prev_minus(self) -> Tensor:
        """``L_{t-1} - L_s`` (log Γ_{t-1}/Γ_s), valid where s < t."""
        return self.prev[..., :, None] - self.cum[..., None, :]

    def read_from_start(self) -> Tensor:
        """Γ_t."""
        return self.cum.exp()

    def prev_from_start(self) -> Tensor:
        """Γ_{t-1}."""
        return self.prev.exp()

    def end_minus(self) -> Tensor:
        """Γ_C / Γ_s."""
        return (self.cum[..., -1:] - self.cum).exp()

    def total(self) -> Tensor:
        """Γ_C, the decay of the whole chunk."""
        return self.cum[..., -1].exp()


def _masked(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """``exp(log_ratio)`` where ``mask``, else 0.

    The dropped entries may be large and positive (a later token's cumulative log minus an
    earlier one's, the wrong way round), so they become ``-inf`` before the ``exp`` instead of
    being zeroed after it; that keeps both the value and its gradient finite.
    """
    return log_ratio.masked_fill(~mask, float("-inf")).exp()


def naive_delta_rule(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    b: Tensor | None = None,
    log_g: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk: int = 64,
    inclusive: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """Token-by-token reference for :func:`delta_rule` (same signature; ``chunk`` is ignored).

    Literally ``S <- g S - b (S k) kᵀ + v kᵀ`` and ``o = S q`` per token.
    """
    batch, heads, length, d_k = k.shape
    d_v = v.shape[-1]
    state = k.new_zeros(batch, heads, d_v, d_k) if initial_state is None else initial_state
    # Per-token slices via unbind, whose backward stacks the gradients once (indexing
    # would materialise a full-size zero gradient for every token).
    keys, values = k.unbind(2), v.unbind(2)
    queries = q.unbind(2) if q is not None else [None] * length
    ones = k.new_ones(batch, heads, length)
    gates = (log_g.expand(batch, heads, length).exp() if log_g is not None else ones).unbind(2)
    strengths = (b.expand(batch, heads, length) if b is not None else 0 * ones).unbind(2)
    outputs = []
    for q_t, k_t, v_t, g_t, b_t in zip(queries, keys, values, gates, strengths):
        before = state
        state_k = (state @ k_t[..., None])[..., 0]  # S k   [B, H, Dv]
        state = (
            g_t[..., None, None] * state
            - b_t[..., None, None] * state_k[..., :, None] * k_t[..., None, :]
            + v_t[..., :, None] * k_t[..., None, :]
        )
        if q_t is not None:
            read = state if inclusive else before
            outputs.append((read @ q_t[..., None])[..., 0])
    if q is None:
        return None, state
    return torch.stack(outputs, dim=2), state
