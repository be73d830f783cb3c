"""Which of inductor's C++ kernels run loops one float at a time.

Inductor's C++ backend vectorises a loop nest unless it cannot, and one reason it cannot is
layout: it gives up on a nest in which 12% or more of the operations are loads it cannot read
contiguously (`OVERHEAD_RATIO_THRESHOLD` in torch/_inductor/codegen/cpp.py), such as a column of
a row-major weight or two layouts of one tensor shape mixed in one fused loop. Such a nest then
runs scalar, often several times slower, and nothing in a profile says so. This module reads
the generated source of every kernel in an inductor cache folder and reports, per kernel, the
loop nests (each outermost ``for``, with the loops inside it) that contain no vector operation, with their iteration
counts. `benchmarks/step_profile.py` prints it beside each kernel's time.

It reads the source text as this torch writes it (2.13: the wrapper modules hold each kernel as
``name = async_compile.cpp_pybinding([...], r'''...''')``); it is a diagnostic, not a parser.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

KERNEL = re.compile(r"^(cpp_fused_\w+) = async_compile\.cpp_pybinding\(.*?r'''(.*?)'''", re.S | re.M)
LOOP_BOUND = re.compile(r"for\(int64_t x\d+=static_cast<int64_t>\(0L\); x\d+<static_cast<int64_t>\((\d+)L\)")


def kernel_sources(cache_dir: str | Path) -> dict[str, list[str]]:
    """Every C++ kernel's source in the wrapper modules under `cache_dir`, by kernel name (a
    name can recur across graphs with other code, so each name maps to its distinct sources)."""
    found: dict[str, list[str]] = {}
    for path in Path(cache_dir).rglob("*.py"):
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        for name, source in KERNEL.findall(text):
            if source not in found.setdefault(name, []):
                found[name].append(source)
    return found


def loop_nests(source: str) -> list[str]:
    """The text of each outermost `for` loop of a kernel, with its body. Found by brace depth,
    not by ``#pragma omp for``: inductor writes that pragma only when torch runs more than one
    thread, and a kernel compiled on one thread has the same nests without it."""
    nests, depth, start, start_depth = [], 0, None, 0
    for m in re.finditer(r"for\(|\{|\}", source):
        token = m.group()
        if token == "for(":
            if start is None:
                start, start_depth = m.start(), depth
        elif token == "{":
            depth += 1
        else:
            depth -= 1
            if start is not None and depth == start_depth:
                nests.append(source[start:m.end()])
                start = None
    return nests


def scalar_nests(source: str) -> list[int]:
    """Iteration counts of the kernel's loop nests that run without vector operations (the
    product of the nest's constant loop bounds; a nest with no constant bound counts as 0)."""
    counts = []
    for nest in loop_nests(source):
        if "at::vec::" in nest:
            continue
        bounds = [int(b) for b in LOOP_BOUND.findall(nest)]
        counts.append(math.prod(bounds) if bounds else 0)
    return counts


def profiler_name_to_kernel(op: str) -> str | None:
    """The kernel name in the source for a profiler event of `cpp.enable_kernel_profile`
    (``graph_<n>_cpp_fused_...``), or None for other events."""
    m = re.match(r"graph_\d+_(cpp_fused_\w+)$", op)
    return m.group(1) if m else None


def scalar_iterations(op: str, sources: dict[str, list[str]]) -> int | None:
    """The largest scalar loop nest of the kernel behind profiler event `op` (0: every nest is
    vectorised), or None when its source is not found or the sources under its name disagree."""
    name = profiler_name_to_kernel(op)
    if name is None or name not in sources:
        return None
    counts = {max(scalar_nests(s), default=0) for s in sources[name]}
    return counts.pop() if len(counts) == 1 else None
