"""The vocabulary of properties: what a box, the model section and the train section can say.

One table serves the resolver (unknown-property errors with "did you mean"), the YAML schema
(`nestc schema`), the canonical property order of `nestc fmt`, and the language reference.
"""

from __future__ import annotations

from dataclasses import dataclass

BOX_KINDS = {
    "memory": "a parametric or non-parametric associative memory: its own state, context, keys, "
              "values, objective, retention, optimizer and update frequency (NL Def. 4)",
    "attention": "softmax attention: the non-parametric memory whose closed-form optimum is "
                 "recomputed at every token (frequency infinity, NL Eq. 62)",
    "weights": "the outer parameters of the model, updated by an optimizer spec (the pre-training "
               "level, NL Sec. 1.4)",
}


@dataclass(frozen=True)
class PropInfo:
    name: str
    kinds: frozenset[str]
    doc: str
    example: str


def _p(name: str, kinds: str, doc: str, example: str) -> PropInfo:
    return PropInfo(name, frozenset(kinds.split()), doc, example)


# Canonical order: the order in which `nestc fmt` prints a box's properties.
BOX_PROPS: dict[str, PropInfo] = {p.name: p for p in [
    _p("heads", "memory attention", "number of heads; each head is an independent memory",
       "heads 4"),
    _p("state", "memory", "the memory's parameters: matrix(d_in, d_out), mlp(dim, depth=2, "
       "expansion=4, act=gelu, residual=true), vector(d) or like(W) (optimizer state)",
       "state mlp(d_head, depth=2)"),
    _p("init", "memory", "initial state: zeros, identity, random(std), meta (meta-learned by the "
       "outer level), meta(BOX) or checkpoint(\"file.safetensors\", \"key\")", "init meta"),
    _p("reset", "memory", "when the state returns to its initial value: sequence (default for "
       "in-context memories), never, or a number of tokens N (`reset 512`: every N tokens)",
       "reset sequence"),
    _p("context", "memory", "a named context stream this box learns from: grad(W) (the gradients "
       "of box W, an optimizer's context), lss (the local surprise signal), or any expression",
       "context g = grad(W)"),
    _p("keys", "memory", "the key generator (an expression over the block's streams)",
       "keys l2norm(k, groups=heads)"),
    _p("values", "memory", "the value generator; M(e) gives self-generated values, lss the local "
       "surprise signal", "values M(v)"),
    _p("query", "memory", "what the state is read with (default: the argument of the read)",
       "query q"),
    _p("lr", "memory weights", "the inner learning rate (a constant or a per-token generator)",
       "lr 0.1 * sigmoid(linear(in, heads))"),
    _p("objective", "memory", "the inner objective (any differentiable expression of M(k) and the "
       "box's streams; l2, dot, lp, huber are built in)", "objective l2(M(k), v)"),
    _p("retention", "memory weights", "what the state keeps between updates: gate(a), decay(a), "
       "weight_decay(w), proximal(w), none, or an expression of M", "retention gate(alpha)"),
    _p("optimizer", "memory", "the inner optimizer: gd, momentum(beta), dgd, newton_schulz(steps), "
       "adam(beta1, beta2), closed_form", "optimizer momentum(0.9)"),
    _p("update", "memory weights", "a user-written update rule: the new state as an expression "
       "of M and the box's streams (replaces objective and optimizer)", "update M + beta * g"),
    _p("steps", "memory", "inner optimizer steps per update: Newton-Schulz iterations, or an optimizer "
       "box's gradient steps on its objective (each from the state the last left); an in-context "
       "memory makes 1 (`nestc check` refuses more)", "steps 3"),
    _p("every", "memory weights", "update frequency: every N tokens (chunked, gradients at the "
       "chunk-start state) or every N steps", "every 64 tokens"),
    _p("read", "memory", "which state a read sees: before (the last committed state, default) or "
       "after (including the current token's update)", "read after"),
    _p("grad", "memory", "whether outer gradients flow through the inner updates: through "
       "(default, meta-learns the initial state) or stop (stop-gradient writes)", "grad through"),
    _p("grad_state", "memory", "the state a chunked memory takes its inner gradients at: "
       "chunk_start (default, Titans Eq. 16: each chunk at the state the chunks before it left) "
       "or call_start (every chunk of a call at the state the call began with, while the state "
       "still advances chunk by chunk for reads: titans-pytorch's NeuralMemory with its default "
       "batch_size=None; no chunk waits for another, and the result depends on where a stream "
       "is cut into calls)", "grad_state call_start"),
    _p("window", "attention", "sliding-window size in tokens (0 = global)", "window 512"),
    _p("persistent", "attention", "number of persistent (learnable, input-independent) memory "
       "tokens prepended to keys and values (Titans Eq. 19)", "persistent 4"),
    _p("rope", "attention", "rotary position embeddings on queries and keys", "rope true"),
    _p("segment", "attention", "attend only within segments of this many tokens (Titans MAC)",
       "segment 64"),
    _p("params", "weights", "which parameters this weights box holds: all, matrices, vectors or "
       "rest", "params matrices"),
]}

MODEL_PROPS: dict[str, PropInfo] = {p.name: p for p in [
    _p("vocab", "model", "vocabulary size (default: the tokenizer's)", "vocab 256"),
    _p("dim", "model", "model width", "dim 256"),
    _p("norm", "model", "final normalisation before the head: rmsnorm, layernorm or none",
       "norm rmsnorm"),
    _p("tie_embeddings", "model", "share the embedding matrix with the output head",
       "tie_embeddings true"),
    _p("tokenizer", "model", "byte (default) or gpt2", "tokenizer \"byte\""),
]}

TRAIN_PROPS: dict[str, PropInfo] = {p.name: p for p in [
    _p("seq_len", "train", "training sequence length in tokens", "seq_len 128"),
    _p("batch", "train", "sequences per step", "batch 4"),
    _p("steps", "train", "optimizer steps", "steps 1000"),
    _p("warmup", "train", "linear learning-rate warm-up steps", "warmup 50"),
    _p("schedule", "train", "learning-rate schedule after warm-up: constant or cosine",
       "schedule \"cosine\""),
    _p("clip", "train", "gradient-norm clipping (0 = off)", "clip 1.0"),
    _p("eval_every", "train", "held-out evaluation interval in steps", "eval_every 100"),
    _p("seed", "train", "random seed", "seed 0"),
    _p("on_nonfinite", "train", "what a non-finite value does: stop or skip (the step)",
       "on_nonfinite \"stop\""),
]}

OPTIMIZER_GROUPS = {
    "all": "every trainable parameter",
    "matrices": "2-D weight matrices other than the embedding and the output head",
    "rest": "every parameter no earlier `optimizer ... on` line took",
}

UNITS = {"token": "tokens", "tokens": "tokens", "step": "steps", "steps": "steps"}


def canonical_order(names: list[str], table: dict[str, PropInfo]) -> list[int]:
    """Indices that sort `names` into the table's order; unknown names keep their place at the end."""
    order = {n: i for i, n in enumerate(table)}
    return sorted(range(len(names)), key=lambda i: (order.get(names[i], len(order)), i))
