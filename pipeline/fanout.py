"""``cohortnet run WORKFLOW --dask SCHEDULER``: a study's folds as tasks on a dask.distributed cluster.

The driver (the ``run`` process, which holds the run folder's lock) seals the folder, preprocesses
once and checks the folds, exactly as a sequential run does; then each fold that has no
``done.json`` yet is one task. A task trains its fold into ``fold_<k>/`` on a worker (every file
written atomically, ``done.json`` last, with the run's seal) and nothing else; only the driver
pools the folds, after checking every fold's seal. A task lost with its worker is retried by Dask
(``RETRIES``) and the retry resumes from the fold's ``last.pt``; a rerun of the command skips the
finished folds. ``local`` or ``local:N`` starts a ``LocalCluster`` of N single-threaded worker
processes; any other value is a scheduler address (dask-jobqueue on SLURM, or dask-cuda's
``LocalCUDACluster`` for one worker per GPU). ``torchrun`` remains the way to spread one fold
over several GPUs.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import WorkflowConfig, config_from_dict, dump_config, yaml_load
from pipeline.errors import CohortnetError, ValidationError
from pipeline.logs import setup_worker
from pipeline.privacy import registered_roots

log = logging.getLogger(__name__)

RETRIES = 2
CONNECT_TIMEOUT_S = 30


def fold_task(
    config_text: str,
    run_dir: str,
    seal: str,
    job: Any,
    items: dict[str, list[dict[str, Any]]],
    table: pd.DataFrame,
    label: str,
    roots: tuple[str, ...] = (),
) -> tuple[str, CohortnetError | None]:
    """One job on a worker (``pipeline.study.FoldJob`` and plain values): train, predict, write its
    folder under the folder's own lock. Returns (folder, None), or (folder, the error) for a
    problem of the study itself (NaN scores, say), which a retry would only repeat; anything else
    raises, and Dask retries it (a lost worker, a full disk). First of all, the worker's logs and
    warnings are redacted as the driver's are (``roots``: the driver's registered data roots)."""
    setup_worker(roots)
    import torch

    from pipeline import runfolder
    from pipeline.distributed import SINGLE
    from pipeline.study import resolve_run_context, run_job_once

    problem = runfolder.check_visible(Path(run_dir), seal)
    if problem is not None:  # a worker without the driver's filesystem would strand its fold
        return job.folder, CohortnetError(f"{job.folder}: {problem}")
    cfg = config_from_dict(yaml_load(config_text), base_dir=Path("."), source="config.yaml", check_files=False)
    run = resolve_run_context(cfg, SINGLE, Path(run_dir), seal, progress=False)
    if run.device.type == "cpu" and not cfg.train.num_threads:
        torch.set_num_threads(1)  # one worker per core: no oversubscription
    try:  # under the job folder's lock, skipped when it finished meanwhile (a retry, a leftover task)
        run_job_once(cfg, run, job, items, table, label)
    except CohortnetError as exc:
        return job.folder, exc
    return job.folder, None


def _task_id(run_dir: Path, seal: str) -> str:
    """Names a run's tasks on a shared scheduler: the run folder's full path and its seal (two
    studies with the same run id never share a key, so never each other's result)."""
    return hashlib.sha256(f"{run_dir.resolve()}\n{seal}".encode()).hexdigest()[:16]


def _local_workers(scheduler: str) -> int | None:
    """N of ``local`` (2) or ``local:N``; None for a scheduler address."""
    if scheduler != "local" and not scheduler.startswith("local:"):
        return None
    count = scheduler.partition(":")[2] or "2"
    if not count.isdigit() or int(count) < 1:
        raise ValidationError([f"--dask local:N needs a worker count, got {scheduler!r}"], "command line")
    return int(count)


def client_for(scheduler: str) -> tuple[Any, Any]:
    """A dask.distributed Client (and the LocalCluster it owns, if any); a scheduler that cannot be
    reached is a clear error naming its address, not a traceback."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CohortnetError("--dask needs the dask extra: pip install 'cohortnet[dask]'") from None
    workers = _local_workers(scheduler)
    if workers is not None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S), None
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise CohortnetError(
            f"--dask {scheduler}: cannot reach the scheduler ({type(exc).__name__}: {exc}); "
            "give its address as tcp://HOST:PORT, or local:N for a cluster on this machine"
        ) from None


def check_scheduler(scheduler: str) -> None:
    """Refuse a bad ``--dask`` value before any work: the worker count of ``local:N``, and that a
    scheduler address answers (a study would otherwise find out after preprocessing)."""
    if _local_workers(scheduler) is None:
        client, _ = client_for(scheduler)
        client.close()


def gather(client: Any, futures: list[Any], what: str) -> list[Any]:
    """The futures' results; a task lost after its retries (a worker killed again and again, the
    scheduler gone) is a clear error saying that finished work is kept."""
    from concurrent.futures import CancelledError

    from distributed import KilledWorker

    try:
        return list(client.gather(futures))
    except (KilledWorker, CancelledError, OSError, TimeoutError) as exc:
        raise CohortnetError(
            f"{what}: a task was lost on the cluster ({type(exc).__name__}: {exc}); the finished "
            "tasks' work is kept: run the same command again to resume"
        ) from None


def run_folds(
    cfg: WorkflowConfig,
    run: Any,
    pending: list[tuple[Any, dict[str, list[dict[str, Any]]]]],
    table: pd.DataFrame,
    label: str,
) -> None:
    """Every pending job (a fold of a member, an inner fold of a search point) as one task on
    ``run.dask``'s cluster; returns when all are done (raises the first failure, after its retries)."""
    if not pending:
        return
    run_dir, seal, scheduler = run.run_dir, run.seal, run.dask
    client, cluster = client_for(scheduler)
    try:
        text = dump_config(cfg)
        futures = [
            client.submit(
                fold_task,
                text,
                str(run_dir),
                seal,
                job,
                items,
                table,
                label,
                registered_roots(),
                key=f"cohortnet-fold-{_task_id(run_dir, seal)}-{job.folder.replace('/', '-')}",
                retries=RETRIES,
                pure=False,
            )
            for job, items in pending
        ]
        log.info("%d job(s) submitted to %s", len(futures), scheduler)
        failed: list[CohortnetError] = []
        for folder, problem in gather(client, futures, f"run folder {run_dir} (resume with --run-id {run_dir.name})"):
            if problem is None:
                log.info("%s: done on the cluster", folder)
            else:
                failed.append(problem)
        if failed:  # the first, with its own exit code (5 for NaN scores); finished folds are kept
            raise failed[0]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
