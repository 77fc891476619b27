"""The pseudonymised image layout next to a manifest: ``images/<image id>/...`` links to the data.

Export folders are often named after the patient, so the manifest cannot point into them. Each
usable image gets a folder (a series) or a file (a single DICOM file, a NIfTI) named by its id;
the entries are symbolic links (default), hard links or copies of the original files. The layout
is built beside the old one and swapped in, so an interrupted scan leaves the previous layout.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LAYOUT_DIR = "images"
LINK_MODES = ("symlink", "hardlink", "copy")


@dataclass(frozen=True)
class Entry:
    """One image: ``name`` (its id plus suffix for a single file) and the files it consists of."""

    name: str
    files: tuple[Path, ...]
    single_suffix: str = ""  # ".dcm", ".nii", ".nii.gz" when the image is one file, else a folder


def _place(src: Path, dst: Path, mode: str) -> None:
    if mode == "symlink":
        os.symlink(src.resolve(), dst)
    elif mode == "hardlink":
        try:
            os.link(src, dst)
        except OSError:  # another file system: fall back to a copy
            shutil.copyfile(src, dst)
    else:
        shutil.copyfile(src, dst)


def build_layout(out_dir: Path, entries: Sequence[Entry], mode: str) -> Path:
    """Write ``out_dir/images`` from ``entries``; returns the layout folder."""
    if mode not in LINK_MODES:
        raise ValueError(f"layout mode must be one of {LINK_MODES}, not {mode!r}")
    final = out_dir / LAYOUT_DIR
    tmp = out_dir / f".{LAYOUT_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for entry in entries:
        if entry.single_suffix:
            _place(entry.files[0], tmp / (entry.name + entry.single_suffix), mode)
            continue
        folder = tmp / entry.name
        folder.mkdir()
        for n, f in enumerate(entry.files):
            _place(f, folder / f"{n:05d}.dcm", mode)
    old = out_dir / f".{LAYOUT_DIR}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)  # removes links, never their targets
    return final


def image_path(entry: Entry) -> str:
    """The manifest's ``image`` value (relative to the manifest folder, POSIX separators)."""
    return f"{LAYOUT_DIR}/{entry.name}{entry.single_suffix}"
