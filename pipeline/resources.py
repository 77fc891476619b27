"""The machine's memory, for limits that are checked before an allocation (no dependencies)."""

from __future__ import annotations

import os
import resource


def physical_memory() -> int | None:
    """Bytes of RAM this process may use: the machine's, or less under an address-space limit
    (``ulimit -v``, a batch system's cap). None where the OS does not say."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return memory if soft == resource.RLIM_INFINITY else min(memory, soft)


def image_memory_budget() -> int | None:
    """Bytes one image may take while it is loaded and preprocessed: a quarter of the machine's
    memory (preprocessing workers run side by side, and the chain makes copies)."""
    memory = physical_memory()
    return None if memory is None else memory // 4


def is_file(path: object) -> bool:
    """``Path(path).is_file()`` that answers False, not an exception, for a name the file system
    cannot hold (over 255 bytes per component, a NUL byte)."""
    from pathlib import Path

    try:
        return Path(str(path)).is_file()
    except (OSError, ValueError):
        return False
