"""A study logged to MLflow (tracking.mlflow), read back through MLflow's own client."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.cli import main

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


def test_a_study_is_logged_with_its_folds_and_nothing_identifying(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    store = tmp_path / "store"
    manifest = make_cohort(n_patients=12, second_scan=(2,))
    (manifest.parent / "images" / "P002_1.nii.gz").write_bytes(b"\x1f\x8b not really gzip")  # an excluded image
    wf = make_workflow(
        manifest,
        train={"epochs": 2},
        tracking={"mlflow": store.as_uri(), "experiment": "tiny-exp"},
        report={"explain": {"cases": 1}},  # Grad-CAM figures of named cases in the run folder's report
        filter={"site": ["A", "B"]},
    )
    assert main(["run", str(wf), "--run-id", "r"]) == 0
    run = tmp_path / "reports" / "tiny" / "r"
    record = json.loads((run / "tracking.json").read_text())
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("tiny-exp")
    assert experiment is not None
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    parent = runs[record["run_id"]]
    metrics = json.loads((run / "metrics.json").read_text())
    assert parent.info.run_name == "r"
    assert parent.data.metrics["auc"] == pytest.approx(metrics["auc"])
    assert parent.data.metrics["sensitivity"] == pytest.approx(metrics["sensitivity"])
    assert parent.data.params["model.arch"] == "resnet10"
    assert parent.data.params["train.epochs"] == "2"
    assert parent.data.params["manifest"] == "manifest.csv"  # a name, not where it lives
    assert parent.data.params["filter.site"] == "2 values"  # the kept values by their number only
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "metrics_redacted.json"} <= artifacts
    assert "metrics.json" not in artifacts  # the run folder's own, with the subgroups' values in clear
    _check_the_store_copies(client, parent, run, tmp_path, manifest)
    folds = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["fold"] for r in folds) == ["0", "1"]
    for fold in folds:
        curve = client.get_metric_history(fold.info.run_id, "val_auc")
        history = pd.read_csv(run / f"fold_{fold.data.params['fold']}" / "history.csv")
        assert [m.step for m in curve] == history["epoch"].tolist()
        assert [m.value for m in curve] == pytest.approx(history["val_auc"].tolist())
    # logging the same run folder again writes no second run
    from pipeline.config import load_config
    from pipeline.tracking import log_run

    assert log_run(run, load_config(run / "config.yaml", check_files=False)) is None
    assert len(client.search_runs([experiment.experiment_id])) == len(runs)
    # nothing of the machine's paths or the cohort's patients in parameters or tags
    patients = set(pd.read_csv(manifest, dtype=str)["patient_id"])
    for r in runs.values():
        values = [*r.data.params.values(), *r.data.tags.values()]
        assert not any(str(tmp_path) in v for v in values)
        assert not any(v in patients for v in values)


# the report's figures of the cohort as a whole; any other <img> (a Grad-CAM case) must not leave
_AGGREGATE_FIGURES = {
    "ROC curve",
    "Precision-recall curve",
    "Reliability diagram",
    "Decision curve",
    "Training curves",
    "Patient flow diagram",
}


def _check_the_store_copies(client: Any, parent: Any, run: Path, tmp_path: Path, manifest: Path) -> None:
    """The report and metrics_redacted.json read back from the store: no patient id, path, Grad-CAM
    image or filter value; the headline AUC, the redacted workflow and notes on what was left out."""
    rid = parent.info.run_id
    params = parent.data.params
    down = tmp_path / "downloaded"
    down.mkdir()
    html = Path(client.download_artifacts(rid, "report.html", str(down))).read_text()
    stored = Path(client.download_artifacts(rid, "metrics_redacted.json", str(down))).read_text()
    full = (run / "report.html").read_text()
    patients = set(pd.read_csv(manifest, dtype=str)["patient_id"])
    assert "P002#2" in full
    assert 'alt="Grad-CAM' in full
    assert str(tmp_path) in full  # what the copy must leave out
    metrics = json.loads(stored)
    assert f'id="auc">{metrics["auc"]:.3f}<' in html
    assert stored == (run / "metrics_redacted.json").read_text()
    text = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", html)  # figure data may spell anything
    for page in (text, stored):
        assert str(tmp_path) not in page
        assert not [p for p in patients if re.search(rf"\b{p}\b", page)]
    assert set(re.findall(r'<img alt="([^"]+)"', html)) <= _AGGREGATE_FIGURES
    assert html.count("<img") == html.count("data:image") == len(re.findall(r'<img alt="[^"]+"', html))
    assert "Grad-CAM figures and the cases they show are in the run folder only" in html
    assert "per-patient table is in the run folder only" in html
    assert "excluded images are listed in the run folder only" in html
    assert "manifest: manifest.csv" in html
    assert params["filter.site"] == "2 values"
    assert "filter:\n  site:\n  - site 1\n  - site 2\n" in html  # the kept values as their labels
    assert "command" in html
    assert "left out of this copy" in html


def test_an_unreachable_store_is_a_warning_not_a_failed_study(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wf = make_workflow(
        make_cohort(n_patients=8),
        tracking={"mlflow": "http://127.0.0.1:9"},  # nothing listens on the discard port
        report={"explain": {"cases": 0}},
    )
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    assert main(["run", str(wf), "--run-id", "r"]) == 0
    run = tmp_path / "reports" / "tiny" / "r"
    assert (run / "report.html").is_file()
    assert not (run / "tracking.json").exists()
    assert "MLflow tracking failed" in caplog.text


def test_local_means_a_file_store_beside_the_run_folders(tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.tracking import tracking_uri

    (tmp_path / "m.csv").write_text("patient_id,image,label\n")
    (tmp_path / "wf.yaml").write_text("study: s\nmanifest: m.csv\noutput_dir: out\ntracking: {mlflow: local}\n")
    cfg = load_config(tmp_path / "wf.yaml", check_files=False)
    assert tracking_uri(cfg) == (tmp_path / "out" / "mlruns").as_uri()
    off = load_config(tmp_path / "wf.yaml", ["tracking.mlflow=null"], check_files=False)
    assert tracking_uri(off) is None
