"""The real-data workflows run unchanged on other cohorts of the same kind, in another format:
only the manifest changes (issue: "general, not tuned")."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from datapaths import REPO

from pipeline.cli import main
from pipeline.synthetic import SeriesSpec, seeded_uid, write_dicom_series

PER_SPLIT = {"train": 8, "val": 4, "test": 4}  # images in each split, half of them positive


def _blob(rng: np.random.Generator, shape: tuple[int, ...], positive: bool) -> np.ndarray:
    image = rng.normal(0.0, 20.0, size=shape)
    if positive:
        centre = [rng.integers(s // 3, 2 * s // 3) for s in shape]
        grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
        image += 200.0 * (sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < 9)
    return image.astype(np.float32)


def _other_cohort(out: Path, kind: str) -> Path:
    """A cohort of another format than the workflow was built on: 3D DICOM series or 2D NIfTI."""
    rng = np.random.default_rng(1)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in PER_SPLIT.items():
        for label in (0, 1):
            for _ in range(n // 2):
                pid = f"OTHER{len(rows):03d}"
                if kind == "dicom3d":
                    image = _blob(rng, (30, 26, 20), bool(label)) + 40.0
                    series = SeriesSpec(
                        patient_id=pid, study_uid=seeded_uid(pid, "study"), series_uid=seeded_uid(pid, "series")
                    )
                    files = write_dicom_series(image, np.diag([0.8, 0.8, 1.5, 1.0]), out / pid, series, rng=rng)
                    rows.append((pid, str(files[0].parent), label, split))
                else:
                    path = out / f"{pid}.nii.gz"
                    nib.save(nib.Nifti1Image(_blob(rng, (40, 36), bool(label)), np.diag([0.3, 0.3, 1.0, 1.0])), path)
                    rows.append((pid, str(path), label, split))
    manifest = out / "manifest.csv"
    pd.DataFrame(rows, columns=["patient_id", "image", "label", "split"]).to_csv(manifest, index=False)
    return manifest


@pytest.mark.parametrize(("name", "kind"), [("adrenalmnist3d", "dicom3d"), ("pneumoniamnist", "nifti2d")])
def test_workflow_runs_unchanged_on_another_cohort_of_the_same_kind(name: str, kind: str, tmp_path: Path) -> None:
    """Only the manifest changes: the 3D workflow on DICOM series, the 2D one on 2D NIfTI files."""
    manifest = _other_cohort(tmp_path / "cohort", kind)
    args = ["run", str(REPO / "workflows" / f"{name}.yaml"), "--run-id", "other"]
    for item in (f"manifest={manifest}", "train.epochs=1", "train.batch_size=8", f"output_dir={tmp_path}"):
        args += ["--set", item]
    assert main(args) == 0
    per_patient = pd.read_csv(tmp_path / name / "other" / "per_patient.csv", dtype={"patient_id": str})
    cohort = pd.read_csv(manifest, dtype={"patient_id": str})
    assert sorted(per_patient.patient_id) == sorted(cohort[cohort.split == "test"].patient_id)
    metrics = json.loads((tmp_path / name / "other" / "metrics.json").read_text())
    assert metrics["n_patients"] == len(per_patient) == 4
