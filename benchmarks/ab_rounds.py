"""Alternating A/B rounds of two training steps in one process, for claims of "A is faster than
B" on a VM whose speed drifts by 10% and more within minutes: the two step in turn, the order
flipped every round, so that a drift weighs on both alike. Used by the A/B scripts under
benchmarks/results/."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def alternating_rounds(steps: dict[str, Callable[[], object]], select: Callable[[str], None],
                       rounds: int = 8) -> dict[str, list[float]]:
    """Seconds of each step, round by round. `select(name)` runs before each of that variant's
    steps (the scripts swap the function under test there)."""
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            select(name)
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def print_rounds(times: dict[str, list[float]], slower: str, faster: str) -> None:
    """Each variant's median and every round (the first round, still warming, is left out of the
    medians), then the per-round ratio slower/faster and its median."""
    for name, ts in times.items():
        print(name, "median ms %.0f" % (1e3 * statistics.median(ts[1:])), "all", [round(1e3 * t) for t in ts])
    pairs = [a / b for a, b in zip(times[slower][1:], times[faster][1:])]
    print(f"{slower}/{faster} per round:", [round(p, 3) for p in pairs], "median", round(statistics.median(pairs), 3))
