"""Speed of the runtime kernels against their naive references, on this machine's CPU.

    python benchmarks/kernels.py [--op NAME ...] [--threads 2] [--repeats 5]

For every case it prints the median wall time (after one warm-up run) of the forward pass
(under ``torch.no_grad``) and of forward + backward (gradients of the sum of the outputs
w.r.t. every input), for the fast kernel and its naive reference, the speedup on forward +
backward (forward only where the reference cannot backpropagate), and the largest
differences between the two in the outputs and in the input gradients.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.optim._muon import _zeropower_via_newtonschulz

from nestc.runtime.kernels import (
    causal_attention,
    delta_rule,
    linear_scan,
    naive_causal_attention,
    naive_delta_rule,
    naive_linear_scan,
    naive_short_conv,
    newton_schulz,
    short_conv,
)


@dataclass
class Case:
    """One row of the table: ``fast(**inputs)`` against ``naive(**inputs)`` (None: fast only)."""

    shape: str
    fast: Callable
    naive: Callable | None
    build: Callable[[], dict]  # fresh inputs; the float tensors among them require grad
    naive_has_backward: bool = True  # False: the reference can only run forward


def _rand(*shape, generator, dtype=torch.float32):
    return torch.randn(*shape, generator=generator, dtype=dtype)


def delta_inputs(B, H, T, D, with_b=True, with_gate=True):
    def build():
        g = torch.Generator().manual_seed(0)
        inputs = {
            "q": _rand(B, H, T, D, generator=g),
            "k": F.normalize(_rand(B, H, T, D, generator=g), dim=-1),
            "v": _rand(B, H, T, D, generator=g),
            "b": torch.rand(B, H, T, generator=g) if with_b else None,
            "log_g": -0.1 * torch.rand(B, H, T, generator=g) if with_gate else None,
        }
        return _requiring_grad(inputs)

    return build


def with_chunk(chunk):
    def fast(**inputs):
        return delta_rule(**inputs, chunk=chunk)

    fast.__name__ = f"delta_rule(chunk={chunk})"
    return fast


def scan_inputs(*shape, dim):
    def build():
        g = torch.Generator().manual_seed(0)
        inputs = {"a": torch.rand(*shape, generator=g), "x": _rand(*shape, generator=g)}
        return {**_requiring_grad(inputs), "dim": dim}

    return build


def newton_schulz_inputs(*shape):
    def build():
        return _requiring_grad({"G": _rand(*shape, generator=torch.Generator().manual_seed(0))})

    return build


def muon_reference(G):
    """torch.optim.Muon's own iteration, one matrix at a time (forward only: it divides in
    place by a norm that autograd needs)."""
    coefficients = (3.4445, -4.7750, 2.0315)
    if G.dim() == 2:
        return _zeropower_via_newtonschulz(G, coefficients, 5, 1e-7)
    flat = G.reshape(-1, *G.shape[-2:])
    out = [_zeropower_via_newtonschulz(m, coefficients, 5, 1e-7) for m in flat]
    return torch.stack(out).reshape(G.shape)


def conv_inputs(B, T, C, W):
    def build():
        g = torch.Generator().manual_seed(0)
        return _requiring_grad(
            {
                "x": _rand(B, T, C, generator=g),
                "weight": _rand(C, W, generator=g),
                "bias": _rand(C, generator=g),
                "state": _rand(B, W - 1, C, generator=g),
            }
        )

    return build


def conv1d_short_conv(x, weight, bias=None, state=None):
    """short_conv's former form, a depthwise F.conv1d (kept here to show why it was replaced)."""
    padded = torch.cat([state, x], dim=1)
    y = F.conv1d(padded.transpose(1, 2), weight.unsqueeze(1), bias, groups=x.shape[-1])
    return y.transpose(1, 2), padded[:, padded.shape[1] - (weight.shape[-1] - 1):]


def attention_inputs(B, H, T, D, window, n_prefix):
    def build():
        g = torch.Generator().manual_seed(0)
        inputs = {n: _rand(B, H, T, D, generator=g) for n in ("q", "k", "v")}
        if n_prefix:
            inputs["prefix_k"] = _rand(H, n_prefix, D, generator=g)
            inputs["prefix_v"] = _rand(H, n_prefix, D, generator=g)
        inputs = _requiring_grad(inputs)
        inputs["window"] = window
        return inputs

    return build


def attention_higher_order(**inputs):
    return causal_attention(**inputs, higher_order=True)


def _requiring_grad(inputs: dict) -> dict:
    return {
        name: (t.requires_grad_() if isinstance(t, torch.Tensor) else t)
        for name, t in inputs.items()
    }


