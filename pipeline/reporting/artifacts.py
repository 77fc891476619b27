"""Atomic writers for run artefacts.

A killed process must leave either the previous file or the complete new one, never a partial
file (pandas' ``to_csv`` killed mid-write leaves a parseable but truncated CSV), so every writer
goes through a temporary file in the same folder, fsync, ``os.replace`` and an fsync of the
folder. ``write_with`` is the one helper; checkpoints, cached tensors and the demo's NIfTI use it
too. A full disk or a folder without write permission is reported as such (``OutputError``),
and the temporary file is removed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pandas as pd

from pipeline.errors import CohortnetError


class OutputError(CohortnetError):
    """A file could not be written: the disk is full, the folder is read-only, or another OS error."""

    exit_code = 1


_UMASK = os.umask(0)
os.umask(_UMASK)


def explain_os_error(exc: BaseException, path: Path) -> OutputError:
    """Why ``path`` could not be written, in the user's terms; the path is named in full."""
    path = Path(path)
    errno = getattr(exc, "errno", None)
    text = str(exc)
    # EEXIST, ENOTDIR: the nearest existing folder of the path is a file
    existing = next((p for p in path.parents if p.exists()), None) if errno in (17, 20) else None
    if errno == 28 or "No space left" in text or "unexpected pos" in text:  # torch.save reports ENOSPC so
        why = f"the disk holding {path.parent} is full"
    elif errno in (13, 30):
        why = f"{path.parent} is not writable (permission denied or a read-only file system)"
    elif existing is not None and not existing.is_dir():
        why = f"{existing} exists and is not a folder"
    elif errno == 21:  # EISDIR
        why = f"{path} is a folder, not a file"
    else:
        why = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or text[:200]}"
    return OutputError(f"cannot write {path}: {why}")


def write_with(path: Path, write: Callable[[IO[Any]], object], binary: bool = True) -> Path:
    """Write ``path`` atomically with ``write(file_object)``; see the module docstring."""
    return _atomic_write(Path(path), write, binary=binary)


def _atomic_write(path: Path, write: Callable[[IO[Any]], object], binary: bool = False) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp_{path.name}.", dir=path.parent)
    except OSError as exc:
        raise explain_os_error(exc, path) from None
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise explain_os_error(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def clean_stale_temporaries(folder: Path) -> int:
    """Remove ``.tmp_*`` files left by a writer that was killed; returns how many were removed."""
    removed = 0
    for tmp in Path(folder).glob(".tmp_*"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON; write them as null so any JSON reader accepts the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _json_safe(obj.item())
    return obj


def write_json(path: Path, obj: Any) -> Path:
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=False, allow_nan=False)
    return _atomic_write(path, lambda fh: fh.write(text + "\n"))


def write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, lambda fh: fh.write(text))


def write_bytes(path: Path, data: bytes) -> Path:
    return _atomic_write(path, lambda fh: fh.write(data), binary=True)


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    return _atomic_write(path, lambda fh: df.to_csv(fh, index=False, lineterminator="\n"))
