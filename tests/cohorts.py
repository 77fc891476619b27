"""Small synthetic NIfTI cohorts and workflows, and copies of a module's trained study.

The fixtures make_cohort / make_workflow (tests/conftest.py) build these in the test's folder; a
module-scoped fixture builds them once in its own folder and hands each test a copy (copy_of).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from volumes import blob_volume, write_nifti


def cohort_factory(base: Path) -> Callable[..., Path]:
    """Factory of manifests of NIfTI images under ``base``; returns the manifest path.

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
        root = base / folder
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


def workflow_factory(base: Path) -> Callable[..., Path]:
    """Factory of workflow YAMLs in ``base``; keyword sections override the tiny defaults."""

    def factory(manifest: Path, name: str = "wf.yaml", **sections: Any) -> Path:
        wf: dict[str, Any] = {
            "study": "tiny",
            "manifest": os.path.relpath(manifest, base),
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
        path = base / name
        path.write_text(yaml.safe_dump(wf, sort_keys=False))
        return path

    return factory


def copy_of(template: Path, tmp_path: Path) -> Path:
    """``template`` (a module's trained study, made once) copied into the test's own folder, so a test
    may change or damage its copy; returns ``tmp_path``."""
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    return tmp_path