REGISTRY: dict[str, list[Case]] = {
    "delta_rule": [
        Case("B4 H4 T1024 D64, b + log_g (gated DeltaNet)", delta_rule, naive_delta_rule,
             delta_inputs(4, 4, 1024, 64)),
        Case("B4 H4 T1024 D64, b=None (gated linear attn)", delta_rule, naive_delta_rule,
             delta_inputs(4, 4, 1024, 64, with_b=False)),
    ],
    # The default chunk: the same gated DeltaNet case at several chunk sizes (fast form only).
    "delta_chunk": [
        Case(f"B4 H4 T1024 D64, b + log_g, chunk {c}", with_chunk(c), None,
             delta_inputs(4, 4, 1024, 64))
        for c in (16, 32, 64, 128, 256)
    ],
    "linear_scan": [
        Case("B4 T1024 C256 elementwise, dim=-2", linear_scan, naive_linear_scan,
             scan_inputs(4, 1024, 256, dim=-2)),
        Case("B4 H4 T1024 per-token scalars, dim=-1", linear_scan, naive_linear_scan,
             scan_inputs(4, 4, 1024, dim=-1)),
    ],
    "newton_schulz": [
        Case("1024x512, bf16 (vs torch Muon)", newton_schulz, muon_reference,
             newton_schulz_inputs(1024, 512), naive_has_backward=False),
        Case("16x128x128 batched, bf16 (vs Muon per matrix)", newton_schulz, muon_reference,
             newton_schulz_inputs(16, 128, 128), naive_has_backward=False),
    ],
    "short_conv": [
        Case("B4 T1024 C256 W4, with state", short_conv, naive_short_conv,
             conv_inputs(4, 1024, 256, 4)),
        Case("B4 T512 C256 W4 (Titans layer size)", short_conv, naive_short_conv,
             conv_inputs(4, 512, 256, 4)),
        Case("same, F.conv1d depthwise (the former form)", conv1d_short_conv, naive_short_conv,
             conv_inputs(4, 512, 256, 4)),
        Case("B4 T8 C256 W4 (a Hope chunk piece)", short_conv, naive_short_conv,
             conv_inputs(4, 8, 256, 4)),
        Case("same, F.conv1d depthwise (the former form)", conv1d_short_conv, naive_short_conv,
             conv_inputs(4, 8, 256, 4)),
    ],
    "causal_attention": [
        Case("B4 H4 T1024 D64, window 128 + prefix 16", causal_attention, naive_causal_attention,
             attention_inputs(4, 4, 1024, 64, 128, 16)),
        Case("same, higher_order=True (SDPA math backend)", attention_higher_order,
             naive_causal_attention, attention_inputs(4, 4, 1024, 64, 128, 16)),
    ],
}


def _outputs(result) -> list[torch.Tensor]:
    return [o for o in (result if isinstance(result, tuple) else (result,)) if o is not None]


def _forward(fn, inputs):
    with torch.no_grad():
        return _outputs(fn(**inputs))


def _forward_backward(fn, inputs):
    """Outputs and input gradients of sum_i <out_i, 1>."""
    leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    outputs = _outputs(fn(**inputs))
    loss = sum(o.float().sum() for o in outputs)
    grads = torch.autograd.grad(loss, leaves, materialize_grads=True)
    return outputs, grads


def median_ms(step: Callable[[], object], repeats: int, budget_s: float) -> float:
    """Median of up to ``repeats`` timed runs after one warm-up; slow steps stop early
    (but run at least 3 times) once ``budget_s`` seconds have been spent."""
    step()
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))


def run_case(case: Case, repeats: int, budget_s: float) -> dict:
    inputs = case.build()
    row = {
        "fwd_fast": median_ms(lambda: _forward(case.fast, inputs), repeats, budget_s),
        "fb_fast": median_ms(lambda: _forward_backward(case.fast, inputs), repeats, budget_s),
    }
    if case.naive is None:
        return row
    row["fwd_naive"] = median_ms(lambda: _forward(case.naive, inputs), repeats, budget_s)
    if case.naive_has_backward:
        row["fb_naive"] = median_ms(
            lambda: _forward_backward(case.naive, inputs), repeats, budget_s
        )
        fast_out, fast_grads = _forward_backward(case.fast, inputs)
        naive_out, naive_grads = _forward_backward(case.naive, inputs)
        row["diff_grad"] = max_abs_diff(list(fast_grads), list(naive_grads))
    else:
        fast_out, naive_out = _forward(case.fast, inputs), _forward(case.naive, inputs)
    row["diff_out"] = max_abs_diff(fast_out, naive_out)
    return row


def format_row(op: str, shape: str, r: dict) -> str:
    def ms(key):
        return f"{r[key]:.1f}" if key in r else "-"

    if "fb_naive" in r:
        speedup = f"{r['fb_naive'] / r['fb_fast']:.1f}x"
    elif "fwd_naive" in r:
        speedup = f"{r['fwd_naive'] / r['fwd_fast']:.1f}x fwd"
    else:
        speedup = "-"
    diffs = [f"{r[k]:.2e}" if k in r else "-" for k in ("diff_out", "diff_grad")]
    return (f"{op:<17} {shape:<47} {ms('fwd_fast'):>9} {ms('fwd_naive'):>10} {ms('fb_fast'):>9} "
            f"{ms('fb_naive'):>10} {speedup:>10} {diffs[0]:>10} {diffs[1]:>10}")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--op", nargs="*", choices=sorted(REGISTRY), help="ops (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--budget", type=float, default=10.0,
                        help="seconds after which a slow measurement stops at 3 runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"# {cpu_model()} | threads {torch.get_num_threads()} | torch {torch.__version__} | "
          f"fp32 unless noted | median of <= {args.repeats} runs after 1 warm-up, ms")
    header = (f"{'op':<17} {'shape':<47} {'fwd fast':>9} {'fwd naive':>10} {'f+b fast':>9} "
              f"{'f+b naive':>10} {'speedup':>10} {'max|Δout|':>10} {'max|Δgrad|':>10}")
    print(header)
    print("-" * len(header))
    for op in args.op or list(REGISTRY):
        for case in REGISTRY[op]:
            print(format_row(op, case.shape, run_case(case, args.repeats, args.budget)), flush=True)


if __name__ == "__main__":
    main()
