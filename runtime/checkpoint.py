"""nestc checkpoints: one safetensors file holding tensors + JSON metadata.

File format ``nestc-checkpoint/1``
----------------------------------
A standard safetensors file. Its string->string metadata holds:

``"format"``
    ``"nestc-checkpoint/1"``. A file without it is not a nestc checkpoint; a higher number is a
    checkpoint from a newer nestc.
``"nestc"``
    The caller's ``meta`` dict as JSON (spec source, compile options, step, tokenizer config,
    optimizer scalars, RNG state, ...). Python's JSON dialect: ``NaN``/``Infinity`` round-trip.
``"nestc.aliases"`` (only when needed)
    JSON ``{alias_name: stored_name}`` for tied tensors, see below.

Tied / shared tensors
---------------------
safetensors refuses tensors that share memory. :func:`save_checkpoint` handles this itself:

* tensors that are the *same view* of the same memory (same storage, offset, shape, stride and
  dtype, e.g. tied input/output embeddings) are stored **once**, under the name that sorts
  first; the other names go into the alias table. :func:`load_checkpoint` gives every alias the
  *same tensor object* as its target, so ties survive a save/load round trip.
* different views of one storage (a slice of another saved tensor, ...) are **cloned** into their
  own memory; they come back as independent tensors.

Non-contiguous tensors are made contiguous, tensors are detached and moved to the CPU.
Non-finite values (NaN/Inf) in any floating tensor are refused with a :class:`NestError` naming
the tensors: a diverged state is never written into a checkpoint.

Atomic writes
-------------
The file is written to a temporary file in the target's folder (``.<name>.tmp-<pid>-<random>``),
flushed and fsynced, then ``os.replace``-d onto the target and the folder is fsynced. A crash at any
point leaves either the old checkpoint or the new one at ``path``, never a partial file; on an
exception the temporary file is removed.

Nested state (optimizer state dicts)
------------------------------------
:func:`flatten_state` turns a nested structure of dicts / lists / tuples whose leaves are tensors
or JSON scalars into ``(tensors, skeleton)``: ``tensors`` maps ``prefix.k1.k2...`` to the tensor
leaves (each key component: a dict key or list index written with ``str()``, with ``%`` and ``.``
escaped as ``%25`` and ``%2E``), ``skeleton`` is a JSON-able description of the structure in
which a tensor is ``{"t": flat_key}``, a dict ``{"d": [[key, node], ...]}`` (so int keys stay
ints), a list ``{"l": [...]}``, a tuple ``{"tu": [...]}`` and a scalar (None, bool, int, float,
str) is itself. Store ``tensors`` next to the model tensors and ``skeleton`` in the meta;
:func:`unflatten_state` rebuilds the original structure. E.g. a torch optimizer state dict
``{"state": {0: {"step": t, "exp_avg": m}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}``
with prefix ``"optim"`` gives the tensors ``optim.state.0.step`` and ``optim.state.0.exp_avg``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors import torch as st

from nestc.atomic import fsync_folder
from nestc.diagnostics import NestError, Pos

__all__ = [
    "FORMAT",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "checkpoint_tensors",
    "flatten_state",
    "inspect_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "unflatten_state",
]

FORMAT_NAME = "nestc-checkpoint"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
META_KEY = "nestc"
ALIAS_KEY = "nestc.aliases"


# --------------------------------------------------------------------------- saving


def _nonfinite(t: torch.Tensor) -> bool:
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return False
    return not bool(torch.isfinite(t).all())


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to write, alias table): de-duplicates exact aliases, clones partial overlaps."""
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"checkpoint tensor names must be non-empty strings, got {name!r}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"checkpoint entry {name!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.device.type == "meta":
            raise TypeError(f"checkpoint tensor {name!r} is on the meta device and has no data")

    groups: dict[tuple, list[str]] = {}
    for name in sorted(tensors):
        t = tensors[name]
        if t.numel() == 0:
            continue
        groups.setdefault((t.device.type, t.device.index, t.untyped_storage().data_ptr()), []).append(name)

    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    clone: set[str] = set()
    for names in groups.values():
        if len(names) < 2:
            continue
        views: dict[tuple, str] = {}
        for name in names:  # sorted, so the first name of a tie is the stored one
            t = tensors[name]
            key = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
            if key in views:
                aliases[name] = views[key]
            elif views:
                views[key] = name
                clone.add(name)
            else:
                views[key] = name
    for name, t in tensors.items():
        if name in aliases:
            continue
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if name in clone:
            t = t.clone(memory_format=torch.contiguous_format)
        out[name] = t.contiguous()
    return out, aliases


def save_checkpoint(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Atomically write ``tensors`` + ``meta`` to the safetensors file ``path`` (format above).

    Raises :class:`NestError` if a tensor holds NaN/Inf (nothing is written), if ``meta`` is not
    JSON-serialisable, or if the file cannot be written (the old file at ``path`` is then intact).
    """
    p = Path(os.fspath(path)).expanduser()
    pos = Pos(file=str(p))
    bad = sorted(name for name, t in tensors.items() if isinstance(t, torch.Tensor) and _nonfinite(t))
    if bad:
        shown = ", ".join(f"`{b}`" for b in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise NestError.at(
            pos,
            f"refusing to write a checkpoint with non-finite values (NaN or Inf) in {shown}",
            hint="training diverged; lower the learning rate or enable gradient clipping, "
            "and resume from the last good checkpoint",
        )
    try:
        meta_json = json.dumps(dict(meta), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise NestError.at(
            pos,
            f"checkpoint metadata is not JSON-serialisable: {e}",
            hint="store only dicts, lists, strings, numbers, booleans and None in the metadata "
            "(tensors go into the tensor map; see flatten_state)",
        ) from None
    out, aliases = _prepare_tensors(tensors)
    metadata = {"format": FORMAT, META_KEY: meta_json}
    if aliases:
        metadata[ALIAS_KEY] = json.dumps(aliases, sort_keys=True)

    folder = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NestError.at(
            pos, f"cannot create the checkpoint folder: {e.strerror or e}", hint="choose a writable output folder"
        ) from None
    if p.is_dir():
        raise NestError.at(pos, "checkpoint path is a folder", hint="give a file name, e.g. `model.safetensors`")
    tmp = folder / f".{p.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        st.save_file(out, str(tmp), metadata=metadata)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
        fsync_folder(folder)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            raise NestError.at(
                pos,
                f"cannot write the checkpoint: {e.strerror or e}",
                hint="check that the folder is writable and the disk is not full; "
                "the previous checkpoint (if any) is untouched",
            ) from None
        raise


# --------------------------------------------------------------------------- loading


def _describe_foreign(raw_head: bytes) -> str:
    if raw_head.startswith(b"PK\x03\x04"):
        return "it looks like a torch.save() (zip/pickle) file"
    if raw_head[:1] == b"\x80":
        return "it looks like a Python pickle"
    if raw_head.startswith(b"\x89PNG"):
        return "it is a PNG image"
    if raw_head[:1] in (b"{", b"[") or raw_head[:1].isalpha():
        return "it looks like a text file"
    return "its header is not a safetensors header"


def _open_checked(path: str | os.PathLike) -> tuple[Path, dict[str, str]]:
    """Validate ``path`` as a nestc checkpoint; returns (path, raw safetensors metadata)."""
    p = Path(os.fspath(path)).expanduser()
    pos = Pos(file=str(p))
    if not p.exists():
        hint = "check the path"
        if p.parent.is_dir():
            found = sorted(x.name for x in p.parent.glob("*.safetensors"))[:8]
            if found:
                hint += f"; checkpoints in {p.parent}: " + ", ".join(found)
        raise NestError.at(pos, "checkpoint file does not exist", hint=hint)
    if p.is_dir():
        raise NestError.at(
            pos, "checkpoint path is a folder, not a file", hint="point at a `.safetensors` checkpoint file"
        )
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise NestError.at(
            pos, f"cannot read the checkpoint: {e.strerror or e}", hint="check the file's permissions"
        ) from None
    if size == 0:
        raise NestError.at(
            pos, "checkpoint file is empty (0 bytes)", hint="the write was interrupted; use an earlier checkpoint"
        )
    try:
        with safe_open(str(p), framework="pt") as f:
            raw_meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        detail = str(e)
        n_header = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
        if len(head) >= 9 and head[8:9] == b"{" and 0 < n_header:
            what = f"the safetensors file is truncated or corrupt ({size} bytes; {detail})"
            hint = "the file was cut short or damaged; use an earlier checkpoint"
        else:
            what = f"this is not a safetensors file: {_describe_foreign(head)} ({detail})"
            hint = "point at a checkpoint written by nestc (a `.safetensors` file)"
        raise NestError.at(pos, what, hint=hint) from None

    fmt = raw_meta.get("format")
    if fmt is None:
        raise NestError.at(
            pos,
            "this safetensors file is not a nestc checkpoint: it has no `format` metadata "
            f"(expected `{FORMAT}`)",
            hint="point at a checkpoint written by nestc; plain safetensors weights cannot be resumed from",
        )
    name, _, ver = str(fmt).partition("/")
    if name != FORMAT_NAME:
        raise NestError.at(
            pos,
            f"this safetensors file is not a nestc checkpoint: its format is `{fmt}`, expected `{FORMAT}`",
            hint="point at a checkpoint written by nestc",
        )
    try:
        version = int(ver)
    except ValueError:
        raise NestError.at(
            pos, f"checkpoint format `{fmt}` has no valid version number", hint="the file's metadata is damaged"
        ) from None
    if version > FORMAT_VERSION:
        raise NestError.at(
            pos,
            f"checkpoint was written by a newer nestc (format version {version}; this nestc reads up to "
            f"version {FORMAT_VERSION})",
            hint="upgrade nestc: `pip install -U nestc`",
        )
    if version < 1:
        raise NestError.at(
            pos, f"checkpoint format version {version} is not valid", hint="the file's metadata is damaged"
        )
    return p, raw_meta


def _parse_meta(p: Path, raw_meta: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        meta = json.loads(raw_meta.get(META_KEY, "{}"))
        aliases = json.loads(raw_meta.get(ALIAS_KEY, "{}"))
        if not isinstance(meta, dict) or not isinstance(aliases, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise NestError.at(
            Pos(file=str(p)),
            f"checkpoint metadata is damaged: {e}",
            hint="use an earlier checkpoint",
        ) from None
    return meta, aliases


def inspect_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` dict of a checkpoint, without reading its tensors."""
    p, raw = _open_checked(path)
    return _parse_meta(p, raw)[0]


def checkpoint_tensors(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of every tensor in a checkpoint (aliases included), without
    reading the tensor data."""
    p, raw = _open_checked(path)
    _, aliases = _parse_meta(p, raw)
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    with safe_open(str(p), framework="pt") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            out[k] = (str(sl.get_dtype()), tuple(sl.get_shape()))
    for a, target in aliases.items():
        if target in out:
            out[a] = out[target]
    return dict(sorted(out.items()))


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a checkpoint. Tied tensors come back as one shared tensor object."""
    p, raw = _open_checked(path)
    meta, aliases = _parse_meta(p, raw)
    try:
        tensors = st.load_file(str(p), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise NestError.at(
            Pos(file=str(p)),
            f"cannot read the checkpoint's tensors: {e}",
            hint="the file is damaged; use an earlier checkpoint",
        ) from None
    for a, target in aliases.items():
        if target not in tensors:
            raise NestError.at(
                Pos(file=str(p)),
                f"checkpoint alias `{a}` points at a missing tensor `{target}`",
                hint="the file is damaged; use an earlier checkpoint",
            )
        tensors[a] = tensors[target]
    return tensors, meta


# --------------------------------------------------------------------------- nested state


def _esc(key: Any) -> str:
    return str(key).replace("%", "%25").replace(".", "%2E")


def _check_scalar(x: Any, where: str) -> Any:
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x
    # numpy / other number types with an item()
    item = getattr(x, "item", None)
    if callable(item):
        v = item()
        if isinstance(v, (bool, int, float)):
            return v
    raise TypeError(f"cannot store {type(x).__name__} at `{where}` in a checkpoint (not a tensor or JSON scalar)")


def flatten_state(state: Any, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    """``(tensors, skeleton)`` of a nested dict/list/tuple structure (key scheme in the module
    docstring). ``skeleton`` is JSON-able; :func:`unflatten_state` inverts this."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, key: str) -> Any:
        if isinstance(x, torch.Tensor):
            if key in tensors:
                raise ValueError(f"flatten_state: two leaves map to the key {key!r}")
            tensors[key] = x
            return {"t": key}
        if isinstance(x, Mapping):
            items = []
            for k, v in x.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise TypeError(f"cannot store dict key {k!r} at `{key}`: only str and int keys are supported")
                items.append([k, walk(v, f"{key}.{_esc(k)}" if key else _esc(k))])
            return {"d": items}
        if isinstance(x, (list, tuple)):
            vals = [walk(v, f"{key}.{i}" if key else str(i)) for i, v in enumerate(x)]
            return {"tu": vals} if isinstance(x, tuple) else {"l": vals}
        return _check_scalar(x, key)

    skeleton = walk(state, _esc(prefix) if prefix else "")
    return tensors, skeleton


def unflatten_state(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    """The structure :func:`flatten_state` flattened, rebuilt from its tensors and skeleton."""

    def build(node: Any) -> Any:
        if not isinstance(node, dict):
            return node  # a JSON scalar
        if len(node) != 1:
            raise ValueError(f"malformed state skeleton node {node!r}")
        (tag, val), = node.items()
        if tag == "t":
            if val not in tensors:
                raise NestError.at(
                    None,
                    f"checkpoint is missing the tensor `{val}`",
                    hint="the checkpoint is incomplete or from another model; use a matching checkpoint",
                )
            return tensors[val]
        if tag == "d":
            return {k: build(v) for k, v in val}
        if tag == "l":
            return [build(v) for v in val]
        if tag == "tu":
            return tuple(build(v) for v in val)
        raise ValueError(f"malformed state skeleton tag {tag!r}")

    return build(skeleton)

