"""Which batched matmuls of a compiled training step fall off ATen's batched CPU path.

    python benchmarks/audit_bmm_layouts.py hope --set n_layers=1 --seq 128
    python benchmarks/audit_bmm_layouts.py titans --seq 256 --inductor loop_ordering_after_fusion=False

ATen's CPU `bmm` hands a whole batch to MKL only when every batch item is contiguous or
transposed; otherwise it loops over the batch, one small matmul per item, copying each
operand first. Inductor picks the layouts of the buffers it passes to `extern_kernels.bmm`, and
in a long unrolled graph it can pick one with the batch axis innermost (stride 1). This script
compiles one training step of a spec (cold, in a fresh inductor cache), then runs one more step
with `extern_kernels.bmm` wrapped to count the calls whose operands or output ATen cannot batch,
and prints them by shape and stride, then the step time. It measures; it changes nothing.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="spec param override")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loops", default="unroll", help="unroll, call, scan or region (as nestc bench)")
    ap.add_argument("--first-pass", default="frozen", help="frozen or shared (as nestc bench)")
    ap.add_argument("--inductor", action="append", default=[], metavar="NAME=VALUE",
                    help="a torch._inductor.config setting to try, e.g. loop_ordering_after_fusion=False")
    args = ap.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="nestc-audit-"))

    import torch
    from torch._inductor import config as inductor_config
    from torch._inductor.select_algorithm import extern_kernels

    from nestc.runtime.bench import build_step, machine

    torch.set_num_threads(args.threads)
    for item in args.inductor:
        name, _, value = item.partition("=")
        setattr(inductor_config, name, {"True": True, "False": False}.get(value, value))
    overrides = dict(item.split("=", 1) for item in args.set)
    step, _ = build_step(args.spec, overrides, args.batch, args.seq, compile=True, loops=args.loops,
                         first_pass=args.first_pass)
    start = time.perf_counter()
    step()
    compile_s = time.perf_counter() - start

    def batchable(t: torch.Tensor) -> bool:  # ATen: every item contiguous or transposed
        s = t.stride()
        return (s[-1] == 1 and s[-2] >= max(1, t.shape[-1])) or (s[-2] == 1 and s[-1] >= max(1, t.shape[-2]))

    calls = collections.Counter()
    unbatched = collections.Counter()
    original = extern_kernels.bmm

    def counting_bmm(a, b, out=None):
        calls["all"] += 1
        if not (batchable(a) and batchable(b)) or (out is not None and not out.is_contiguous()):
            key = (tuple(a.shape), a.stride(), tuple(b.shape), b.stride())
            unbatched[key] += 1
        return original(a, b, out=out)

    extern_kernels.bmm = counting_bmm
    try:
        step()
    finally:
        extern_kernels.bmm = original
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)

    m = machine()
    print(f"{args.spec} {overrides or ''} batch {args.batch} seq {args.seq}, loops {args.loops}, first pass "
          f"{args.first_pass}; inductor {args.inductor or 'defaults'}")
    print(f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}, python {m['python']}, nestc {m['nestc']}")
    print(f"cold compile + first step {compile_s:.0f} s; compiled step (median of 3) {sorted(times)[1]:.3f} s")
    print(f"extern bmm calls per step: {calls['all']}; falling back to a per-item loop: {sum(unbatched.values())}")
    for (sa, ta, sb, tb), n in unbatched.most_common():
        print(f"  {n:5d} x  {sa} strides {ta}  @  {sb} strides {tb}")


if __name__ == "__main__":
    main()
