"""``cohortnet predict ... --dask SCHEDULER``: the shards of a prediction on a dask.distributed cluster.

The cohort is cut into ``n_shards`` patient-grouped shares (``--shard`` rules); each share is one
task that runs ``predict_cohort`` into ``OUT/shards/<i>-of-<n>/`` on a worker, with its own
ledger. A task lost with its worker is retried by Dask (``retries``), and the retry resumes from
that ledger, so finished chunks are not redone. When every task is done, ``merge_shards`` joins
the shares into ``OUT`` with the same checks as ``--merge``. ``local`` or ``local:N`` starts a
``LocalCluster`` of N single-threaded worker processes; any other value is a scheduler address
(for SLURM, start the cluster with dask-jobqueue and pass its address; see README).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.fanout import client_for, gather
from pipeline.predict.merge import merge_shards
from pipeline.predict.run import PredictOptions, PredictResult

RETRIES = 3


def shard_folder(out: Path, i: int, n: int) -> Path:
    return out / "shards" / f"{i}-of-{n}"


def predict_share(source: str, manifest: str, out: str, options: PredictOptions) -> str:
    """One task: share ``options.shard`` of the cohort, on a worker (arguments are plain values)."""
    import torch

    from pipeline.predict.run import open_model, predict_cohort, read_cohort

    torch.set_num_threads(1)  # a worker per core: no oversubscription
    model = open_model(Path(source))
    predict_cohort(model, read_cohort(Path(manifest), model), Path(out), options)
    return out


def dask_predict(
    source: Path, manifest: Path, out: Path, options: PredictOptions, scheduler: str, n_shards: int | None = None
) -> PredictResult:
    """Fan the shares out over the cluster, wait for all, merge (see the module docstring)."""
    client, cluster = client_for(scheduler)
    try:
        n = n_shards or max(1, 2 * len(client.scheduler_info()["workers"]))
        futures = []
        for i in range(n):
            share = dataclasses.replace(options, shard=(i, n), progress=False)
            folder = str(shard_folder(out, i, n))
            futures.append(
                client.submit(predict_share, str(source), str(manifest), folder, share, retries=RETRIES, pure=False)
            )
        folders = [Path(f) for f in gather(client, futures, f"predict into {out}")]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return merge_shards(folders, out)
