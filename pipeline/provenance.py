"""What a run folder records so the run can be reproduced: versions, git commit, seeds, hardware,
and a content hash of every input image and of the manifest. Never imports torch at module level.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGES = ("cohortnet", "torch", "monai", "nibabel", "pydicom", "numpy", "scipy", "scikit-learn", "pandas")
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


MISSING = "missing"  # the content hash recorded for an image that is not there (never an empty file's hash)


def content_hash(path: Path | str) -> str:
    """SHA-256 of a file, or of a folder (a DICOM series) as the hash of its top-level files'
    hashes in sorted order (the files the loader reads: ``pipeline.io.loader`` takes a series
    folder's own files, not those of its subfolders), or ``MISSING``. File names are left out: a
    series copied or re-exported under other names (``cohortnet scan``'s layout, a PACS export) is
    the same content, and the leakage guard must recognise it."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return MISSING
    return _series_digest(file_sha256(p) for p in path.iterdir() if p.is_file())


def _series_digest(file_hashes: Iterable[str]) -> str:
    digest = hashlib.sha256(b"series\n")
    for file_hash in sorted(file_hashes):
        digest.update(file_hash.encode())
    return digest.hexdigest()


def legacy_content_hash(path: Path | str) -> str:
    """The content hash of versions before the name-free one, which models made then (format-1
    archives, the ``data_hashes.csv`` of older run folders) hold: a file's SHA-256 as now; a folder's
    over, for every file at any depth in sorted order, its relative name and then its SHA-256."""
    return content_hashes(path)[1]


def content_hashes(path: Path | str) -> tuple[str, str]:
    """(``content_hash``, ``legacy_content_hash``) of ``path``, each file read once (the legacy hash
    reads a series' subfolders too)."""
    path = Path(path)
    if path.is_file():
        digest = file_sha256(path)
        return digest, digest
    if not path.is_dir():
        return MISSING, MISSING
    files = sorted(p for p in path.rglob("*") if p.is_file())
    hashes = {p: file_sha256(p) for p in files}
    legacy = hashlib.sha256()
    for child in files:
        legacy.update(str(child.relative_to(path)).encode())
        legacy.update(hashes[child].encode())
    return _series_digest(h for p, h in hashes.items() if p.parent == path), legacy.hexdigest()


def image_hashes(image_ids: list[str], paths: list[str]) -> dict[str, str]:
    """image_id -> content hash for every image of a cohort."""
    return {str(i): content_hash(p) for i, p in zip(image_ids, paths, strict=True)}


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the cohortnet checkout (with ``+dirty`` when it has local changes), if any."""
    where = start or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions, read from the package metadata (nothing is imported)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def job_environment(device: Any) -> dict[str, Any]:
    """Where one job (a fold) was computed, for its ``done.json``: a resumed or fanned-out run's
    folds can come from different sessions and machines, and the thread count and the device
    change the arithmetic's rounding (``environment.json`` describes the last session only)."""
    import torch

    cuda = getattr(device, "type", str(device)) == "cuda"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        **package_versions(("torch", "monai")),
    }


def environment_record(seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    record: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "seed": seed,
        "cuda": {
            "available": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else None,
            "cuda_version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
        },
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }
    record.update(extra or {})
    return record
