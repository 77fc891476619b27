"""One writer per job folder, whichever path runs it: a cluster task, a Dask retry, a plain rerun.

A finished job is never trained again, a held job folder is refused, a worker that cannot see the
driver's run folder says so, and cluster problems are clear errors rather than tracebacks."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline import runfolder
from pipeline.cli import main
from pipeline.config import dump_config, load_config
from pipeline.errors import CohortnetError, ScanError, ValidationError

SEAL = "0" * 64


@pytest.fixture
def sealed_run(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """A run folder with this run's seal and an empty ``fold_0/``, the workflow's config text, and
    ``calls``: the job folders ``run_fold`` was called for (it trains nothing here)."""
    import pipeline.study

    wf = make_workflow(make_cohort(n_patients=4))
    run_dir = tmp_path / "reports" / "tiny" / "r"
    (run_dir / "fold_0").mkdir(parents=True)
    (run_dir / "seal.json").write_text(json.dumps({"digest": SEAL}))
    calls: list[str] = []
    monkeypatch.setattr(pipeline.study, "run_fold", lambda cfg, run, job, *rest: calls.append(job.folder))
    return {"run_dir": run_dir, "config": dump_config(load_config(wf)), "calls": calls}


def _task(run: dict[str, Any], run_dir: Path | None = None) -> tuple[str, CohortnetError | None]:
    from pipeline.fanout import fold_task
    from pipeline.study import FoldJob

    table = pd.DataFrame({"patient_id": [], "label": []})
    return fold_task(run["config"], str(run_dir or run["run_dir"]), SEAL, FoldJob(0, "fold_0", 0), {}, table, "label")


def test_a_retried_task_never_trains_a_finished_fold_again(
    sealed_run: dict[str, Any],
) -> None:
    fold = sealed_run["run_dir"] / "fold_0"
    (fold / "done.json").write_text(json.dumps({"seal": SEAL}))  # finished after the driver listed it
    assert _task(sealed_run) == ("fold_0", None)
    assert sealed_run["calls"] == []
    (fold / "done.json").unlink()
    (fold / ".tmp_model.pt.1234").write_bytes(b"half")  # a killed writer's leftover
    assert _task(sealed_run) == ("fold_0", None)
    assert sealed_run["calls"] == ["fold_0"]
    assert not (fold / ".tmp_model.pt.1234").exists()


def test_a_task_on_a_held_fold_is_refused_and_never_writes_it(
    sealed_run: dict[str, Any],
) -> None:
    fold = sealed_run["run_dir"] / "fold_0"
    with runfolder.locked(fold):  # a task left running by an interrupted driver
        folder, problem = _task(sealed_run)
    assert folder == "fold_0"
    assert isinstance(problem, runfolder.RunLockedError)
    assert "is in use by process" in str(problem)
    assert sealed_run["calls"] == []


def test_a_plain_rerun_refuses_a_fold_that_a_leftover_task_holds(
    sealed_run: dict[str, Any],
) -> None:
    import torch

    from pipeline.distributed import SINGLE
    from pipeline.study import FoldJob, RunContext, run_job_once

    run_dir = sealed_run["run_dir"]
    cfg = load_config(Path(run_dir.parents[2] / "wf.yaml"))
    run = RunContext(SINGLE, torch.device("cpu"), SEAL, run_dir)
    (run_dir / "fold_1").mkdir()
    with runfolder.locked(run_dir / "fold_1"), pytest.raises(runfolder.RunLockedError, match="fold_1 is in use"):
        run_job_once(cfg, run, FoldJob(1, "fold_1", 0), {}, pd.DataFrame(), "label")
    run_job_once(cfg, run, FoldJob(1, "fold_1", 0), {}, pd.DataFrame(), "label")  # released: it runs
    assert sealed_run["calls"] == ["fold_1"]


def test_a_worker_that_cannot_see_the_run_folder_says_so_and_creates_nothing(
    sealed_run: dict[str, Any], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "not-shared" / "r"
    folder, problem = _task(sealed_run, elsewhere)
    assert folder == "fold_0"
    assert problem is not None
    assert "cannot see run folder" in str(problem)
    assert str(elsewhere) in str(problem)
    assert not (tmp_path / "not-shared").exists()
    (sealed_run["run_dir"] / "seal.json").write_text(json.dumps({"digest": "1" * 64}))  # another run's folder
    folder, problem = _task(sealed_run)
    assert "sealed by another run" in str(problem)
    assert sealed_run["calls"] == []


def test_errors_come_back_from_a_worker_intact() -> None:
    problems = ValidationError(["a is wrong", "b is wrong"], "workflow")
    back = pickle.loads(pickle.dumps(problems))
    assert (back.problems, back.what, str(back)) == (problems.problems, "workflow", str(problems))
    scan = ScanError("missing_slices", "3 slices missing", "P007/ct")
    back_scan = pickle.loads(pickle.dumps(scan))
    assert (back_scan.reason, back_scan.source, str(back_scan)) == ("missing_slices", "P007/ct", str(scan))


def test_a_bad_or_unreachable_scheduler_is_a_clear_error_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    from pipeline import fanout

    monkeypatch.setattr(fanout, "CONNECT_TIMEOUT_S", 2)
    wf = make_workflow(make_cohort(n_patients=4))
    assert main(["run", str(wf), "--check", "--dask", "local:x"]) == 2
    assert "--dask local:N needs a worker count" in capsys.readouterr().err
    with pytest.raises(CohortnetError, match=r"--dask tcp://127\.0\.0\.1:1: cannot reach the scheduler"):
        fanout.check_scheduler("tcp://127.0.0.1:1")
    assert main(["run", str(wf), "--run-id", "r", "--dask", "tcp://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the scheduler" in err
    assert "Traceback" not in err
    assert not (tmp_path / "reports" / "tiny" / "r").exists()  # refused before the run folder


def _die() -> None:
    os._exit(1)  # the worker process dies with its task


def test_a_task_lost_with_its_workers_is_a_clear_error(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
    import dask

    from pipeline.fanout import gather

    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        future = client.submit(_die, pure=False)
        with pytest.raises(
            CohortnetError, match=r"a task was lost on the cluster .*KilledWorker.*run the same command"
        ):
            gather(client, [future], "run folder r")


def test_the_seal_covers_the_pretrained_weights_content_and_the_libraries() -> None:
    splits = pd.DataFrame({"fold": [0], "patient_id": ["P1"], "role": ["test"]})
    config = {"model": {"pretrained": "/weights/w.pt"}}
    a = runfolder.fingerprint(config, "m", {"i": "h"}, splits, "c", "a" * 64)
    b = runfolder.fingerprint(config, "m", {"i": "h"}, splits, "c", "b" * 64)  # same path, other content
    assert a["digest"] != b["digest"]
    assert "the content of model.pretrained changed" in runfolder._differences(a, b)
    assert a["code"]["torch"]
    assert a["code"]["monai"]
