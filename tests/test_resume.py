"""A run killed with SIGKILL mid-training and started again with the same command ends with the
same predictions as an uninterrupted run (deterministic mode, CPU), in fp32 and in bf16 autocast
(emulated by torch where the CPU has no native bf16)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.cli import main

# ``cohortnet run`` that, once fold 1 has saved its first epoch (last.pt written), touches
# $SAVED_MARKER and waits: the test kills it there, at the same point every time however loaded the
# machine is (polling for last.pt instead could kill an epoch or two later, or after the fold).
STOP_AFTER_FOLD_1_EPOCH_1 = """
import os, sys, time
from pathlib import Path
import pipeline.training as training
from pipeline.cli import main

save = training._save_training_state

def save_then_wait(path, model, optimizer, scheduler, state, *args):
    save(path, model, optimizer, scheduler, state, *args)
    if path.parent.name == "fold_1" and state.epoch == 1:
        Path(os.environ["SAVED_MARKER"]).touch()
        time.sleep(3600)

training._save_training_state = save_then_wait
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_sigkill_then_rerun_matches_an_uninterrupted_run(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path], amp: str
) -> None:
    manifest = make_cohort(n_patients=12, shape=(15, 16, 17), second_scan=(4,))
    wf = make_workflow(
        manifest,
        data={"spatial_size": [16, 16, 16], "augment": {"flip": True, "intensity": True, "noise": True}},
        model={"arch": "resnet10", "spatial_dims": 3, "stem_stride": 2, "dropout": 0.2},
        train={"epochs": 2, "batch_size": 4, "deterministic": True, "device": "cpu", "num_threads": 1, "amp": amp},
    )
    assert main(["run", str(wf), "--run-id", "full"]) == 0

    run = tmp_path / "reports" / "tiny" / "killed"
    saved = tmp_path / "fold_1_saved_epoch_1"  # outside the run folder
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAVED_MARKER": str(saved)}
    cmd = [sys.executable, "-c", STOP_AFTER_FOLD_1_EPOCH_1, "run", str(wf), "--run-id", "killed"]
    err = tmp_path / "killed.stderr"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        # fold 0 is complete and fold 1 has saved its first epoch; the run waits there to be killed
        deadline = time.monotonic() + 500
        while not saved.exists():
            assert proc.poll() is None, f"the run ended before fold 1 saved an epoch: {err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "fold 1 never saved an epoch"
            time.sleep(0.05)
        assert (run / "fold_0" / "done.json").is_file()
        assert not (run / "fold_1" / "done.json").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    state = torch.load(run / "fold_1" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert not (run / "predictions.csv").exists()

    assert main(["run", str(wf), "--run-id", "killed"]) == 0
    log = (run / "run.log").read_text()
    assert "fold 0: already done, skipping" in log
    assert f"fold 1: resuming after epoch {state['epoch']}" in log
    full = pd.read_csv(tmp_path / "reports" / "tiny" / "full" / "predictions.csv")
    resumed = pd.read_csv(run / "predictions.csv")
    pd.testing.assert_frame_equal(full, resumed, check_exact=True)
    history_full = pd.read_csv(tmp_path / "reports" / "tiny" / "full" / "fold_1" / "history.csv")
    history_resumed = pd.read_csv(run / "fold_1" / "history.csv")
    cols = ["epoch", "train_loss", "val_loss"]
    pd.testing.assert_frame_equal(history_full[cols], history_resumed[cols], check_exact=True)
    assert set(history_resumed["precision"]) == {"fp32" if amp == "off" else "bf16"}
    assert not (run / "fold_1" / "last.pt").exists()
