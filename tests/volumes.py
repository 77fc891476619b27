"""Small synthetic NIfTI volumes for the tests (``conftest``'s cohorts and tests that build their
own): a module of its own, since ``from conftest import`` is ambiguous with tests/io/conftest.py."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def write_nifti(path: Path, volume: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> Path:
    """Write ``volume`` (X, Y[, Z]) with a diagonal RAS affine of ``spacing`` mm."""
    affine = np.diag([*spacing[: volume.ndim], *([1.0] * (3 - volume.ndim)), 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return path


def blob_volume(rng: np.random.Generator, shape: tuple[int, ...], positive: bool) -> np.ndarray:
    """Noise with a bright cube in positives: learnable in one or two epochs."""
    vol = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    if positive:
        centre = [int(rng.integers(2, s - 2)) for s in shape]
        sl = tuple(slice(c - 1, c + 2) for c in centre)
        vol[sl] += 6.0
    return vol
