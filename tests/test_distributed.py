"""DDP under torchrun on CPU (gloo, 2 processes): every image predicted once, rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.distributed import SINGLE, DistContext, gather_sharded, shard


def test_shards_are_disjoint_and_gather_restores_order() -> None:
    items = list(range(11))
    parts = [shard(DistContext(rank=r, world_size=3), items) for r in range(3)]
    assert sorted(i for part in parts for i in part) == items  # no padding, no duplicates
    assert shard(SINGLE, items) == items
    assert gather_sharded(SINGLE, np.arange(4.0), 4).tolist() == [0, 1, 2, 3]


def test_torchrun_two_processes_gloo(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    # 13 images over 2 ranks: DistributedSampler would pad and duplicate one; predictions must not
    manifest = make_cohort(n_patients=12, second_scan=(5,))
    wf = make_workflow(manifest, train={"epochs": 2, "batch_size": 3, "device": "cpu", "num_threads": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "pipeline",
        "run",
        str(wf),
        "--run-id",
        "ddp",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "reports" / "tiny" / "ddp"
    preds = pd.read_csv(run / "predictions.csv")
    assert len(preds) == 13
    assert preds.image_id.is_unique
    val = pd.read_csv(run / "val_predictions.csv")
    assert not val.duplicated(["fold", "image_id"]).any()
    assert (run / "report.html").is_file()
    assert "2 ranks" in (run / "run.log").read_text()
    assert proc.stdout.count("report:") == 1  # only rank 0 reports
