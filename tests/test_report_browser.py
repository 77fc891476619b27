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


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on this machine (make test installs it as root)")
def test_report_renders_in_headless_chromium(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=12, second_scan=(1,))
    assert main(["run", str(make_workflow(manifest, evaluation={"subgroups": ["site"]})), "--run-id", "r"]) == 0
    run = tmp_path / "reports" / "tiny" / "r"
    cmd = [
        str(BROWSER), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (run / "report.html").as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None
    assert 'data-figures-ok="true"' in body.group(0)
    n_figures = int(re.search(r'data-figures="(\d+)"', body.group(0)).group(1))  # type: ignore[union-attr]
    assert n_figures >= 3  # ROC, calibration or decision curve, training curves
    metrics = json.loads((run / "metrics.json").read_text())
    assert f">{metrics['auc']:.3f}<" in dom
    table = dom[dom.index('id="per-patient"') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 1 + len(pd.read_csv(run / "per_patient.csv"))
