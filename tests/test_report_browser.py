"""The HTML report renders in a real browser (headless Chromium): every embedded figure decodes,
and the page shows the run's figures and tables."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def rendered(report: Path, profile: Path) -> tuple[str, int]:
    """The DOM after load in headless Chromium, and the number of figures; every figure decoded."""
    cmd = [
        str(BROWSER), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--dump-dom", report.as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None
    assert 'data-figures-ok="true"' in body.group(0)
    return dom, int(re.search(r'data-figures="(\d+)"', body.group(0)).group(1))  # type: ignore[union-attr]


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on this machine (make test installs it as root)")
def test_report_renders_in_headless_chromium(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=12, second_scan=(1,))
    assert main(["run", str(make_workflow(manifest, evaluation={"subgroups": ["site"]})), "--run-id", "r"]) == 0
    run = tmp_path / "reports" / "tiny" / "r"
    dom, n_figures = rendered(run / "report.html", tmp_path / "profile")
    assert n_figures >= 4  # ROC, precision-recall, calibration or decision curve, training curves
    assert 'alt="Precision-recall curve"' in dom
    pr = pd.read_csv(run / "pr.csv")
    assert pr["precision"].between(0, 1).all()
    assert pr["recall"].iloc[0] == 1.0
    metrics = json.loads((run / "metrics.json").read_text())
    assert f">{metrics['auc']:.3f}<" in dom
    table = dom[dom.index('id="per-patient"') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 1 + len(pd.read_csv(run / "per_patient.csv"))


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on this machine (make test installs it as root)")
def test_external_validation_report_renders_beside_the_internal_figures(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    assert main(["run", str(make_workflow(make_cohort(n_patients=12))), "--run-id", "r"]) == 0
    run = tmp_path / "reports" / "tiny" / "r"
    new = make_cohort(n_patients=8, seed=7, folder="new")
    frame = pd.read_csv(new, dtype=str)
    frame["patient_id"] = "N" + frame["patient_id"]
    frame.to_csv(new, index=False)
    assert main(["predict", str(run), str(new), "--out", str(tmp_path / "ext"), "--no-progress"]) == 0
    dom, n_figures = rendered(tmp_path / "ext" / "report.html", tmp_path / "profile")
    assert n_figures >= 2  # ROC and calibration or decision curve
    internal = json.loads((run / "metrics.json").read_text())
    external = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    table = dom[dom.index('id="internal-external"') :]
    table = table[: table.index("</table>")]
    assert f">{internal['auc']:.3f}<" in table
    assert f">{external['auc']:.3f}<" in table
    assert f">{external['n_patients']}<" in table
    assert "Calibration on this cohort" in dom
    assert f"{external['calibration']['observed_rate']:.3f}" in dom
    assert 'id="study-patients"' not in dom  # no study patient was scored
    assert "provenance.json" in dom
    assert 'alt="Precision-recall curve"' in dom
    assert len(pd.read_csv(tmp_path / "ext" / "pr.csv")) >= 2
