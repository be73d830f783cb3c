"""The adjustments nestc makes to inductor before it calls torch.compile.

Each of the first five changes how long a compile takes, never the code it produces; the last
two mend torch bugs that made wrong code. Each lives in a module of its own with its own tests:

- `inductor_caches.widen`: memo caches for two index helpers large enough for a whole graph, and
  a shortcut for plain strided indexing;
- `kernel_batching.batch_kernel_builds`: a graph's C++ kernels built a few per g++ run;
- `inductor_tails.skip_empty_tails`: no vector tail kernels written for loops whose tail is empty;
- `vec_isa_probes.probe_vec_isas_ahead`: inductor's vector-ISA test builds started early, side by
  side, instead of one after another inside the first compile;
- `autograd_cache.allow_custom_functions`: AOTAutograd's cache keeps the graphs that hold
  `_StateTimes` (an `autograd.Function`), so a later process reuses their traced and partitioned
  forward and backward instead of tracing them again (Hope's warm compile 86 → 28 s);
- `subgraph_donation.keep_subgraph_inputs`: a compiled region's backward (loop modes "region"
  and "scan") no longer overwrites gradient buffers its caller still reads (torch 2.13 gave
  wrong gradients; fixed upstream in pytorch/pytorch#193960), and caches written without the
  fix are not read;
- `subgraph_aliases.keep_aliased_inputs`: a region's output that is one of its inputs (a saved
  tensor its backward reads) keeps that input's buffer from being reused while it is read
  (torch 2.13 overwrote it: wrong gradients), and caches written without the fix are not read.

`prepare_inductor()` applies all of them; every nestc path that compiles (the training step,
the optimizer steps, the benchmark rows, the test session) calls it, so they all compile the same way.
`mend_region_bugs()` applies the last two only; the models that need them (regions or scans in
their compiled form) call it when they are built, so a user's own torch.compile gets them too.
"""

from __future__ import annotations

from .autograd_cache import allow_custom_functions
from .inductor_caches import widen
from .inductor_tails import skip_empty_tails
from .kernel_batching import batch_kernel_builds
from .subgraph_aliases import keep_aliased_inputs
from .subgraph_donation import keep_subgraph_inputs
from .vec_isa_probes import probe_vec_isas_ahead


def mend_region_bugs() -> bool:
    """The two fixes that mend wrong code (idempotent), for the models whose compiled form holds
    regions or scans: a general-rule box (runtime/memory.py `GeneralMemory`, one region call per
    token) and loop modes "region" and "scan" apply them themselves, so that a user's own
    torch.compile of such a model, without `prepare_inductor()`, gets the gradients eager gives
    (without them: 300x off in tests/compile/test_own_compile.py's case). True when both apply."""
    return keep_subgraph_inputs() and keep_aliased_inputs()


def prepare_inductor() -> dict[str, bool]:
    """Apply every adjustment (idempotent); says which are active in this process and torch."""
    return {"wide_index_caches": widen(), "batched_kernel_builds": batch_kernel_builds(),
            "empty_tails_skipped": skip_empty_tails(),
            "vec_isa_probes_ahead": probe_vec_isas_ahead(),
            "custom_functions_cached": allow_custom_functions(),
            "subgraph_inputs_kept": keep_subgraph_inputs(),
            "region_output_aliases_kept": keep_aliased_inputs()}
