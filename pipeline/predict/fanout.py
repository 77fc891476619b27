"""``cohortnet predict ... --dask SCHEDULER``: the shards of a prediction on a dask.distributed cluster.

The cohort is cut into ``n_shards`` patient-grouped shares (``--shard`` rules); each share is one
task that runs ``predict_cohort`` into ``OUT/shards/<i>-of-<n>/`` on a worker, with its own
ledger. A task lost with its worker is retried by Dask (``retries``), and the retry resumes from
that ledger, so finished chunks are not redone. The shard count (``--dask-shards``, or twice the
workers connected once the first one has joined) is recorded in ``OUT/shards/shards.json`` by the
first run and kept by every rerun, whatever the workers then, so a rerun resumes the same shard
folders. When every task is done, ``merge_shards`` joins the shares into ``OUT`` with the same
checks as ``--merge``. ``local`` or ``local:N`` starts a ``LocalCluster`` of N single-threaded
worker processes; any other value is a scheduler address (for SLURM, start the cluster with
dask-jobqueue and pass its address; see README). One driver at a time works on an ``OUT``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from pipeline import runfolder
from pipeline.errors import CohortnetError, ValidationError
from pipeline.fanout import client_for, gather
from pipeline.logs import setup_worker
from pipeline.predict.merge import merge_shards
from pipeline.predict.run import PredictOptions, PredictResult
from pipeline.privacy import registered_roots
from pipeline.reporting import artifacts

RETRIES = 3
SHARDS_FILE = "shards.json"  # in OUT/shards/: the shard count of the first run, kept by reruns
WORKER_WAIT_S = 60.0  # how long a run waits for its first worker
_SHARD_NAME = re.compile(r"[0-9]+-of-([0-9]+)")


def shard_folder(out: Path, i: int, n: int) -> Path:
    return out / "shards" / f"{i}-of-{n}"


def predict_share(source: str, manifest: str, out: str, options: PredictOptions, roots: tuple[str, ...] = ()) -> str:
    """One task: share ``options.shard`` of the cohort, on a worker (arguments are plain values).
    First of all, the worker's logs and warnings are redacted as the driver's are (``roots``: the
    driver's registered data roots; the worker registers the values of the headers it reads).
    With ``options.leakage_checked`` (the driver ran the leakage guard on the whole cohort) the
    archive's key is not looked for and the shard is not checked again: a worker need not see
    the driver's key file, and says nothing of a key it was never meant to read."""
    setup_worker(roots)
    import torch

    from pipeline.predict.run import open_model, predict_cohort, read_cohort

    torch.set_num_threads(1)  # a worker per core: no oversubscription
    model = open_model(Path(source), image_roots=options.image_roots, keyless=options.leakage_checked)
    predict_cohort(model, read_cohort(Path(manifest), model), Path(out), options)
    return out


def dask_predict(
    source: Path, manifest: Path, out: Path, options: PredictOptions, scheduler: str, n_shards: int | None = None
) -> PredictResult:
    """Fan the shares out over the cluster, wait for all, merge (see the module docstring)."""
    if n_shards is not None and n_shards < 1:
        raise ValidationError([f"--dask-shards must be 1 or more, got {n_shards}"], "predict")
    out.mkdir(parents=True, exist_ok=True)
    with runfolder.locked(out):  # one driver per --out: the shard count is read or recorded once
        client, cluster = client_for(scheduler)
        try:
            n = shard_count(out, n_shards, wait_for_workers(client, scheduler))
            roots = registered_roots()  # paths, never identifying values: a worker registers those itself
            futures = []
            for i in range(n):
                share = dataclasses.replace(options, shard=(i, n), progress=False)
                folder = str(shard_folder(out, i, n))
                futures.append(
                    client.submit(
                        predict_share, str(source), str(manifest), folder, share, roots, retries=RETRIES, pure=False
                    )
                )
            folders = [Path(f) for f in gather(client, futures, f"predict into {out}")]
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        return merge_shards(folders, out)


def wait_for_workers(client: Any, scheduler: str, timeout: float = WORKER_WAIT_S) -> int:
    """The number of workers connected, once at least one is (a cluster that is still starting,
    dask-jobqueue's jobs waiting in the queue); a clear error when none comes within ``timeout``."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise CohortnetError(
            f"--dask {scheduler}: no worker joined the scheduler within {timeout:.0f} s; start the workers "
            "(with dask-jobqueue: cluster.scale(...)) and run the same command again"
        ) from None
    return max(1, len(client.scheduler_info()["workers"]))


def shard_count(out: Path, requested: int | None, live: int) -> int:
    """The number of shares of the prediction in ``out``: the one its first run recorded in
    ``shards/shards.json`` (so a rerun with another number of workers resumes the same shard
    folders), else ``requested`` or twice the ``live`` workers, recorded now (atomically). A
    ``requested`` count that differs from the recorded one is refused."""
    path = out / "shards" / SHARDS_FILE
    recorded = _recorded_count(out, path)
    if recorded is not None:
        if requested is not None and requested != recorded:
            raise ValidationError(
                [
                    f"{out} was cut into {recorded} shards by its first run; --dask-shards {requested} would "
                    f"start over: rerun with --dask-shards {recorded} (or without it), or use a new --out folder"
                ],
                "predict",
            )
        return recorded
    n = requested or 2 * max(1, live)
    artifacts.write_json(path, {"n_shards": n})
    return n


def _recorded_count(out: Path, path: Path) -> int | None:
    """The recorded shard count; for a folder made before it was recorded, the N of its
    ``<i>-of-<N>`` shard folders when they agree."""
    if path.is_file():
        try:
            return int(json.loads(path.read_text())["n_shards"])
        except (KeyError, TypeError, ValueError):
            raise CohortnetError(f"{path} is unreadable: remove it only if {out}/shards is empty") from None
    counts = {int(m.group(1)) for d in out.glob("shards/*-of-*") if (m := _SHARD_NAME.fullmatch(d.name))}
    return counts.pop() if len(counts) == 1 else None
