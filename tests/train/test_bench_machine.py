"""A results file names the machine well enough to compare runs: "AMD EPYC" alone covers VMs
with and without AVX-512, whose step and compile times differ by about 2× in this repo's results
(benchmarks/results/amd_epyc/ and amd_epyc_avx2/)."""

import platform

from nestc.runtime.bench import machine


def test_machine_names_the_vector_isa_aten_dispatches_to():
    m = machine()
    assert {"cpu", "cpu_capability", "logical_cpus", "threads", "torch", "commit"} <= set(m)
    if platform.machine() in ("x86_64", "AMD64"):
        assert m["cpu_capability"] in {"DEFAULT", "AVX2", "AVX512"}
