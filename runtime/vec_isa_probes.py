"""Start inductor's CPU vector-ISA probes early and side by side, instead of in the middle of the
first compile and one after another.

Before it writes its first C++ kernel, inductor decides which vector instruction sets it may use
(`cpu_vec_isa.valid_vec_isa_list`): for every ISA the CPU reports (AVX2, AVX-512, AVX-512 VNNI,
AMX) it builds a small test library with that ISA's flags, without the precompiled header, and
loads it in a child process. With an empty inductor cache, which is what the first compile on a
new machine or in a new cache directory has, those builds run serially inside the compile: one
probe of ~6 s on this project's AVX2-only VM, six builds and ~11 s on its AVX-512 one (2-core
VMs; the test's serial probe script and py-spy, scratch). With a warm cache the libraries exist
and only the load checks run.

`probe_vec_isas_ahead()` starts every candidate's probe on a thread of its own as soon as nestc
knows it will compile (g++ and the child process run outside the GIL, so they overlap with
dynamo's tracing and AOT autograd, which come first), and wraps `valid_vec_isa_list` so that its
first call waits for them and then runs torch's own function, which finds each answer in the
per-ISA caches torch keeps. The probes, their flags and their answers are torch's; only when they
run changes, so inductor picks the same ISA with the same flags (tests/runtime/test_vec_isa_probes.py).
Each ISA object is probed by exactly one thread, which matters because torch's AVX-512 probe
briefly edits that object's flags while it checks for bf16.
"""

from __future__ import annotations

import functools
import platform
import threading

_PATCHED = "_nestc_probed_ahead"


def probe_vec_isas_ahead() -> bool:
    """Start the probes now, in the background; True when active. Idempotent (the probes start
    once per process); False when this torch has no `cpu_vec_isa.valid_vec_isa_list` to wrap,
    or when inductor has already run its probes in this process."""
    try:
        from torch._inductor import cpu_vec_isa
    except ImportError:
        return False
    original = getattr(cpu_vec_isa, "valid_vec_isa_list", None)
    if original is None or not hasattr(cpu_vec_isa, "supported_vec_isa_list"):
        return False
    if getattr(original, _PATCHED, False):
        return True
    if hasattr(original, "cache_info") and original.cache_info().currsize:
        return False  # inductor has already probed in this process: nothing left to move
    threads = [threading.Thread(target=_probe, args=(isa,), name=f"nestc-isa-probe-{isa}", daemon=True)
               for isa in candidates(cpu_vec_isa)]
    for thread in threads:
        thread.start()

    @functools.cache
    def valid_vec_isa_list():
        for thread in threads:
            thread.join()
        return original()

    setattr(valid_vec_isa_list, _PATCHED, True)
    cpu_vec_isa.valid_vec_isa_list = valid_vec_isa_list
    return True


def candidates(cpu_vec_isa) -> list:
    """The ISAs `valid_vec_isa_list` would build probes for here: on x86, those whose names the
    CPU reports (the test it applies itself); elsewhere none (it builds nothing costly there)."""
    if platform.machine() not in ("x86_64", "AMD64") or not hasattr(cpu_vec_isa, "x86_isa_checker"):
        return []
    reported = cpu_vec_isa.x86_isa_checker()
    return [isa for isa in cpu_vec_isa.supported_vec_isa_list
            if all(flag in reported for flag in str(isa).split())]


def _probe(isa) -> None:
    try:
        bool(isa)  # torch caches the answer on the object; valid_vec_isa_list reads it from there
    except Exception:  # noqa: BLE001 - left for torch's own call to raise, or not, in its own way
        pass
