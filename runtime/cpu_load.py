"""How much of the machine's CPU other processes use, so a benchmark can say when its timings
are not to be trusted.

On a small machine a second busy process does not just take its share: on the 2-core VM this
project is built on, `nestc bench titans --no-compile` took a median 567.5 ms per eager step
alone, and 3,484.7 ms and 4,585.4 ms when two of them ran at once
(benchmarks/results/busy_pair/). The likely cause (not traced) is that OpenMP threads spin at
the end of every parallel region for threads that are descheduled. A benchmark taken then is
noise.

The meter reads the machine's busy CPU time from /proc/stat (user, nice, system, irq, softirq;
not steal, which the hypervisor takes) and subtracts this process's and its finished children's
(getrusage). Linux only: elsewhere it reports None.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

STAT = Path("/proc/stat")
BUSY_FIELDS = (0, 1, 2, 5, 6)  # user nice system [idle iowait] irq softirq


def machine_busy_s() -> float | None:
    """CPU seconds all processes have used since boot, or None without /proc/stat."""
    try:
        first = STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    ticks = [int(v) for v in first[1:]]
    return sum(ticks[i] for i in BUSY_FIELDS if i < len(ticks)) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and of the children it has waited for."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


class OtherLoad:
    """Measures, between `start()` and `share()`, the fraction of all CPUs that processes other
    than this one and its children kept busy: 0 on an idle machine, 1 when they took every core."""

    def __init__(self) -> None:
        self.t0 = self.busy0 = self.own0 = None

    def start(self) -> "OtherLoad":
        self.t0, self.busy0, self.own0 = time.monotonic(), machine_busy_s(), own_cpu_s()
        return self

    def share(self) -> float | None:
        busy = machine_busy_s()
        if busy is None or self.busy0 is None:
            return None
        wall = time.monotonic() - self.t0
        if wall <= 0:
            return None
        other = (busy - self.busy0) - (own_cpu_s() - self.own0)
        return min(max(other / (wall * (os.cpu_count() or 1)), 0.0), 1.0)


def other_load(seconds: float = 0.5) -> float | None:
    """The share of the CPUs other processes use now, sampled over `seconds` while this one sleeps."""
    meter = OtherLoad().start()
    time.sleep(seconds)
    return meter.share()


BUSY_THRESHOLD = 0.25  # above this, a benchmark warns that its timings are unreliable


def busy_warning(share: float | None, when: str) -> str | None:
    """A one-line warning when `share` is above the threshold, else None."""
    if share is None or share <= BUSY_THRESHOLD:
        return None
    return (f"other processes kept {share:.0%} of the CPUs busy {when}: timings are not reliable "
            "(on a small machine, two torch processes slow each other down several times over); "
            "rerun on an idle machine")
