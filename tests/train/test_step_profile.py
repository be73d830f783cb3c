"""benchmarks/step_profile.py: where a spec's training step spends its time, op by op."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nestc.runtime.bench import build_step

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "step_profile.py"
TINY = ("linear_attention", "--batch", "1", "--seq-len", "16", "--threads", "1", "--steps", "2")


def _run(*args, timeout=900):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_eager_matrix_product_flops_match_torchs_flop_counter(tmp_path):
    """The FLOPs the script reads off the profiler's input shapes are the ones torch's own
    FlopCounterMode counts for the same step's mm, bmm, addmm and baddbmm calls."""
    run = _run(*TINY, "--mode", "eager", "--json", str(tmp_path / "eager.json"))
    assert run.returncode == 0, run.stderr
    res = json.loads((tmp_path / "eager.json").read_text())
    ours = sum(p["gflop_per_step"] for p in res["products"] if p["gflop_per_step"] is not None)

    step, _ = build_step("linear_attention", {}, 1, 16, compile=False)
    step()  # as the script does: the optimizer's state exists before the counted step
    with FlopCounterMode(display=False) as counter:
        step()
    counts = counter.get_flop_counts()["Global"]
    theirs = sum(v for k, v in counts.items() if str(k).split(".")[-1] in ("mm", "bmm", "addmm", "baddbmm"))
    assert theirs > 0
    assert abs(ours * 1e9 - theirs) <= 1e-6 * theirs

    groups = res["groups"]
    assert groups["matrix products"]["ms"] > 0 and groups["other ATen ops"]["ms"] > 0
    assert groups["inductor's kernels"]["ops"] == 0  # nothing was compiled
    times = [r["ms_per_step"] for r in res["ops"]]
    assert times == sorted(times, reverse=True)
    assert "where the time goes" in run.stdout and "ATen ops by input shapes" in run.stdout


def test_a_compiled_step_is_seen_kernel_by_kernel(tmp_path):
    run = _run(*TINY, "--cache", str(tmp_path / "cache"), "--json", str(tmp_path / "compiled.json"))
    assert run.returncode == 0, run.stderr
    res = json.loads((tmp_path / "compiled.json").read_text())
    kernels = [r for r in res["ops"] if r["group"] == "inductor's kernels"]
    assert kernels and all("cpp_fused" in r["op"] for r in kernels)
    assert res["groups"]["inductor's kernels"]["ms"] > 0
    assert res["groups"]["compiled-graph wrappers"]["ops"] >= 1
    assert res["groups"]["matrix products"]["ms"] > 0
    assert f"{len(kernels)} kernels" in run.stdout


def test_bad_arguments_and_specs_are_clear_errors(tmp_path):
    for args, says in ((("linear_attention", "--steps", "0"), "--steps 0"),
                       (("linear_attention", "--loops", "sideways"), "--loops sideways"),
                       (("linear_attention", "--first-pass", "twice"), "--first-pass twice")):
        run = _run(*args, timeout=120)
        assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr
    bad = tmp_path / "typo.nest"
    bad.write_text("model typo {\n  box m : nonsense\n}\n")
    run = _run(str(bad), timeout=120)
    assert run.returncode == 2, run.stderr
    assert "typo.nest" in run.stderr and "Traceback" not in run.stderr


def test_the_anchor_layer_is_profiled_as_the_peer_comparison_times_it(tmp_path):
    """--anchor-layer profiles ab_rounds.titans_layer_step (forward and backward of the Titans
    layer at B 4, T 512, no optimizer): its products' FLOPs are those torch's counter finds in
    that step; it takes no spec and no size of its own."""
    run = _run("--anchor-layer", "--mode", "eager", "--threads", "1", "--steps", "1",
               "--json", str(tmp_path / "layer.json"))
    assert run.returncode == 0, run.stderr
    res = json.loads((tmp_path / "layer.json").read_text())
    assert (res["batch"], res["seq_len"]) == (4, 512) and "anchor Titans layer" in run.stdout
    ours = sum(p["gflop_per_step"] for p in res["products"] if p["gflop_per_step"] is not None)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ab_rounds import titans_layer_step

    layer, step = titans_layer_step(False)
    assert res["params"] == sum(p.numel() for p in layer.parameters())
    with FlopCounterMode(display=False) as counter:
        step()
    counts = counter.get_flop_counts()["Global"]
    theirs = sum(v for k, v in counts.items() if str(k).split(".")[-1] in ("mm", "bmm", "addmm", "baddbmm"))
    assert abs(ours * 1e9 - theirs) <= 1e-6 * theirs
    for args in ((), ("titans", "--anchor-layer"), ("--anchor-layer", "--batch", "2"),
                 ("--anchor-layer", "--loops", "call"), ("--anchor-layer", "--first-pass", "shared")):
        run = _run(*args, timeout=120)
        assert run.returncode == 2 and "--anchor-layer" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("threads", [1, 2])
def test_scalar_loops_are_found_in_inductors_source(tmp_path, monkeypatch, threads, torch_threads):
    """benchmarks/scalar_loops.py tells a kernel that inductor left scalar from one it vectorised,
    on the case that made ShortConv store its weight tap-major: a four-tap convolution with SiLU,
    its taps read as columns of a row-major [C, 4] weight, against the same taps as rows. On one
    thread inductor writes the loop nests without their `#pragma omp for`, which the reader
    once relied on (it then found no nest at all)."""
    torch_threads(threads)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from scalar_loops import kernel_sources, scalar_iterations, scalar_nests

    def conv(x, w):
        y = x[:, :-3] * w[:, 0] + x[:, 1:-2] * w[:, 1] + x[:, 2:-1] * w[:, 2] + x[:, 3:] * w[:, 3]
        return torch.nn.functional.silu(y)

    x = torch.randn(2, 67, 64)
    found = {}
    for layout, w in (("columns", torch.randn(64, 4)), ("rows", torch.randn(4, 64).t())):
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / layout))
        torch._dynamo.reset()
        torch.compile(conv, dynamic=False)(x, w)
        found[layout] = kernel_sources(tmp_path / layout)
    (name, (source,)), = found["columns"].items()  # one kernel: conv and SiLU fused
    assert ("#pragma omp for" in source) == (threads > 1)
    assert scalar_nests(source) == [2 * 64 * 64]  # [2, 64, 64] one float at a time
    assert scalar_iterations(f"graph_0_{name}", found["columns"]) == 2 * 64 * 64
    (_, (source,)), = found["rows"].items()
    assert scalar_nests(source) == []  # vectorised
    assert scalar_iterations("aten::bmm", found["columns"]) is None
