"""runtime/kernel_batching.py: building a graph's C++ kernels together must change how many
times g++ runs, never what the compiled function computes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from nestc.runtime import kernel_batching
from nestc.runtime.kernel_batching import batch_kernel_builds, batchable, combined_source, groups

pytest.importorskip("torch._inductor.async_compile")


def _step(x, w1, w2):
    """Several fused kernels forward and more backward (norm, activations, softmax, reductions)."""
    h = torch.nn.functional.gelu(x @ w1) * torch.sigmoid(x.sum(-1, keepdim=True))
    h = h / (h.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    y = torch.softmax(h @ w2, dim=-1) + torch.tanh(h).mean(-1, keepdim=True)
    return (y * y).sum()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, requires_grad=True) for s in [(48, 40), (40, 96), (96, 40)]]


def _compiled_results(cache: Path, monkeypatch, batched: bool):
    """Loss and gradients of the compiled step, compiled from scratch into `cache`."""
    from torch._inductor.codecache import CppPythonBindingsCodeCache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    monkeypatch.setenv("NESTC_BATCH_KERNELS", "1" if batched else "0")
    torch._dynamo.reset()
    CppPythonBindingsCodeCache.cache_clear()  # no kernel loaded by an earlier test is reused
    args = _inputs()
    from torch._inductor import config

    with config.patch(fx_graph_cache=False):
        loss = torch.compile(_step, fullgraph=True, dynamic=False)(*args)
        loss.backward()
    return [loss.detach()] + [a.grad for a in args]


def _libraries(cache: Path) -> set[str]:
    return {p.name for p in cache.rglob("*.so")}


def test_batched_kernels_compute_bit_for_bit_what_separate_ones_do(tmp_path, monkeypatch):
    assert batch_kernel_builds()
    separate = _compiled_results(tmp_path / "separate", monkeypatch, batched=False)
    batched = _compiled_results(tmp_path / "batched", monkeypatch, batched=True)
    for a, b in zip(separate, batched):
        assert torch.equal(a, b)
    eager_args = _inputs()
    eager = _step(*eager_args)
    eager.backward()
    for got, want in zip(batched, [eager.detach()] + [a.grad for a in eager_args]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    # fewer g++ builds: the separate cache has one library per kernel, the batched one a few
    n_separate, n_batched = len(_libraries(tmp_path / "separate")), len(_libraries(tmp_path / "batched"))
    assert n_separate >= 4, "the test step should make several kernels"
    assert n_batched < n_separate


def test_a_warm_cache_loads_the_batched_libraries_without_building(tmp_path, monkeypatch):
    assert batch_kernel_builds()
    first = _compiled_results(tmp_path / "c", monkeypatch, batched=True)
    built = {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*.so")}
    again = _compiled_results(tmp_path / "c", monkeypatch, batched=True)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*.so")} == built


def test_a_batch_that_does_not_build_falls_back_to_one_build_per_kernel(tmp_path, monkeypatch, caplog):
    assert batch_kernel_builds()
    separate = _compiled_results(tmp_path / "separate", monkeypatch, batched=False)
    broken = lambda kernels: combined_source(kernels) + "\nthis is not C++;\n"  # noqa: E731
    monkeypatch.setattr(kernel_batching, "combined_source", broken)
    with caplog.at_level(logging.WARNING, logger=kernel_batching.__name__):
        fallback = _compiled_results(tmp_path / "broken", monkeypatch, batched=True)
    assert any("building them one by one" in r.getMessage() for r in caplog.records)
    assert all(torch.equal(a, b) for a, b in zip(separate, fallback))


KERNEL = '''
#include <torch/csrc/inductor/cpp_prefix.h>
extern "C"  void  kernel(const float* in_ptr0, float* out_ptr0)
{
    #pragma omp parallel
    for (int64_t i = 0; i < 16; i++) out_ptr0[i] = in_ptr0[i] * 2.0f;
}
'''


def test_only_sources_with_one_entry_and_no_preprocessor_state_are_batched():
    assert batchable(KERNEL)
    assert not batchable(KERNEL + KERNEL)  # two entry points
    assert not batchable("#define N 16\n" + KERNEL)  # a macro would leak into the next kernel
    assert not batchable(KERNEL.replace('extern "C"  void  kernel(', "void run("))


def test_combined_source_namespaces_each_kernel_and_binds_each_entry():
    src = combined_source([(["const float*", "float*"], KERNEL), (["const float*", "float*", "int64_t"], KERNEL)])
    assert src.count("#include <torch/csrc/inductor/cpp_prefix.h>") == 1
    assert "namespace nestc_k0 {" in src and "namespace nestc_k1 {" in src
    assert 'extern "C"' not in src.split("#define PY_SSIZE_T_CLEAN")[0]
    assert "nestc_k1::kernel(nestc_arg<float*>(args, 0), nestc_arg<float*>(args, 1), nestc_arg<int64_t>(args, 2))" in src
    assert '{"kernel_0", kernel_0_py' in src and '{"kernel_1", kernel_1_py' in src
    assert "PyInit_kernel" in src


@pytest.mark.parametrize("sizes,n", [([5] * 7, 2), ([1, 100, 1, 1], 2), ([3], 4), ([2, 2, 2], 3), ([9, 1, 1, 1, 1], 3)])
def test_groups_are_consecutive_runs_covering_every_kernel_once(sizes, n):
    runs = groups(sizes, n)
    assert 1 <= len(runs) <= min(n, len(sizes))
    assert [i for r in runs for i in r] == list(range(len(sizes)))
    assert all(len(r) > 0 for r in runs)
    if sizes == [5] * 7:
        assert [len(r) for r in runs] == [4, 3]  # about equal halves


def _scaled_kernel(scale: float, offset: float) -> str:
    return KERNEL.replace("in_ptr0[i] * 2.0f", f"in_ptr0[i] * {scale}f + {offset}f")


def test_a_placeholder_called_before_wait_builds_its_batch_and_runs_its_own_kernel(tmp_path, monkeypatch):
    from torch._inductor.async_compile import AsyncCompile
    from torch._inductor.codecache import CppPythonBindingsCodeCache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    CppPythonBindingsCodeCache.cache_clear()
    _, get_compile_threads, bindings = kernel_batching._hooks()
    batch = kernel_batching.KernelBatch(AsyncCompile(), get_compile_threads, bindings)
    argtypes = ["const float*", "float*"]
    affine = [(2.0, 0.0), (3.0, 1.0), (-1.0, 0.5)]
    placeholders = [batch.add(argtypes, _scaled_kernel(s, o)) for s, o in affine]
    x = torch.arange(16, dtype=torch.float32)
    for placeholder, (s, o) in reversed(list(zip(placeholders, affine))):
        out = torch.empty(16)
        placeholder(x, out)  # the first call builds all three; each runs its own kernel
        assert torch.equal(out, x * s + o)
    assert batch.functions is not None and len(_libraries(tmp_path)) < 3
    with pytest.raises(RuntimeError, match="already built"):
        batch.add(argtypes, KERNEL)


def test_prepare_inductor_applies_every_compile_time_adjustment():
    from nestc.runtime.inductor_setup import prepare_inductor

    active = prepare_inductor()
    assert active == {"wide_index_caches": True, "batched_kernel_builds": True,
                      "empty_tails_skipped": True, "vec_isa_probes_ahead": True,
                      "custom_functions_cached": True, "subgraph_inputs_kept": True,
                      "region_output_aliases_kept": True}
    from torch._inductor.async_compile import AsyncCompile

    assert getattr(AsyncCompile, kernel_batching._PATCHED)
    assert prepare_inductor() == active  # idempotent
