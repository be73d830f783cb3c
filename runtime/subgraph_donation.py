"""A fix for torch 2.13's inductor: a compiled region's backward must not overwrite its inputs.

AOTAutograd tells inductor which inputs of a backward graph are "donated" (buffers nothing reads
after the graph, which the graph may reuse for its own results), by their positions in the outer
graph. Inductor's lowering of a subgraph (`SubgraphLowering`: the body of a
`torch.compiler.nested_compile_region`, which nestc's loop mode "region" calls once per chunk,
and of a scan) inherits those positions and applies them to the subgraph's own, unrelated
inputs. A region's backward may then write its result into a gradient buffer its caller passed
in and still owns: the caller reuses that buffer for the next chunk's gradients, and the result
is overwritten before it is read. The gradients come out wrong, silently.

Seen in nestc: with every chunk of a loop calling the same region (`ops._region_loop`), the input
gradients of all chunks but the first were off by more than their own size (a 4-chunk loop
whose region returns `x + y`; `tests/runtime/test_subgraph_donation.py` is that case in plain
torch). Torch fixed it upstream the same way (pytorch/pytorch#193960, "Keep subgraph inputs from
inheriting donation indices"): a subgraph's inputs are never donated. `keep_subgraph_inputs()`
does that here: `SubgraphLowering` drops the inherited positions. The outer graphs keep theirs.

Inductor's cache keys do not include the donated positions, so a graph compiled before the fix
would still be found in a warm cache with the wrong code in it. The fix therefore also adds
`CACHE_TAG` to torch's `cache_key_tag` (after any tag of the user's), which every key includes:
caches written without the fix are not read (a one-time cold compile). `restore()` undoes both.
"""

from __future__ import annotations

import functools

CACHE_TAG = "nestc-undonated-subgraph-inputs"
_FOUND: list = []  # (SubgraphLowering.__init__, cache_key_tag) before the fix, once applied


def _subgraph_lowering():
    try:
        from torch._inductor import graph
    except ImportError:  # pragma: no cover - a torch without inductor
        return None
    return getattr(graph, "SubgraphLowering", None)


def keep_subgraph_inputs() -> bool:
    """Apply the fix (idempotent); True when this torch has the class it mends and it is mended."""
    import torch.compiler.config as compiler_config

    cls = _subgraph_lowering()
    if cls is None:
        return False
    init = cls.__init__
    if not getattr(init, "_nestc_undonated", False):
        _FOUND.append((init, compiler_config.cache_key_tag))

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            # the outer graph's donated positions say nothing about this subgraph's inputs
            self.bw_donated_idxs = None

        __init__._nestc_undonated = True
        cls.__init__ = __init__
    tag = compiler_config.cache_key_tag
    if CACHE_TAG not in tag.split("+"):
        compiler_config.cache_key_tag = f"{tag}+{CACHE_TAG}" if tag else CACHE_TAG
    return True


def restore() -> None:
    """Put back torch's own `SubgraphLowering.__init__` and cache tag."""
    import torch.compiler.config as compiler_config

    cls = _subgraph_lowering()
    if cls is not None and _FOUND:
        init, tag = _FOUND.pop()
        cls.__init__ = init
        compiler_config.cache_key_tag = tag
