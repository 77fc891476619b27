"""The copies that leave the run folder (report_redacted.html, metrics_redacted.json, the MLflow
store) name no value of a sensitive column: one leave-one-site-out study whose ``site`` is the
workflow's filter, ``validation.group``, a subgroup column and a Table 1 covariate, logged to a
local MLflow store and read back through MLflow's client. The run folder's own report keeps them."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.reporting import build, figures

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")

SITES = ("St Mary Hospital", "Kings College Hospital", "Royal Infirmary")  # kept by the filter
DROPPED = "Other Place"  # the manifest's fourth site, which the filter leaves out
WORDS = (*SITES, "Hospital", "Infirmary", DROPPED)


class Study(NamedTuple):
    run: Path
    store: str
    drawn: list[dict[str, Any]]  # every flow diagram the build drew: the run folder's, then the copy's


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    root = tmp_path_factory.mktemp("sites")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):  # pairs of patients (one of each class) per site; sites of 6, 6, 4 and 4
        rel = f"images/P{i:03d}_0.nii.gz"
        volume = rng.normal(size=(7, 8, 9)).astype(np.float32) + (3.0 if i % 2 else 0.0)
        (root / "images").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(root / rel))
        site = (*SITES, DROPPED)[(i // 2) % 4]
        rows.append({"patient_id": f"P{i:03d}", "image": rel, "label": i % 2, "site": site, "sex": "FM"[i % 2]})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    store = (root / "store").as_uri()
    wf = {
        "study": "sites",
        "manifest": "manifest.csv",
        "task": {"label": "label", "positive": 1},
        "model": {"arch": "resnet10", "spatial_dims": 3, "stem_stride": 2},
        "data": {"spatial_size": [8, 8, 8], "intensity": {"mode": "zscore"}},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.001, "seed": 0},
        "validation": {"scheme": "leave_one_group_out", "group": "site"},
        "evaluation": {"aggregate": "mean", "n_bootstrap": 100, "subgroups": ["site", "sex"]},
        "report": {"explain": {"cases": 0}, "covariates": ["site", "sex"]},
        "filter": {"site": list(SITES)},
        "tracking": {"mlflow": store, "experiment": "sites"},
        "output_dir": "reports",
    }
    (root / "wf.yaml").write_text(yaml.safe_dump(wf, sort_keys=False))
    drawn: list[dict[str, Any]] = []
    real = figures.flow_figure
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "flow_figure", lambda flow: drawn.append(flow) or real(flow))
        assert main(["run", str(root / "wf.yaml"), "--run-id", "r"]) == 0
    return Study(root / "reports" / "sites" / "r", store, drawn)


def _text(page: str) -> str:
    """A page's text as a reader gets it: figures' base64 data left aside, entities decoded."""
    return html.unescape(re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", page))


def _clear(text: str) -> list[str]:
    """The sites' names (and their words) that ``text`` shows, in any case."""
    return [w for w in WORDS if w.lower() in text.lower()]


def _held_out(study: Study) -> dict[str, str]:
    """The label each site has in the copies: from the redacted fold table and splits.csv."""
    shared = (study.run / "report_redacted.html").read_text()
    labels = dict(re.findall(r'<td class="l">(\d+): (site \d) held out</td>', shared))
    splits = pd.read_csv(study.run / "splits.csv", dtype=str)
    return {site: labels[fold] for fold, site in splits.groupby("fold")["group"].first().items()}


