"""A fix for torch 2.13's inductor: a buffer a compiled region hands back must outlive its use.

A `torch.compiler.nested_compile_region` (an `invoke_subgraph` in the graph) may return one of its
own inputs, or a view of one: its forward does so whenever the backward needs that input, since
AOTAutograd's partitioner makes the saved tensors outputs of the forward region. Inductor's outer
graph takes each region output for a fresh buffer (`MultiOutput`) and does not know that it is
the input buffer the caller passed in. So when the caller's last own use of that input is the
region call, inductor frees it and reuses its memory for a later result, and the saved tensor
(still to be read by the backward) is overwritten. The gradients come out wrong, silently.

Seen in nestc: a per-token step of a memory (torch.func gradients of its objective) called as one
region for every token saved the state it was given; the state after token t, an output of the
call for token t and an input of the call for t + 1, was reused by the concatenation after the
loop, and every gradient with respect to the initial state was off by more than its own size
(`tests/runtime/test_subgraph_aliases.py` has the same pattern in plain torch).

`keep_aliased_inputs()` teaches inductor what the region returns: after `InvokeSubgraph.create`
has lowered the region, every output that is (a view of) one of the region's inputs reports the
buffer passed in as that input through `get_inputs_that_alias_output`. The scheduler then shares
the two buffers' lists of users (as it does for any aliasing op), so the input lives as long as
the output is read. Nothing else changes: no copy, the same kernels.

As with `subgraph_donation`, inductor's cache keys do not see this, so the fix adds `CACHE_TAG`
to torch's `cache_key_tag`: code compiled without it is not read from a warm cache.
"""

from __future__ import annotations

import functools

CACHE_TAG = "nestc-region-outputs-alias-inputs"
_FOUND: list = []  # (InvokeSubgraph.create, MultiOutput.get_inputs_that_alias_output) before the fix


def _ir():
    try:
        from torch._inductor import ir
    except ImportError:  # pragma: no cover - a torch without inductor
        return None
    if not (hasattr(ir, "InvokeSubgraph") and hasattr(ir, "MultiOutput")):
        return None  # pragma: no cover - an older torch: no regions to mend
    return ir


def _name(node) -> str | None:
    """The buffer a lowered value reads (a view's: the buffer it views), or None (a constant)."""
    try:
        return node.get_name()
    except (AttributeError, NotImplementedError):
        return None


def _mark_aliases(subgraph, outputs) -> None:
    """Tag each region output that is one of the region's inputs with the buffer passed there."""
    region = next((o.inputs[0] for o in outputs if hasattr(o, "inputs") and o.inputs), None)
    if region is None or subgraph.graph is None:
        return
    input_names = list(subgraph.graph.graph_input_names)
    for out, inner in zip(outputs, subgraph.graph.graph_outputs):
        inner_name = _name(inner)
        if inner_name not in input_names or not hasattr(out, "inputs"):
            continue
        outer_name = _name(region.inputs[input_names.index(inner_name)])
        if outer_name is not None:
            out._nestc_aliases = (outer_name,)


def keep_aliased_inputs() -> bool:
    """Apply the fix (idempotent); True when this torch has the classes it mends and they are mended."""
    import torch.compiler.config as compiler_config

    ir = _ir()
    if ir is None:
        return False
    create = ir.InvokeSubgraph.create.__func__
    if not getattr(create, "_nestc_aliases", False):
        aliases = ir.MultiOutput.get_inputs_that_alias_output
        _FOUND.append((create, aliases))

        @functools.wraps(create)
        def create_marked(cls, subgraph, *operands):
            outputs = create(cls, subgraph, *operands)
            _mark_aliases(subgraph, outputs)
            return outputs

        @functools.wraps(aliases)
        def inputs_that_alias_output(self):
            return [*aliases(self), *getattr(self, "_nestc_aliases", ())]

        create_marked._nestc_aliases = True
        ir.InvokeSubgraph.create = classmethod(create_marked)
        ir.MultiOutput.get_inputs_that_alias_output = inputs_that_alias_output
    tag = compiler_config.cache_key_tag
    if CACHE_TAG not in tag.split("+"):
        compiler_config.cache_key_tag = f"{tag}+{CACHE_TAG}" if tag else CACHE_TAG
    return True


def restore() -> None:
    """Put back torch's own `InvokeSubgraph.create` and `MultiOutput`'s alias list, and take this
    fix's part out of the cache tag (leaving any other part, the donation fix's say)."""
    import torch.compiler.config as compiler_config

    ir = _ir()
    if ir is not None and _FOUND:
        create, aliases = _FOUND.pop()
        ir.InvokeSubgraph.create = classmethod(create)
        ir.MultiOutput.get_inputs_that_alias_output = aliases
        parts = [p for p in compiler_config.cache_key_tag.split("+") if p and p != CACHE_TAG]
        compiler_config.cache_key_tag = "+".join(parts)
