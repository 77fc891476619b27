"""NaN or Inf in training stops that fold with a message naming fold, epoch and what to try
(exit code 5, no traceback); finished folds are kept and the same command resumes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline import training
from pipeline.cli import main


def test_a_diverging_fold_stops_with_a_clear_message(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    wf = make_workflow(make_cohort(n_patients=8), train={"epochs": 2, "batch_size": 4, "lr": 1e30, "amp": "off"})
    assert main(["run", str(wf), "--run-id", "r"]) == 5
    out = capsys.readouterr()
    message = out.err
    assert "fold 0, epoch 1 (fp32)" in message
    assert "NaN or Inf" in message
    assert "lower train.lr" in message
    assert "same command resumes" in message
    assert "Traceback" not in out.err + out.out
    run = tmp_path / "reports" / "tiny" / "r"
    assert not (run / "predictions.csv").exists()
    assert not (run / "fold_0" / "done.json").exists()
    assert "run stopped: fold 0, epoch 1" in (run / "run.log").read_text()


def test_finished_folds_are_kept_and_the_same_command_resumes(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wf = make_workflow(make_cohort(n_patients=8), train={"epochs": 2, "batch_size": 4, "amp": "bf16"})
    real = training.run_epoch
    calls = {"n": 0}

    def second_fold_diverges(*args: Any, **kwargs: Any) -> training.EpochStats:
        """A gradient turns NaN at step 1 of fold 1's second epoch (fold 0 runs 2 epochs)."""
        stats = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            stats.first_nonfinite_step = 1
        return stats

    monkeypatch.setattr(training, "run_epoch", second_fold_diverges)
    assert main(["run", str(wf), "--run-id", "r"]) == 5
    run = tmp_path / "reports" / "tiny" / "r"
    assert (run / "fold_0" / "done.json").is_file()
    assert not (run / "fold_1" / "done.json").exists()
    assert (run / "fold_1" / "last.pt").is_file()  # epoch 1 of fold 1 is kept
    assert (
        "fold 1, epoch 2 (bf16): the training loss or gradient became NaN or Inf at step 1"
        in (run / "run.log").read_text()
    )

    monkeypatch.setattr(training, "run_epoch", real)
    assert main(["run", str(wf), "--run-id", "r"]) == 0
    log = (run / "run.log").read_text()
    assert "fold 0: already done, skipping" in log
    assert "fold 1: resuming after epoch 1" in log
    history = pd.read_csv(run / "fold_1" / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert set(history["precision"]) == {"bf16"}
    done = json.loads((run / "fold_1" / "done.json").read_text())
    assert done["precision"] == "bf16"
    assert isinstance(done["fp32_layers"], list)
    assert len(pd.read_csv(run / "predictions.csv")) == 8
