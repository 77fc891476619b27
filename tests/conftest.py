"""Shared fixtures: small synthetic NIfTI cohorts, manifests and workflows.

Volumes have deliberately unequal shapes such as (7, 8, 9), so that a swapped axis fails a test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("OMP_NUM_THREADS", "2")


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


@pytest.fixture
def make_cohort(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a manifest of NIfTI images; returns the manifest path.

    ``make_cohort(n_patients=12, shape=(7, 8, 9), second_scan=(0, 3), split=True, extra=True)``
    """

    def factory(
        n_patients: int = 12,
        shape: tuple[int, ...] = (7, 8, 9),
        second_scan: tuple[int, ...] = (),
        split: bool = False,
        extra: bool = True,
        seed: int = 0,
        folder: str = "cohort",
    ) -> Path:
        rng = np.random.default_rng(seed)
        root = tmp_path / folder
        rows: list[dict[str, Any]] = []
        for i in range(n_patients):
            pid = f"P{i:03d}"
            label = i % 2
            for scan in range(2 if i in second_scan else 1):
                rel = f"images/{pid}_{scan}.nii.gz"
                write_nifti(root / rel, blob_volume(rng, shape, bool(label)))
                row: dict[str, Any] = {"patient_id": pid, "image": rel, "label": label}
                if split:
                    # consecutive pairs share a split, so every split holds both labels
                    row["split"] = ("train", "train", "val", "test")[(i // 2) % 4]
                if extra:
                    row["site"] = "A" if i % 3 else "B"
                rows.append(row)
        manifest = root / "manifest.csv"
        pd.DataFrame(rows).to_csv(manifest, index=False)
        return manifest

    return factory


@pytest.fixture
def make_workflow(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a workflow YAML next to ``manifest``; keyword sections override the tiny defaults."""

    def factory(manifest: Path, name: str = "wf.yaml", **sections: Any) -> Path:
        wf: dict[str, Any] = {
            "study": "tiny",
            "manifest": os.path.relpath(manifest, tmp_path),
            "task": {"label": "label", "positive": 1},
            "model": {"arch": "resnet10", "spatial_dims": 3, "stem_stride": 2},
            "data": {"spatial_size": [8, 8, 8], "intensity": {"mode": "zscore"}},
            "train": {"epochs": 1, "batch_size": 4, "lr": 0.001, "seed": 0},
            "validation": {"scheme": "kfold", "folds": 2},
            "evaluation": {"aggregate": "mean", "n_bootstrap": 200},
            "report": {"explain": {"cases": 0}},  # Grad-CAM is tested where a test asks for it
            "output_dir": "reports",
        }
        for key, value in sections.items():
            if key == "validation" and "scheme" in value:  # another scheme reads other keys
                wf[key] = value
            elif isinstance(value, dict) and isinstance(wf.get(key), dict):
                wf[key] = {**wf[key], **value}
            else:
                wf[key] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(wf, sort_keys=False))
        return path

    return factory
