"""The sealed run folder: a resume with other inputs is refused with a diff, one process writes a
run folder at a time, run ids stay inside output_dir, and a damaged record is never reported on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from cohorts import cohort_factory, copy_of, workflow_factory

from pipeline.cli import main
from pipeline.runfolder import LOCK_FILE, locked


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a finished 2-fold run with id ``r``, trained once for the module."""
    base = tmp_path_factory.mktemp("runfolder_study")
    wf = workflow_factory(base)(cohort_factory(base)(n_patients=8), train={"epochs": 1, "batch_size": 4, "amp": "off"})
    assert main(["run", str(wf), "--run-id", "r"]) == 0
    return base


@pytest.fixture
def finished(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(workflow, run folder) of the test's own copy of the finished run ``r``."""
    copy_of(trained, tmp_path)
    return tmp_path / "wf.yaml", tmp_path / "reports" / "tiny" / "r"


def test_resume_with_another_config_is_refused_with_a_diff(
    finished: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wf, run = finished
    config = (run / "config.yaml").read_text()
    splits = (run / "splits.csv").read_text()
    capsys.readouterr()
    assert main(["run", str(wf), "--run-id", "r", "--set", "train.epochs=3", "--set", "model.arch=resnet18"]) == 2
    err = capsys.readouterr().err
    assert "config train.epochs: 1 -> 3" in err
    assert "config model.arch: 'resnet10' -> 'resnet18'" in err
    assert "start a new run" in err
    assert "Traceback" not in err
    assert (run / "config.yaml").read_text() == config  # nothing was overwritten
    assert (run / "splits.csv").read_text() == splits


def test_resume_with_another_manifest_is_refused(
    finished: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    wf, _ = finished
    manifest = tmp_path / "cohort" / "manifest.csv"
    table = pd.read_csv(manifest)
    table.iloc[:-1].to_csv(manifest, index=False)  # one patient fewer: other splits
    capsys.readouterr()
    assert main(["run", str(wf), "--run-id", "r"]) == 2
    err = capsys.readouterr().err
    assert "the manifest's content changed" in err
    assert "the splits changed" in err


def test_resume_with_only_speed_settings_changed_is_allowed(finished: tuple[Path, Path]) -> None:
    wf, run = finished
    assert main(["run", str(wf), "--run-id", "r", "--set", "data.workers=0", "--set", "train.num_threads=1"]) == 0
    assert "fold 1: already done, skipping" in (run / "run.log").read_text()


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(
    finished: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wf, run = finished
    with locked(run):
        capsys.readouterr()
        assert main(["run", str(wf), "--run-id", "r"]) == 2
        err = capsys.readouterr().err
        assert f"{run} is in use by process {os.getpid()}" in err
    # a process killed while holding the lock leaves the file behind, not the lock
    code = (
        "import os, pathlib; from pipeline.runfolder import locked\n"
        f"with locked(pathlib.Path({str(run)!r})): os.kill(os.getpid(), 9)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == -9
    assert (run / LOCK_FILE).is_file()
    assert main(["run", str(wf), "--run-id", "r"]) == 0


@pytest.mark.parametrize("run_id", ["../../../x", "a/b", "..", ".hidden"])
def test_run_ids_cannot_leave_the_output_folder(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path], run_id: str
) -> None:
    wf = make_workflow(make_cohort(n_patients=8))
    assert main(["run", str(wf), "--run-id", run_id]) == 2
    assert not (tmp_path / "reports").exists()
    assert not (tmp_path.parent / "x").exists()


def test_report_refuses_truncated_predictions(finished: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, run = finished
    preds = pd.read_csv(run / "predictions.csv")
    preds.iloc[:-2].to_csv(run / "predictions.csv", index=False)
    capsys.readouterr()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "test predictions saved, the fold made" in err
    assert "Traceback" not in err
