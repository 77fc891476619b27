"""Inputs that used to give a silently wrong result end in an explicit verdict: an exclusion with
a reason code while the study goes on, or exit 2 with the problem named."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_nifti

from pipeline.cli import main
from pipeline.provenance import MISSING, content_hash


def test_a_two_dimensional_image_in_a_3d_workflow_is_excluded(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=10)
    table = pd.read_csv(manifest)
    write_nifti(manifest.parent / table.loc[0, "image"], np.ones((7, 8), np.float32))  # a single slice
    write_nifti(manifest.parent / table.loc[1, "image"], np.ones((7, 8, 1), np.float32))
    assert main(["run", str(make_workflow(manifest)), "--run-id", "r"]) == 0
    excluded = pd.read_csv(tmp_path / "reports" / "tiny" / "r" / "excluded.csv")
    assert sorted(excluded["reason"]) == ["wrong_dimensions", "wrong_dimensions"]
    assert excluded["message"].str.contains("2-D image").all()


def test_identical_content_under_two_patient_ids_is_refused(
    make_cohort: Callable[..., Path], make_workflow: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = make_cohort(n_patients=10)
    table = pd.read_csv(manifest)
    shutil.copyfile(manifest.parent / table.loc[2, "image"], manifest.parent / table.loc[7, "image"])
    capsys.readouterr()
    assert main(["run", str(make_workflow(manifest)), "--run-id", "r"]) == 2
    assert "identical image content under patients P002, P007" in capsys.readouterr().err


def test_a_spatial_size_beyond_the_machine_is_refused_at_check(
    make_cohort: Callable[..., Path], make_workflow: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wf = make_workflow(make_cohort(n_patients=4), data={"spatial_size": [4096, 4096, 4096]})
    assert main(["run", str(wf), "--check"]) == 2
    assert "needs 1024.0 GiB for one batch of inputs alone" in capsys.readouterr().err


def test_a_vanished_image_is_recorded_as_missing_not_as_an_empty_file(tmp_path: Path) -> None:
    assert content_hash(tmp_path / "gone.nii.gz") == MISSING
    (tmp_path / "series").mkdir()
    assert content_hash(tmp_path / "series") != MISSING