def test_the_redacted_report_shows_each_site_by_its_label_only(study: Study) -> None:
    full = _text((study.run / "report.html").read_text())
    shared = _text((study.run / "report_redacted.html").read_text())
    assert _clear(full) == ["St Mary Hospital", "Kings College Hospital", "Royal Infirmary", "Hospital", "Infirmary"]
    assert _clear(shared) == []
    labels = _held_out(study)
    assert sorted(labels.values()) == ["site 1", "site 2", "site 3"]
    assert "site in {site 1, site 2, site 3}" in shared  # the filter's rule, by label, not a digest
    splits = pd.read_csv(study.run / "splits.csv", dtype=str)
    for fold, site in splits.groupby("fold")["group"].first().items():
        assert f"<th>fold {fold}: {labels[site]}</th>" in shared  # Table 1's columns
        assert f"fold {fold}: {labels[site]}: " in shared  # the checklist's counts per analysis (TRIPOD 21)
        assert f'<td class="l">site</td><td class="l">{labels[site]}</td>' in shared  # the subgroups
        assert f"subgroup site={labels[site]} has" in shared  # the statistical warnings
    assert '<td class="l">sex</td><td class="l">F</td>' in shared  # a column that is not sensitive keeps its values
    # the flow diagram is drawn again from the labelled records: the copy embeds that one
    full_flow, shared_flow = study.drawn[0], study.drawn[-1]
    assert {p["name"] for p in full_flow["partitions"]} == {f"fold {f}: {s}" for f, s in enumerate(sorted(SITES))}
    assert [p["name"] for p in shared_flow["partitions"]] == [f"fold {f}: {labels[s]}" for f, s in
                                                              enumerate(sorted(SITES))]  # fmt: skip
    assert _clear("\n".join(figures.flow_texts(shared_flow))) == []
    image = re.compile(r'alt="Patient flow diagram" src="data:image/png;base64,([^"]+)"')
    flows = [image.findall((study.run / name).read_text()) for name in ("report.html", "report_redacted.html")]
    assert len(flows[0]) == len(flows[1]) == 1
    assert flows[0] != flows[1]


def test_the_redacted_metrics_share_the_reports_labels_and_figures(study: Study) -> None:
    metrics = json.loads((study.run / "metrics.json").read_text())
    shared = json.loads((study.run / "metrics_redacted.json").read_text())
    assert _clear(json.dumps(shared, ensure_ascii=False)) == []
    assert _clear(json.dumps(metrics)) != []  # the run folder's metrics.json keeps the values
    labels = _held_out(study)
    by_label = {g["value"]: g for g in shared["subgroups"]["site"]["groups"]}
    for group in metrics["subgroups"]["site"]["groups"]:
        twin = by_label[labels[group["value"]]]  # the report's label of the site is the metrics' label
        assert (twin["n"], twin["auc"]) == (group["n"], group["auc"])
    assert shared["auc"] == metrics["auc"]
    assert len(shared["warnings"]) == len(metrics["warnings"])
    assert shared["subgroups"]["sex"] == metrics["subgroups"]["sex"]


def test_the_mlflow_store_gets_no_site_name(study: Study, tmp_path: Path) -> None:
    client = mlflow.tracking.MlflowClient(tracking_uri=study.store)
    experiment = client.get_experiment_by_name("sites")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "r")
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "metrics_redacted.json"} <= names
    assert "metrics.json" not in names  # the run folder's own, with the values, never leaves
    files = []
    for r in runs:
        down = tmp_path / r.info.run_id
        down.mkdir()
        folder = Path(client.download_artifacts(r.info.run_id, "", str(down)))
        files += [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"report.html", "metrics_redacted.json"}
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".json":
            text = json.dumps(json.loads(text), ensure_ascii=False)
        assert _clear(_text(text)) == [], path.name
    for r in runs:  # parameters and tags: the filter's values by their number only
        assert _clear("\n".join([*r.data.params.values(), *r.data.tags.values()])) == []
    assert parent.data.params["filter.site"] == "3 values"
    assert parent.data.params["validation.group"] == "site"


def test_a_copy_that_would_show_a_value_is_not_written(
    study: Study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "r"
    shutil.copytree(study.run, run)
    real = build.redacted_inputs

    def leaky(run_dir: Path, inputs: Any, facts: Any, redaction: Any) -> Any:  # the metrics left as they are
        return dataclasses.replace(real(run_dir, inputs, facts, redaction), metrics=inputs.metrics)

    monkeypatch.setattr(build, "redacted_inputs", leaky)
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()
    assert not (run / "report_redacted.html").exists()  # refused, and the older copy removed
    assert not (run / "metrics_redacted.json").exists()
    assert "report_redacted.html is not written" in caplog.text
    assert "metrics_redacted.json is not written" in caplog.text
    assert "column(s) site in clear" in caplog.text
    assert _clear(caplog.text) == []  # the refusal names the column, never the value
