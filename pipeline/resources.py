"""The machine's memory, for limits that are checked before an allocation (no dependencies)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

from pipeline.errors import ScanError

MAX_VOXELS = 1_000_000_000  # 4 GB as float32; more is refused before any pixel is decoded
# Planes (frames or mosaic tiles) of one DICOM file: each becomes a Python record before the voxel
# cap applies, so a header claiming millions of tiny frames would cost seconds and gigabytes first.
MAX_PLANES = 100_000
MAX_INFLATED_BYTES = 4 * 1024**3  # a Deflated Explicit VR data set, inflated, whatever the memory


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


def inflate_cap() -> int:
    """Bytes a Deflated Explicit VR Little Endian data set may inflate to: half of
    ``image_memory_budget`` (pydicom's parse copies the values once more), at most 4 GiB."""
    budget = image_memory_budget()
    return MAX_INFLATED_BYTES if budget is None else min(MAX_INFLATED_BYTES, budget // 2)


def check_load_budget(shape: str, n_voxels: float, bytes_per_voxel: int, source: str) -> None:
    """Refuse (``too_large``) an image whose load would need more than ``image_memory_budget``:
    checked from the header, before anything is decoded or decompressed."""
    budget = image_memory_budget()
    working = n_voxels * bytes_per_voxel
    if budget is not None and working > budget:
        raise ScanError(
            "too_large",
            f"{shape} voxels need about {working / 2**30:.1f} GiB to load; this machine allows "
            f"{budget / 2**30:.1f} GiB per image",
            source,
        )


def is_file(path: object) -> bool:
    """``Path(path).is_file()`` that answers False, not an exception, for a name the file system
    cannot hold (over 255 bytes per component, a NUL byte)."""
    try:
        return Path(str(path)).is_file()
    except (OSError, ValueError):
        return False
