"""How much of inductor's C++ kernel writing, in a cold compile of a spec's training step, writes
a kernel whose source an earlier kernel already had (inductor then reuses that kernel's name and
build, but has spent the time writing it). Times `CppScheduling.codegen_node` (turning a fused
node group into loops) between two kernel definitions and files that time under the kernel
defined next. Empty inductor cache; one cold compile (Hope: about six minutes).

    python benchmarks/results/amd_epyc/compile_inventory/kernel_duplicates.py hope unroll
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="kernel-duplicates-")

import torch  # noqa: E402
from torch._inductor import graph as inductor_graph  # noqa: E402
from torch._inductor.codegen import cpp  # noqa: E402

from graph_inventory import first_step  # noqa: E402  (beside this script)


def main() -> None:
    spec, loops = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    stats: collections.Counter = collections.Counter()
    pending = [0.0]  # codegen_node seconds since the last kernel definition
    seen: set[str] = set()
    codegen_node, define_kernel, graph_codegen = (cpp.CppScheduling.codegen_node, cpp.CppScheduling.define_kernel,
                                                  inductor_graph.GraphLowering.codegen)

    def timed_codegen_node(self, node):
        t = time.perf_counter()
        try:
            return codegen_node(self, node)
        finally:
            pending[0] += time.perf_counter() - t

    def counted_define_kernel(self, src_code, nodes, kernel_args=None):
        repeat = src_code in seen
        seen.add(src_code)
        stats["kernels"] += 1
        stats["repeats"] += repeat
        stats["write_s"] += pending[0]
        stats["repeat_write_s"] += pending[0] if repeat else 0.0
        pending[0] = 0.0
        return define_kernel(self, src_code, nodes, kernel_args)

    def timed_graph_codegen(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return graph_codegen(self, *args, **kwargs)
        finally:
            stats["graph_codegen_s"] += time.perf_counter() - t

    cpp.CppScheduling.codegen_node = timed_codegen_node
    cpp.CppScheduling.define_kernel = counted_define_kernel
    inductor_graph.GraphLowering.codegen = timed_graph_codegen
    first_step("kernel duplicates", spec, loops, "cold compile")
    print(f"write the kernels (GraphLowering.codegen, all graphs): {stats['graph_codegen_s']:.1f} s")
    print(f"  of which node groups to C++ loops (codegen_node): {stats['write_s']:.1f} s")
    print(f"kernels defined: {stats['kernels']}, of which repeat an earlier kernel's source: "
          f"{stats['repeats']} ({stats['repeats'] / max(stats['kernels'], 1):.0%}), "
          f"their codegen_node time {stats['repeat_write_s']:.1f} s")


if __name__ == "__main__":
    main()
