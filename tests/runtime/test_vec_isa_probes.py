"""runtime/vec_isa_probes.py: probing inductor's vector ISAs ahead of time, side by side, must
give the answers torch's own serial probes give, and the probes must really run ahead (off the
main thread, before inductor asks) and side by side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch._inductor.cpu_vec_isa")

# Runs in a fresh interpreter with an empty inductor cache, so every probe really builds.
PROBE = r"""
import json, sys, threading, time
from torch._inductor import cpu_vec_isa
from nestc.runtime.vec_isa_probes import candidates, probe_vec_isas_ahead

spans = []
check_build = cpu_vec_isa.VecISA.check_build
def timed(self, code):
    start = time.monotonic()
    try:
        return check_build(self, code)
    finally:
        spans.append((str(self), start, time.monotonic(), threading.current_thread().name))
cpu_vec_isa.VecISA.check_build = timed

if sys.argv[1] == "ahead":
    assert probe_vec_isas_ahead() and probe_vec_isas_ahead()
    time.sleep(1.0)  # what dynamo and AOT autograd do before inductor asks
asked = time.monotonic()
picked = cpu_vec_isa.pick_vec_isa()
print(json.dumps({
    "valid": [str(i) for i in cpu_vec_isa.valid_vec_isa_list()],
    "picked": str(picked), "flags": picked.build_arch_flags() if picked else "",
    "candidates": [str(i) for i in candidates(cpu_vec_isa)], "spans": spans, "asked": asked,
}))
"""


def _probe(mode: str, cache) -> dict:
    import os

    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_probes_run_ahead_and_find_the_isas_and_flags_the_serial_probes_find(tmp_path):
    serial = _probe("serial", tmp_path / "serial")
    parallel = _probe("ahead", tmp_path / "ahead")
    assert parallel["valid"] == serial["valid"]
    assert parallel["picked"] == serial["picked"] and parallel["flags"] == serial["flags"]
    # the same probes ran (same ISAs, same number of builds), only at other times
    assert sorted(s[0] for s in parallel["spans"]) == sorted(s[0] for s in serial["spans"])
    if not parallel["candidates"]:
        pytest.skip("no x86 vector ISA to probe on this CPU")
    assert all(s[3].startswith("nestc-isa-probe") for s in parallel["spans"])  # none on the main thread
    firsts = {}
    for name, start, _, thread in parallel["spans"]:
        firsts[thread] = min(start, firsts.get(thread, start))
    assert all(start < parallel["asked"] for start in firsts.values())  # each began before inductor asked
    if len(parallel["candidates"]) < 2:
        pytest.skip(f"this CPU reports {parallel['candidates']}: nothing to run side by side")
    assert len({s[3] for s in serial["spans"]}) == 1  # torch's own: one thread, one probe at a time
    spans = sorted(parallel["spans"], key=lambda s: s[1])
    overlapping = any(b[1] < a[2] for a, b in zip(spans, spans[1:]))
    assert overlapping and len({s[3] for s in spans}) >= 2


def test_candidates_are_what_the_cpu_reports():
    from torch._inductor import cpu_vec_isa

    from nestc.runtime.vec_isa_probes import candidates

    import platform

    names = [str(i) for i in candidates(cpu_vec_isa)]
    if platform.machine() not in ("x86_64", "AMD64"):
        assert names == []
        return
    reported = set(cpu_vec_isa.x86_isa_checker())
    assert all(set(n.split()) <= reported for n in names)
    if "avx2" in reported:
        assert "avx2" in names
