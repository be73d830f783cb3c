"""Let AOTAutograd's cache keep graphs that contain a custom `torch.autograd.Function`.

A compiled memory reads its state through `_StateTimes` (runtime/memory.py), an
`autograd.Function`; dynamo traces it into the graph as the higher-order op
`autograd_function_apply`, with its forward and backward as subgraphs. AOTAutograd's cache
(which keeps, per graph, the traced joint graph's partition and the compiled forward and backward)
refuses any graph that holds that op unless `torch._functorch.config.
autograd_cache_allow_custom_autograd_functions` is on, and it is off by default in torch 2.13.
So every graph of a step with a compiled memory in it (Hope's and the Titans family's) was
traced and partitioned again in every new process, even when inductor's own cache had its kernels:
a warm compile still paid most of the cold one's AOTAutograd work.

`allow_custom_functions()` turns the setting on. It is safe for nestc's graphs for the reason
torch's authors give for the setting (pytorch/pytorch#149751): the op is pure in the graph's
inputs, and both its subgraphs are part of the graph the cache key is computed from, so a changed
`forward` or `backward` is a different key. It changes no generated code, only whether a later
process may reuse it. A user who wants the setting off can say so with torch's own environment
variable, `TORCHINDUCTOR_AUTOGRAD_CACHE_ALLOW_CUSTOM_AUTOGRAD=0`, which torch lets override any
value set in code. `restore()` puts back the value it found.
"""

from __future__ import annotations

_FOUND: list[bool] = []  # the value before allow_custom_functions() first changed it


def _config():
    try:
        import torch._functorch.config as config
    except ImportError:  # pragma: no cover - a torch without AOTAutograd's config
        return None
    return config if hasattr(config, "autograd_cache_allow_custom_autograd_functions") else None


def allow_custom_functions() -> bool:
    """Turn the setting on (idempotent); True when this torch has it and it is on."""
    config = _config()
    if config is None:
        return False
    if not _FOUND:
        _FOUND.append(config.autograd_cache_allow_custom_autograd_functions)
    config.autograd_cache_allow_custom_autograd_functions = True
    return bool(config.autograd_cache_allow_custom_autograd_functions)


def restore() -> None:
    """Put back the value the setting had before `allow_custom_functions()`."""
    config = _config()
    if config is not None and _FOUND:
        config.autograd_cache_allow_custom_autograd_functions = _FOUND.pop()
