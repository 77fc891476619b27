"""End-to-end studies through the CLI on tiny cohorts: files, columns, exit codes, resume."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import main


def only_run_dir(tmp_path: Path, study: str = "tiny") -> Path:
    runs = sorted((tmp_path / "reports" / study).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_kfold_study_writes_every_artefact(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = make_cohort(n_patients=12, second_scan=(0, 3))
    wf = make_workflow(manifest, evaluation={"subgroups": ["site"], "n_bootstrap": 100})
    assert main(["run", str(wf)]) == 0
    printed = capsys.readouterr().out
    run = only_run_dir(tmp_path)
    assert f"report: {run / 'report.html'}" in printed

    for name in (
        "config.yaml",
        "environment.json",
        "splits.csv",
        "predictions.csv",
        "val_predictions.csv",
        "per_patient.csv",
        "metrics.json",
        "roc.csv",
        "roc.png",
        "report.html",
        "run.log",
        "data_hashes.csv",
        "excluded.csv",
    ):
        assert (run / name).is_file(), name

    splits = pd.read_csv(run / "splits.csv", dtype={"patient_id": str})
    assert (splits[splits.role == "test"].groupby("patient_id").fold.nunique() == 1).all()
    assert splits[splits.role == "test"].patient_id.nunique() == 12

    preds = pd.read_csv(run / "predictions.csv", dtype={"patient_id": str})
    assert list(preds.columns) == ["patient_id", "image_id", "fold", "label", "score"]
    assert len(preds) == 14
    assert preds.image_id.is_unique
    assert preds.score.between(0, 1).all()
    # every image is predicted by the model of the fold in which its patient was held out
    test_fold = splits[splits.role == "test"].set_index("patient_id").fold
    assert (preds.fold == preds.patient_id.map(test_fold)).all()

    pp = pd.read_csv(run / "per_patient.csv", dtype={"patient_id": str})
    assert list(pp.columns) == ["patient_id", "label", "score", "fold", "n_images", "site"]
    assert len(pp) == 12
    p0 = pp.set_index("patient_id").loc["P000"]
    assert p0.n_images == 2
    assert p0.score == pytest.approx(preds[preds.patient_id == "P000"].score.mean())

    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("auc", "auc_ci_low", "auc_ci_high", "n_patients", "folds"):
        assert key in metrics, key
    assert metrics["n_patients"] == 12
    assert metrics["auc_ci_low"] <= metrics["auc"] <= metrics["auc_ci_high"]
    assert "site" in metrics["subgroups"]

    roc = pd.read_csv(run / "roc.csv")
    assert {"fpr", "tpr", "threshold"} <= set(roc.columns)
    env = json.loads((run / "environment.json").read_text())
    assert env["seed"] == 0
    assert env["packages"]["monai"]
    assert env["packages"]["torch"]
    assert len(pd.read_csv(run / "data_hashes.csv")) == 14

    html = (run / "report.html").read_text()
    assert f"{metrics['auc']:.3f}" in html
    assert "data:image/png;base64," in html
    state = torch.load(run / "fold_0" / "model.pt", weights_only=True)
    assert "conv1.weight" in state
    assert not (run / "fold_0" / "last.pt").exists()


def test_holdout_reports_only_the_test_split(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=16, split=True)
    wf = make_workflow(manifest, validation={"scheme": "holdout"})
    assert main(["run", str(wf)]) == 0
    run = only_run_dir(tmp_path)
    table = pd.read_csv(manifest, dtype={"patient_id": str})
    test_patients = set(table[table.split == "test"].patient_id)
    preds = pd.read_csv(run / "predictions.csv", dtype={"patient_id": str})
    val = pd.read_csv(run / "val_predictions.csv", dtype={"patient_id": str})
    assert set(preds.patient_id) == test_patients
    assert set(val.patient_id) == set(table[table.split == "val"].patient_id)
    assert set(pd.read_csv(run / "per_patient.csv", dtype={"patient_id": str}).patient_id) == test_patients


def test_two_dimensional_study(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=10, shape=(17, 23))
    wf = make_workflow(
        manifest,
        model={"arch": "resnet10", "spatial_dims": 2, "stem_stride": 1},
        data={"spatial_size": [16, 16]},
    )
    assert main(["run", str(wf)]) == 0
    assert len(pd.read_csv(only_run_dir(tmp_path) / "per_patient.csv")) == 10


def test_invalid_workflow_and_manifest_list_every_problem(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = make_cohort(n_patients=6)
    table = pd.read_csv(manifest)
    table.loc[len(table)] = ["P000", "images/absent.nii.gz", 1, "A"]  # second label + missing file
    table.to_csv(manifest, index=False)
    wf = make_workflow(manifest, trian={"epochs": 2}, model={"arch": "resnet11", "spatial_dims": 3})
    code = main(["run", str(wf), "--set", "train.batch_size=zero"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    for expected in (
        "unknown key trian",
        "model.arch",
        "train.batch_size",
        "P000 has labels",
        "images/absent.nii.gz",
    ):
        assert expected in err, expected
    assert not (tmp_path / "reports").exists()  # nothing ran


def test_a_corrupt_image_is_excluded_and_the_study_goes_on(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=12, second_scan=(2,))
    (manifest.parent / "images" / "P002_1.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    assert main(["run", str(make_workflow(manifest))]) == 0
    run = only_run_dir(tmp_path)
    excluded = pd.read_csv(run / "excluded.csv")
    assert excluded.image_id.tolist() == ["P002#2"]
    assert excluded.reason.iloc[0]
    preds = pd.read_csv(run / "predictions.csv")
    assert "P002#2" not in set(preds.image_id)
    assert len(preds) == 12
    assert "P002#2" in (run / "report.html").read_text()


def test_rerun_resumes_and_report_rebuilds(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = make_cohort(n_patients=12)
    wf = make_workflow(manifest)
    assert main(["run", str(wf), "--run-id", "r1"]) == 0
    run = tmp_path / "reports" / "tiny" / "r1"
    first = pd.read_csv(run / "predictions.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    # a run killed during fold 1: its outputs are gone, fold 0 is kept
    shutil.rmtree(run / "fold_1")
    (run / "predictions.csv").unlink()
    (run / "metrics.json").unlink()
    assert main(["run", str(wf), "--run-id", "r1"]) == 0
    log = (run / "run.log").read_text()
    assert "fold 0: already done, skipping" in log
    again = pd.read_csv(run / "predictions.csv")
    pd.testing.assert_frame_equal(
        first[first.fold == 0].reset_index(drop=True), again[again.fold == 0].reset_index(drop=True)
    )
    assert len(again) == len(first)
    # `cohortnet report` rebuilds per-patient table, metrics and report from the predictions alone
    (run / "report.html").unlink()
    (run / "per_patient.csv").unlink()
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()
    assert (run / "per_patient.csv").is_file()
    rebuilt = json.loads((run / "metrics.json").read_text())
    assert set(rebuilt) == set(metrics)
    assert np.isfinite(rebuilt["auc"])


def test_report_rebuilds_from_the_run_folder_alone(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
) -> None:
    """After the manifest and the images are moved away, `report` gives the same tables and metrics."""
    manifest = make_cohort(n_patients=12, second_scan=(0, 3))
    wf = make_workflow(manifest, evaluation={"aggregate": "mean", "n_bootstrap": 200, "subgroups": ["site"]})
    assert main(["run", str(wf), "--run-id", "r"]) == 0
    run = tmp_path / "reports" / "tiny" / "r"
    per_patient = pd.read_csv(run / "per_patient.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    assert (run / "patients.csv").is_file()
    shutil.move(str(manifest.parent), str(tmp_path / "moved"))
    for name in ("per_patient.csv", "metrics.json", "report.html", "roc.csv"):
        (run / name).unlink()
    assert main(["report", str(run)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(run / "per_patient.csv"), per_patient)
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert "site" in per_patient.columns
    assert (run / "report.html").is_file()


def test_metrics_json_is_what_evaluate_writes_for_the_same_predictions(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    """One post-training path: the run's metrics.json equals `cohortnet evaluate` on the run's
    per-image predictions (with the patients' columns) and its validation predictions."""
    manifest = make_cohort(n_patients=16, second_scan=(0, 3, 5))
    evaluation = {"aggregate": "max", "n_bootstrap": 200, "subgroups": ["site"], "threshold_rule": "youden"}
    wf = make_workflow(manifest, evaluation=evaluation, train={"epochs": 1, "seed": 3, "amp": "off"})
    assert main(["run", str(wf), "--run-id", "r"]) == 0
    run = tmp_path / "reports" / "tiny" / "r"
    images = pd.read_csv(run / "predictions.csv", dtype={"patient_id": str}).merge(
        pd.read_csv(run / "patients.csv", dtype={"patient_id": str}).drop(columns=["target", "label"]), on="patient_id"
    )
    images.to_csv(tmp_path / "images.csv", index=False)
    args = ["evaluate", str(tmp_path / "images.csv"), "--label-col", "label", "--score-col", "score"]
    args += ["--positive", "1", "--group-col", "patient_id", "--fold-col", "fold", "--subgroup-col", "site"]
    args += ["--val-table", str(run / "val_predictions.csv"), "--aggregate", "max", "--bootstrap", "200"]
    args += ["--seed", "3", "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == json.loads((run / "metrics.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert "cluster" in metrics["image_level"]["ci_method"]  # 19 images of 16 patients: a patient-cluster CI
    assert metrics["unit"] == "patient"
