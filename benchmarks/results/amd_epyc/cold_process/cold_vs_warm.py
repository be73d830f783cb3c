"""Does a process that has just compiled a training step cold run it slower than a process that
compiled it from a warm inductor cache? In `../all_da68f55/`, each compiled step's median in its
cold-compile process (`alone_median_s`) was up to 20% above or below its median in the warm
process's rounds; this separates the two processes' steps from the VM's drift by repeating the
pair: a cold process (empty cache), then a warm one (that cache), REPS times, each timing ITERS
compiled steps after WARMUP untimed ones (`nestc bench`'s own `measure`, in fresh processes).

    python benchmarks/results/amd_epyc/cold_process/cold_vs_warm.py SPEC [REPS] [ITERS]
"""

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from ab_rounds import print_machine  # noqa: E402  (benchmarks/)

from nestc.runtime.bench import _child  # noqa: E402

spec = sys.argv[1]
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
iters = int(sys.argv[3]) if len(sys.argv) > 3 else 8
print_machine()
import nestc  # noqa: E402

program = nestc.compile(spec).program
base = dict(spec=spec, overrides={}, batch=int(program.train.get("batch", 4)),
            seq_len=int(program.train.get("seq_len", 128)), warmup=2, iters=iters, threads=2,
            loops="unroll", device="cpu", precision="fp32", first_pass="frozen", compile=True)
print(f"{spec}: batch {base['batch']} x seq {base['seq_len']}, {iters} timed steps after 3 untimed, {reps} pairs")
ratios = []
for r in range(reps):
    with tempfile.TemporaryDirectory(prefix="nestc-inductor-") as cache:
        cold = _child(dict(base, cache_dir=cache))
        warm = _child(dict(base, cache_dir=cache))
    ratios.append(cold["median_s"] / warm["median_s"])
    print(f"pair {r + 1}: cold process {cold['median_s'] * 1e3:.1f} ms (first step {cold['first_step_s']:.1f} s), "
          f"warm process {warm['median_s'] * 1e3:.1f} ms (first step {warm['first_step_s']:.1f} s), "
          f"cold / warm {ratios[-1]:.3f}", flush=True)
print(f"cold / warm, median of {reps} pairs: {statistics.median(ratios):.3f} "
      f"(above 1 in {sum(x > 1 for x in ratios)} of {reps})")
