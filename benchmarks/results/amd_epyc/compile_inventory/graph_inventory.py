"""What AOTAutograd hands the compiler for each graph of a spec's training step: nodes in the
graph itself, calls of reusable regions (invoke_subgraph) and the regions' own nodes, and which
source lines the graph's nodes come from. No inductor: each graph runs as it is traced
(aot_autograd with a counting compiler), so a run takes about a minute for Hope.

    python benchmarks/results/amd_epyc/compile_inventory/graph_inventory.py hope region
    python benchmarks/results/amd_epyc/compile_inventory/graph_inventory.py hope unroll
"""

from __future__ import annotations

import collections
import functools
import re
import sys
import time

import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from nestc.runtime.bench import build_step, machine


def where(node: torch.fx.Node) -> str:
    """The innermost nestc runtime or generated-code frames a node was traced from."""
    frames = re.findall(r'File "([^"]+)", line \d+, in (\w+)', node.meta.get("stack_trace") or "")
    mine = [f"{f.rsplit('/', 1)[-1]}:{fn}" for f, fn in frames if "/runtime/" in f or "nestc_generated" in f]
    return " > ".join(mine[-2:]) if mine else f"(no trace: {node.op})"


def counting(kind: str):
    def compiler(gm: torch.fx.GraphModule, example_inputs):
        regions = {name: len(m.graph.nodes) for name, m in gm.named_children()
                   if isinstance(m, torch.fx.GraphModule)}
        calls = sum(1 for n in gm.graph.nodes if "invoke_subgraph" in str(n.target))
        print(f"{kind} graph: {len(gm.graph.nodes)} nodes, {calls} region calls, regions {regions}")
        for line, count in collections.Counter(where(n) for n in gm.graph.nodes).most_common(6):
            print(f"    {count:5d}  {line}")
        return make_boxed_func(gm.forward)
    return compiler


def main() -> None:
    spec, loops = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    backend = aot_autograd(fw_compiler=counting("forward"), bw_compiler=counting("backward"))
    original = torch.compile

    def compile_counting(fn=None, **kw):  # every torch.compile of the step, with this backend
        kw = {k: v for k, v in kw.items() if k not in ("options", "mode")}
        kw["backend"] = backend
        return original(fn, **kw) if fn is not None else functools.partial(compile_counting, **kw)

    torch.compile = compile_counting
    first_step("graph inventory", spec, loops, "traced, not compiled by inductor")


def first_step(title: str, spec: str, loops: str, what: str) -> None:
    """Print what runs where, then build the spec's compiled training step (batch 4 x seq 128,
    first pass frozen) and time its first step (kernel_duplicates.py uses this too)."""
    m = machine()
    print(f"{title}: {spec}, loops {loops}, first pass frozen, batch 4 x seq 128; "
          f"{m['cpu']} ({m['cpu_capability']}), torch {m['torch']}, commit {m['commit']}")
    step, _ = build_step(spec, {}, 4, 128, compile=True, loops=loops, first_pass="frozen")
    t0 = time.perf_counter()
    step()
    print(f"first step ({what}): {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
