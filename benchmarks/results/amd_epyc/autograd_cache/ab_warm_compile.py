"""A/B of AOTAutograd's cache for graphs holding a custom autograd.Function
(`torch._functorch.config.autograd_cache_allow_custom_autograd_functions`, which
runtime/autograd_cache.py turns on): how long a built-in's compile takes in a new process that
finds the inductor cache an earlier one filled, with the setting on and off.

    python benchmarks/results/amd_epyc/autograd_cache/ab_warm_compile.py [SPEC ...]   # all built-ins

Per spec, in an inductor cache of its own (a temporary folder), five processes one after the
other, each building `nestc bench`'s compiled training step (the spec's batch and length: both
passes, backward, clipping, the optimizer step) and timing its first two steps; the compile is the
first step minus the second. 1: cold, setting on (fills the cache); 2: on; 3: off, which also
saves the entries the off setting keys differently (not counted: the setting is part of
AOTAutograd's cache key, so a cache filled with it on is cold for those graphs); 4: off; 5: on.
"on" is the median of 2 and 5. Each process prints AOTAutograd's and inductor's cache counters.
"Off" is torch's environment variable TORCHINDUCTOR_AUTOGRAD_CACHE_ALLOW_CUSTOM_AUTOGRAD=0, which
overrides the value nestc sets (setting it in code would not do: nestc's compile paths turn it on
again each time they prepare inductor); each process reports the value it ran with.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parents[2]))  # benchmarks/
from ab_rounds import print_machine

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(2)
from nestc.runtime.inductor_setup import prepare_inductor
prepare_inductor()  # "off": torch's environment variable (set by the parent) overrides it
from torch._dynamo.utils import counters
from nestc.resolve import resolve_ref
from nestc.runtime.bench import build_step
train = resolve_ref(sys.argv[1], {}).train
step, _ = build_step(sys.argv[1], {}, int(train.get("batch", 4)), int(train.get("seq_len", 128)), compile=True)
t = time.perf_counter(); loss = step(); first = time.perf_counter() - t
t = time.perf_counter(); step(); second = time.perf_counter() - t
cache = {k: v for group in ("aot_autograd", "inductor") for k, v in counters[group].items() if "cache" in k}
setting = torch._functorch.config.autograd_cache_allow_custom_autograd_functions
print(json.dumps({"compile_s": first - second, "loss": loss, "setting": setting, "cache": cache}))
"""

ORDER = [("cold", "on"), ("warm", "on"), ("fill", "off"), ("warm", "off"), ("warm", "on")]


def run(spec: str, setting: str, cache: str) -> dict:
    # torch lets this variable override any value set in code (nestc's compile paths turn the
    # setting on each time they prepare inductor)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, PYTHONPATH=str(ROOT),
               TORCHINDUCTOR_AUTOGRAD_CACHE_ALLOW_CUSTOM_AUTOGRAD="1" if setting == "on" else "0")
    out = subprocess.run([sys.executable, "-c", CHILD, spec, setting], env=env, capture_output=True,
                         text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["setting"] == (setting == "on"), result
    return result


if __name__ == "__main__":
    from bench_builtins import model_specs

    specs = sys.argv[1:] or model_specs()
    print_machine()
    print(f"{'spec':<16} {'cold s':>7} {'warm off s':>10} {'warm on s':>10}  on: AOT hits / bypasses; off: AOT bypasses; losses equal")
    for spec in specs:
        with tempfile.TemporaryDirectory() as cache:
            runs = [(kind, setting, run(spec, setting, cache)) for kind, setting in ORDER]
        cold = runs[0][2]["compile_s"]
        on = [r for kind, s, r in runs if kind == "warm" and s == "on"]
        off = [r for kind, s, r in runs if kind == "warm" and s == "off"]
        aot = lambda r, k: r["cache"].get(f"autograd_cache_{k}", 0)  # noqa: E731
        same = len({r["loss"] for _, _, r in runs}) == 1
        print(f"{spec:<16} {cold:7.1f} {off[0]['compile_s']:10.1f} {statistics.median(r['compile_s'] for r in on):10.1f}"
              f"  {[aot(r, 'hit') for r in on]} / {[aot(r, 'bypass') for r in on]}; {aot(off[0], 'bypass')}; {same}",
              flush=True)
        print("   ", json.dumps([{"run": f"{k} {s}", **r} for k, s, r in runs]), flush=True)
