"""Where a run's tensors live: the `--device` option of train, generate, eval and bench.

"auto" is the first GPU when torch sees one, else the CPU. A name torch cannot parse, or a GPU
this machine does not have, is a one-screen error (exit 2) before anything is built, never a
CUDA traceback halfway through a run. torch is imported on first use, so the CLI can read
DEVICE_HELP without paying for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nestc.diagnostics import NestError, Pos

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "cpu, cuda, cuda:N or auto (the GPU when there is one, else the CPU)"


def resolve_device(name: str | None) -> "torch.device":
    import torch

    where = Pos(file="--device")
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise NestError.at(where, f"`--device {name}`: not a device name", hint=DEVICE_HELP) from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise NestError.at(where, f"`--device {name}`: nestc runs on the CPU or on CUDA GPUs",
                           hint=DEVICE_HELP)
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise NestError.at(where, f"`--device {name}`: torch sees no CUDA GPU here "
                           f"(torch {torch.__version__}, {build})",
                           hint="use --device cpu (or auto), or install a CUDA build of torch")
    index = 0 if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise NestError.at(where, f"`--device {name}`: this machine has "
                           f"{torch.cuda.device_count()} CUDA device(s), numbered from 0",
                           hint="pick one of them, or --device cuda")
    return torch.device("cuda", index)


def synchronize(device: "torch.device") -> None:
    """Wait for queued GPU work, so a host clock read after it times the work (a no-op on CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: "torch.device") -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return "cpu"
