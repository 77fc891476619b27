"""The HTML report renders in a real browser (headless Chromium): every embedded figure decodes,
and the page shows the run's figures and tables."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
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


ARTIFACTS = Path(
    os.environ.get("COHORTNET_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "reports" / "test-artifacts")
)


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on this machine (make test installs it as root)")
def test_the_journal_report_renders_and_prints_to_pdf(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=16, second_scan=(2,))
    wf = make_workflow(
        manifest, evaluation={"subgroups": ["site"]}, report={"covariates": ["site"], "explain": {"cases": 4}}
    )
    assert main(["run", str(wf), "--run-id", "r"]) == 0
    run = tmp_path / "reports" / "tiny" / "r"
    assert main(["report", str(run), "--pdf"]) == 0
    dom, n_figures = rendered(run / "report.html", tmp_path / "profile")
    explained = pd.read_csv(run / "explanations" / "cases.csv")
    assert len(explained) >= 1
    assert n_figures >= 5 + len(explained)  # flow, ROC, PR, calibration or decision, training, one per case
    for anchor in ("participants", "table-one", "checklist", "explanations", "flow"):
        assert f'id="{anchor}"' in dom, anchor
    assert dom.count('alt="Grad-CAM ') == len(explained)
    checklist = pd.read_csv(run / "checklist.csv")
    assert dom.count("<tr>", dom.index('id="checklist-table"')) >= len(checklist)
    pdf = (run / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type\s*/Page[^s]", pdf)) >= 3  # a multi-page document, not a blank page
    assert not list(run.glob(".report.pdf*"))  # no half file left behind
    from pipeline.reporting.pdf import screenshot

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = screenshot(run / "report.html", ARTIFACTS / "report-journal.png", height=2400)
    image = plt.imread(shot)
    assert image.shape[0] == 2400
    assert image[..., :3].std() > 0.05  # the page drew something, not a blank screen


def test_report_pdf_without_a_browser_is_refused_before_any_work(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (
        main(["run", str(make_workflow(make_cohort(n_patients=8), report={"explain": {"cases": 0}})), "--run-id", "r"])
        == 0
    )
    run = tmp_path / "reports" / "tiny" / "r"
    before = (run / "report.html").stat().st_mtime_ns
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("COHORTNET_BROWSER", raising=False)
    capsys.readouterr()
    assert main(["report", str(run), "--pdf"]) == 1
    err = capsys.readouterr().err
    assert "needs headless Chromium and none was found" in err
    assert "apt-get install chromium" in err
    assert (run / "report.html").stat().st_mtime_ns == before
    assert not (run / "report.pdf").exists()


def test_a_named_browser_that_is_not_there_is_an_error_never_another_browser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.errors import CohortnetError
    from pipeline.reporting.pdf import find_browser

    fake = tmp_path / "bin" / "chromium"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))  # a chromium on PATH that must not be taken instead
    monkeypatch.delenv("COHORTNET_BROWSER", raising=False)
    with pytest.raises(CohortnetError, match="--browser /nonexistent/chrome: no such executable browser"):
        find_browser("/nonexistent/chrome")
    monkeypatch.setenv("COHORTNET_BROWSER", "no-such-chromium")
    with pytest.raises(CohortnetError, match=r"\$COHORTNET_BROWSER no-such-chromium: no such executable"):
        find_browser()
    monkeypatch.delenv("COHORTNET_BROWSER")
    assert find_browser() == str(fake)
