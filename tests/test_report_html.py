"""The HTML report rendered from hand-made inputs: comparisons without a variance, and the redacted
copy (``render_report(..., redact=True)``) that leaves the run folder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.evaluation import delong_paired_test
from pipeline.reporting import redact
from pipeline.reporting.html import ReportInputs, fmt_p, render_report
from pipeline.schema import SCORE_SINGLE

PNG = b"\x89PNG not really"
# one positive: DeLong's variance is undefined, so the paired test has no SE, p or interval
ONE_POSITIVE = ([1, 0, 0, 0, 0, 0], [0.9, 0.1, 0.2, 0.3, 0.4, 0.5], [0.3, 0.1, 0.2, 0.35, 0.4, 0.5])


def _metrics(comparison: dict[str, Any]) -> dict[str, Any]:
    member = {"repeat": 0, "seed": 0, "n": 6, "auc": 1.0, "auc_ci_low": None, "auc_ci_high": None}
    spread = {"mean": 1.0, "sd": 0.0, "min": 1.0, "max": 1.0}
    group = {"value": "A", "n": 3, "n_positive": 1, "auc": 1.0}
    heterogeneity = {"n_groups": 2, "q": 0.5, "df": 1, "p_value": None, "pooled_auc": 0.8}
    return {
        "auc": 1.0,
        "auc_ci_low": 0.4,
        "auc_ci_high": 1.0,
        "ci_method": "delong",
        "n_patients": 6,
        "n_positive": 1,
        "comparison": {"score_col": "score", "compare_col": SCORE_SINGLE, **comparison},
        "members": {
            "n_members": 2,
            "repeats": 1,
            "seeds": [0, 1],
            "ensemble": "mean",
            "per_member": [member, {**member, "seed": 1}],
            "auc": spread,
            "accuracy": spread,
            "comparison": comparison,
        },
        "subgroups": {"site": {"groups": [group], "heterogeneity": heterogeneity}},
    }


def _inputs(metrics: dict[str, Any], **extra: Any) -> ReportInputs:
    return ReportInputs(
        study="s",
        run_id="r",
        scheme_text="2-fold",
        model_text="resnet10",
        metrics=metrics,
        per_patient=pd.DataFrame({"patient_id": ["P001", "P002"], "score": [0.9, 0.1], "sex": ["F", "M"]}),
        split_summary=pd.DataFrame([{"fold": 0, "role": "test", "patients": 2, "positives": 1}]),
        excluded=pd.DataFrame([{"image_id": "P003#1", "reason": "unreadable", "message": "not gzip"}]),
        fold_training={},
        n_images=2,
        roc_png=PNG,
        **extra,
    )


def test_a_comparison_without_a_variance_has_no_interval_and_renders(tmp_path: Path) -> None:
    res = delong_paired_test(*ONE_POSITIVE)
    assert (res["auc1"], res["auc2"]) == pytest.approx((1.0, 0.4))
    assert res["se"] is None
    assert res["ci_low"] is None
    assert res["ci_high"] is None  # not the zero-width (0.6, 0.6)
    assert res["p_value"] is None
    assert res["z"] is None
    page = render_report(tmp_path, _inputs(_metrics(res)))
    for table in ("tta-table", "ensemble-table"):
        row = re.search(rf'<table id="{table}">.*?</table>', page, re.S)
        assert row is not None
        assert "+0.600 (– – –), p = n/a" in row.group(0)
    assert "on 1 df, p = n/a; inverse-variance pooled AUC 0.800" in page
    assert fmt_p(0.01234) == "0.0123"
    assert fmt_p(float("nan")) == "n/a"


def _run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        f"study: s\nmanifest: {tmp_path}/cohort/manifest.csv\ndata:\n  image_roots:\n  - {tmp_path}/images\n"
        f"output_dir: {tmp_path}/reports\nfilter:\n  site:\n  - Hospital North\n"
    )
    command = ["cohortnet", "run", f"{tmp_path}/wf.yaml", "--set", "filter.site=[Hospital North]"]
    (run / "environment.json").write_text(json.dumps({"git_commit": "abc", "command": command}))
    return run


def test_the_redacted_report_leaves_out_patients_images_paths_and_filter_values(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    case = {"image_id": "P002#1", "category": "false_negative", "score": "0.1", "image_score": "0.1"}
    record = {"counts": {"false_negative": {"requested": 1, "found": 1, "available": 1}}}
    record["failures"] = [{"image_id": "P001#1", "category": "true_positive", "error": "out of memory"}]
    explained = {"record": record, "cases": [case], "figures": {"P002#1": PNG}}
    redaction = redact.Redaction.of({"site": ["Hospital North"]})  # build.redacted_inputs' value map
    inputs = _inputs({"auc": 0.75, "n_patients": 2, "n_positive": 1}, explanations=explained, redaction=redaction)
    full, shared = render_report(run, inputs), render_report(run, inputs, redact=True)
    secrets = ("P001", "P002", "P003", str(tmp_path), "Hospital North", "Grad-CAM false_negative")
    assert all(s in full for s in secrets)  # what the copy must leave out
    assert [s for s in secrets if s in shared] == []
    assert 'id="auc">0.750<' in shared
    assert shared.count("<img") == 1
    assert 'alt="ROC curve"' in shared  # the aggregate figure only
    assert "manifest: manifest.csv" in shared
    assert "- images" in shared
    assert "output_dir: reports" in shared
    assert "filter:\n  site:\n  - site 1\n" in shared  # the filter's value as its label
    for note in ("per-patient table is in the run folder only", "1 excluded images are listed in the run folder"):
        assert note in shared
    assert "Grad-CAM figures and the cases they show are in the run folder only" in shared
    # every section the full report has keeps its heading, so the checklist's links still land
    assert set(re.findall(r'<h2 id="([^"]+)"', full)) == set(re.findall(r'<h2 id="([^"]+)"', shared))


def test_pretrained_weights_leave_the_run_folder_by_their_file_name_only() -> None:
    from pipeline.reporting import redact

    assert redact.leaf("model.pretrained", "/secret/site/weights.pt") == "weights.pt"
    assert redact.leaf("search.model.pretrained", ["/secret/a.pt", "/secret/b.pt"]) == ["a.pt", "b.pt"]
