"""The real-data workflows run unchanged on a small subset of their cohorts in ../shared/data
(skipped with a reason when that folder is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from datapaths import REPO, shared_data

from pipeline.cli import main

pytestmark = pytest.mark.shared

COHORTS = {
    "pneumoniamnist": "pneumoniamnist-dicom",
    "adrenalmnist3d": "adrenalmnist3d-nifti",
}
PER_SPLIT = {"train": 10, "val": 4, "test": 4}  # images per label in each split of the subset


def subset_manifest(cohort: str, out: Path) -> tuple[Path, pd.DataFrame]:
    """A balanced subset of the official split, with absolute image paths."""
    root = shared_data(cohort)
    table = pd.read_csv(root / "manifest.csv", dtype={"patient_id": str})
    parts = [table[(table.split == s) & (table.label == lab)].head(n) for s, n in PER_SPLIT.items() for lab in (0, 1)]
    subset = pd.concat(parts, ignore_index=True)
    subset["image"] = [str(root / p) for p in subset["image"]]
    path = out / f"{cohort}-subset.csv"
    subset.to_csv(path, index=False)
    return path, subset


@pytest.mark.parametrize("name", sorted(COHORTS))
@pytest.mark.parametrize("variant", ["", "-cv"])
def test_workflow_runs_on_a_subset(name: str, variant: str, tmp_path: Path) -> None:
    manifest, subset = subset_manifest(COHORTS[name], tmp_path)
    workflow = REPO / "workflows" / f"{name}{variant}.yaml"
    root = shared_data(COHORTS[name])  # the subset's absolute image paths point there: allowed explicitly
    overrides = [f"manifest={manifest}", "train.epochs=1", "train.batch_size=8", f"output_dir={tmp_path}"]
    overrides.append(f"data.image_roots=[{root}]")
    if variant:
        overrides.append("validation.folds=2")
    args = ["run", str(workflow), "--run-id", "subset"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    run = tmp_path / f"{name}{variant}" / "subset"
    preds = pd.read_csv(run / "predictions.csv", dtype={"patient_id": str})
    expected = subset[subset.split == "test"] if not variant else subset[subset.split != "test"]
    assert sorted(preds.patient_id) == sorted(expected.patient_id)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_patients"] == len(expected)
    assert 0 <= metrics["auc"] <= 1
    assert "accuracy" in metrics["at_0.5"]
    if name == "pneumoniamnist":  # the DICOM files carry made-up identifying tags
        ds = pydicom.dcmread(subset["image"].iloc[0], stop_before_pixels=True)
        secrets = [str(ds.PatientName), str(ds.AccessionNumber), str(ds.PatientBirthDate)]
        texts = [p.read_text(errors="ignore") for p in run.rglob("*") if p.is_file() and p.suffix != ".pt"]
        for secret in filter(None, secrets):
            assert not any(secret in text for text in texts), secret
