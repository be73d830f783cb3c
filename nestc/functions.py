"""The built-in functions of the expression language: signatures, where they may be used, and what
they mean. The resolver checks calls against this table; `nestc specs --functions` prints it.

Scopes: ``block`` (block statements and box generators: per-token streams), ``inner`` (a box's
objective, retention and update: per-head tensors and the state M), ``opt`` (optimizer boxes:
tensors shaped like each parameter), ``const`` (params: evaluated at compile time).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fn:
    name: str
    args: tuple[str, ...]  # positional parameter names; a trailing "*" takes any number
    kwargs: dict  # keyword parameters and their defaults
    scopes: frozenset[str]
    doc: str

    @property
    def variadic(self) -> bool:
        return bool(self.args) and self.args[-1] == "*"

    def signature(self) -> str:
        parts = [("..." if a == "*" else a) for a in self.args]
        parts += [f"{k}={v}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"


def _f(name, args, scopes, doc, **kwargs) -> Fn:
    return Fn(name, tuple(args.split()) if args else (), kwargs, frozenset(scopes.split()), doc)


ALL = "block inner opt const"
TENSOR = "block inner opt"

FUNCTIONS: dict[str, Fn] = {f.name: f for f in [
    # elementwise maths (also evaluated at compile time on constants)
    _f("silu", "e", ALL, "x * sigmoid(x)"),
    _f("gelu", "e", ALL, "Gaussian error linear unit (tanh-free, exact erf form)"),
    _f("relu", "e", ALL, "max(x, 0)"),
    _f("sigmoid", "e", ALL, "1 / (1 + exp(-x))"),
    _f("tanh", "e", ALL, "hyperbolic tangent"),
    _f("softplus", "e", ALL, "log(1 + exp(x))"),
    _f("exp", "e", ALL, "exponential"),
    _f("log", "e", ALL, "natural logarithm"),
    _f("sqrt", "e", ALL, "square root"),
    _f("abs", "e", ALL, "absolute value"),
    _f("sign", "e", ALL, "-1, 0 or 1"),
    _f("min", "a b", ALL, "element-wise minimum"),
    _f("max", "a b", ALL, "element-wise maximum"),
    _f("clamp", "e lo hi", ALL, "clamp into [lo, hi]"),
    _f("lerp", "a b w", TENSOR, "a + w * (b - a)"),
    _f("where", "cond a b", TENSOR, "a where cond holds, else b"),
    _f("int", "e", "const", "round a constant towards zero"),
    _f("round", "e", "const", "round a constant to the nearest integer"),
    _f("stop_grad", "e", TENSOR, "the value of e with no gradient flowing back into it "
       "(a stop-gradient knowledge-transfer edge)"),
    # reductions over the last axis
    _f("sum", "e", TENSOR, "sum over the last axis (in `groups` equal groups)", groups=1),
    _f("mean", "e", TENSOR, "mean over the last axis (in `groups` equal groups)", groups=1),
    _f("norm", "e", TENSOR, "Lp norm over the last axis", p=2),
    # block-level layers (their weights belong to the outer level)
    _f("linear", "e n", "block", "a learned linear projection to width n", bias=False),
    _f("mlp", "e hidden", "block", "a learned 2-layer MLP (width -> hidden -> out)",
       out=None, act="gelu"),
    _f("swiglu", "e hidden", "block", "a learned SwiGLU feed-forward layer (width -> hidden -> width)"),
    _f("rmsnorm", "e", "block", "RMS normalisation with a learned gain"),
    _f("layernorm", "e", "block", "layer normalisation with a learned gain and bias"),
    _f("l2norm", "e", "block inner", "divide by the L2 norm over the last axis (per group)",
       groups=1),
    _f("conv", "e window", "block", "causal depthwise convolution over time (short conv)"),
    _f("softmax", "e", TENSOR, "softmax over the last axis"),
    _f("combine", "*", "block", "aggregate parallel branches: mode = weighted (learned softmax "
       "weights), sum or mean", mode="weighted"),
    _f("read_before", "box e", "block", "read a memory with its state before the current chunk's "
       "update"),
    _f("read_after", "box e", "block", "read a memory with its state after the current token's "
       "update"),
    # objectives (per token, summed over the last axis)
    _f("l2", "a b", "inner opt", "squared L2 distance sum((a - b) ** 2); in an optimizer box's rules, l2, "
       "dot, lp and huber work element by element (its `objective` sums them)"),
    _f("dot", "a b", "inner opt", "dot product sum(a * b); minimising -dot(M(k), v) is Hebbian"),
    _f("lp", "a b p", "inner opt", "sum(abs(a - b) ** p); in a memory box with p < 2, no gradient "
       "flows from an element where a = b exactly (docs/paper-compliance.md, ambiguity 22)"),
    _f("huber", "a b delta", "inner opt", "Huber loss of a - b with threshold delta, summed"),
    _f("outer", "a b", "inner", "outer product a bᵀ (for update rules of matrix memories)"),
    # optimizer boxes
    _f("grad", "box", "opt", "the gradients of a weights box: an optimizer's context"),
    _f("newton_schulz", "e", "opt", "orthogonalise a matrix with Newton-Schulz iterations "
       "(Muon's quintic by default)", steps=5, coefficients="muon", eps=1e-7, dtype="bfloat16"),
    _f("rows", "box", "opt", "the number of rows of each parameter"),
    _f("cols", "box", "opt", "the number of columns of each parameter"),
]}

# constructors that are only meaningful as the value of one property
STATE_FORMS = {
    "matrix": _f("matrix", "d_in", "", "a matrix memory M: d_in -> d_out", d_out=None),
    "mlp": _f("mlp", "dim", "", "a deep memory: an MLP of `depth` layers, hidden width "
              "expansion * dim", depth=2, expansion=4, act="gelu", residual=True, out=None,
              hidden=None),
    "vector": _f("vector", "d", "", "a vector memory"),
    "like": _f("like", "box", "", "optimizer state shaped like each parameter of a weights box"),
}

INIT_FORMS = {
    "zeros": _f("zeros", "", "", "all zeros"),
    "identity": _f("identity", "", "", "the identity map (an MLP memory starts as its residual)"),
    "random": _f("random", "", "", "fixed random values, not learned", std=0.02),
    "meta": _f("meta", "", "", "meta-learned by the outer level (NL §1.6, item 4)", by=None),
    "checkpoint": _f("checkpoint", "path key", "", "loaded from a safetensors file"),
}

RETENTION_FORMS = {
    "none": _f("none", "", "", "keep everything"),
    "gate": _f("gate", "a", "", "M <- a * M (a data-dependent gate in [0, 1]); grad = previous "
               "(the step's gradient at the state before the gate, Titans) or retained (after it, "
               "Gated DeltaNet)", grad="previous"),
    "decay": _f("decay", "a", "", "M <- (1 - a) * M (Titans' forgetting α_t); grad as for gate",
                grad="previous"),
    "weight_decay": _f("weight_decay", "w", "", "M <- (1 - lr * w) * M (decoupled weight decay)"),
    "proximal": _f("proximal", "w", "", "adds w/2 ||M - M_0||² to the objective, M_0 the box's "
                   "initial state (global retention; in-context memories)"),
}

OPTIMIZER_FORMS = {
    "gd": _f("gd", "", "", "one gradient step on the objective per update"),
    "momentum": _f("momentum", "beta", "", "S <- beta * S - lr * grad; M <- M + S (Titans Eqs. 9-10)"),
    "dgd": _f("dgd", "", "", "delta gradient descent: M <- M(alpha I - lr' k kᵀ) - lr' grad "
              "(NL Eq. 57/88); step = exact (lr' = lr / (1 + lr |k|²)), paper (lr' = lr) or "
              "neurips (no step size on the decay); decay_keys = layer (each layer of an MLP "
              "memory decays along its own input) or first (only the first layer); momentum = "
              "momentum on the gradient term (only 0, none, is implemented)",
              step="exact", decay_keys="layer", momentum=0),
    "newton_schulz": _f("newton_schulz", "", "", "Newton-Schulz orthogonalisation steps: "
                        "coefficients = muon (Muon's quintic) or cubic (NL Eq. 44)",
                        steps=5, coefficients="muon"),
    "adam": _f("adam", "", "", "Adam on the inner objective (per-box moments)", beta1=0.9,
               beta2=0.999, eps=1e-8),
    "closed_form": _f("closed_form", "", "", "the exact minimiser (non-parametric memories)"),
}

WORDS = {
    "act": ("gelu", "silu", "relu", "tanh", "sigmoid", "identity"),
    "read": ("before", "after"),
    "grad": ("through", "stop"),
    "grad_state": ("chunk_start", "call_start"),
    "reset": ("sequence", "never"),
    "mode": ("weighted", "sum", "mean"),
}


# The functions whose every call site holds parameters of its own (a module of the model).
# `combine` holds some only in mode `weighted`.
LEARNED_FUNCTIONS = frozenset({"linear", "mlp", "swiglu", "rmsnorm", "layernorm", "conv"})

# The names the language defines, where they exist, and what they hold (`nestc specs --functions`).
NAMES: dict[str, tuple[str, str]] = {
    "x": ("block", "the residual stream as the statements before this one left it; `x = ...` "
                   "replaces it"),
    "in": ("box generators", "the stream the box is read with (the argument of its read); a box "
                             "read at several places learns from its last read's argument"),
    "M": ("memory boxes", "the box's state: M(e) reads it at e (objective, update, `values M(v)`); "
                          "M alone is the state itself (update rules, vector and optimizer state)"),
    "k, v, q, lr": ("objective, retention, optimizer, update",
                    "this token's keys, values, query and learning rate, from the box's `keys`, "
                    "`values`, `query` and `lr`"),
    "lss": ("box values, context", "the local surprise signal: the gradient of the model's loss "
                                   "at this box's output"),
    "step": ("optimizer boxes", "how many times the box has updated, 1 at its first update "
                                "(Adam's bias correction)"),
}
