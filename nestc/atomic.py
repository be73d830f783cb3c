"""Atomic file writes: a crash mid-write never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .diagnostics import NestError, Pos


def _mode_for(path: Path) -> int:
    """The permissions the file would get from a plain `open(path, "w")`: an existing file keeps
    its own, a new one gets 0o666 less the umask. mkstemp's temporary file is always 0o600, which
    would leave every report, log and generated module readable by its owner alone."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)  # the only way to read it is to set it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


def replace_file(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, rename it onto `path` and fsync
    the folder. Raises the OSError of a failed step, with the temporary removed and `path`
    untouched; callers that know what the file is say so in their own error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
            os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` durable; a no-op where the filesystem cannot fsync a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """`replace_file`, creating the folder, with a failure reported as a NestError on the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, data)
    except OSError as err:
        raise NestError.at(Pos(file=str(path)), f"cannot write: {err.strerror or err}") from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
