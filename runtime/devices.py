"""Where a run's tensors live and in what precision it computes: the `--device` option of
train, generate, eval and bench, and the `--precision` option of train and bench.

"auto" is the first GPU when torch sees one, else the CPU. A name torch cannot parse, or a GPU
this machine does not have, is a one-screen error (exit 2) before anything is built, never a
CUDA traceback halfway through a run; so is an unknown precision. torch is imported on first
use, so the CLI can read the help texts without paying for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nestc.diagnostics import NestError, Pos

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "cpu, cuda, cuda:N or auto (the GPU when there is one, else the CPU)"
PRECISIONS = ("fp32", "bf16")
PRECISION_HELP = ("fp32 (default) or bf16: matrix products in bfloat16 under torch.autocast, "
                  "parameters, gradients and memory states in float32")


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


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise NestError.at(Pos(file="--precision"), f"`--precision {name}`: not a precision",
                           hint=PRECISION_HELP)
    return name


def check_loops_precision(loops: str, precision: str) -> None:
    """A compiled step's loop mode and precision that torch can compile together (ops.NO_AUTOCAST_LOOPS)."""
    from .ops import NO_AUTOCAST_LOOPS

    if precision == "bf16" and loops in NO_AUTOCAST_LOOPS:
        raise NestError.at(Pos(file="--loops"), f"`--loops {loops}` does not compile under `--precision bf16`: "
                           f"torch 2.13 cannot compile a {loops} loop's body under autocast",
                           hint="with bf16 use --loops unroll (the default) or call; or run region/scan loops in fp32")


def autocast(device: "torch.device", precision: str):
    """The context a forward pass runs in: nothing for fp32; for bf16, torch.autocast (matrix
    products in bfloat16; the delta rule keeps its state in float32, see runtime/kernels/delta)."""
    import contextlib

    import torch

    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
