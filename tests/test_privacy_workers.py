"""Dask worker processes redact their logs and warnings as the driver does: the first step of each
task (``fold_task``, ``predict_share``) installs the redaction there, with the driver's registered
data roots passed with the task; the identifying values never travel with it (a worker registers
those from the headers it reads)."""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from pipeline.errors import CohortnetError
from pipeline.privacy import REDACTOR, register_identifying, register_root, registered_roots

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

MESSAGE = "failed to read %s/Ng_Bo/IM1 for Ng^Bo, born 01.01.1970"
SEAL = "0" * 64


@pytest.fixture(autouse=True)
def _fresh_redactor() -> Iterator[None]:
    REDACTOR.clear()
    yield
    REDACTOR.clear()


@pytest.fixture(scope="module")
def cluster_workers() -> Iterator[tuple[Any, list[str]]]:
    """A client of a LocalCluster of two single-threaded worker processes, and their addresses."""
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        yield client, sorted(client.scheduler_info()["workers"])


def _logged(root: str) -> str:
    """What a reader's log warning and a ``warnings.warn`` print in this process."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    reader = logging.getLogger("some_reader.io")
    reader.addHandler(handler)
    try:
        reader.warning(MESSAGE, root)
        with warnings.catch_warnings(), contextlib.redirect_stderr(stream):
            warnings.simplefilter("always")
            warnings.warn(MESSAGE % root, UserWarning, stacklevel=1)
    finally:
        reader.removeHandler(handler)
    return stream.getvalue()


def _before_and_after(entry: str, root: str) -> tuple[str, str]:
    """On a fresh worker: what is logged before and after a task's entry point ran there (and
    refused its work at once: a run folder or a model the worker cannot see)."""
    from pipeline.predict.run import PredictOptions

    register_identifying(["Ng^Bo", "19700101"])  # as the worker's own header reads do
    before = _logged(root)
    if entry == "fold_task":
        from pipeline.fanout import fold_task
        from pipeline.study import FoldJob

        job = FoldJob(0, "fold_0", 0)
        _, problem = fold_task("", f"{root}/no-run", SEAL, job, {}, pd.DataFrame(), "label", (root,))
        assert problem is not None, "the worker cannot see that run folder"
    else:
        from pipeline.predict.fanout import predict_share

        with contextlib.suppress(CohortnetError):  # neither a run folder nor a model archive
            predict_share(f"{root}/no-model", f"{root}/m.csv", f"{root}/out", PredictOptions(), (root,))
    return before, _logged(root)


@pytest.mark.parametrize(("worker", "entry"), [(0, "fold_task"), (1, "predict_share")])
def test_a_worker_task_redacts_the_workers_logs_and_warnings(
    cluster_workers: tuple[Any, list[str]], tmp_path: Path, worker: int, entry: str
) -> None:
    client, addresses = cluster_workers
    root = str(tmp_path / "export")
    future = client.submit(_before_and_after, entry, root, workers=[addresses[worker]], pure=False)
    before, after = future.result(timeout=120)
    assert "Ng^Bo" in before, "a worker process starts without redaction (else this test proves nothing)"
    assert after.count("failed to read <path> for [redacted], born [redacted]") == 2  # the record and the warning
    for leaked in ("Ng", "01.01.1970", root):
        assert leaked not in after


class _Recorder:
    """A stand-in Dask client: records what would be sent to the scheduler."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> int:
        self.sent.append(args)
        return len(self.sent)

    def close(self) -> None:
        pass


def test_the_driver_sends_its_roots_with_each_task_and_no_identifying_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pipeline import fanout
    from pipeline.predict import fanout as predict_fanout
    from pipeline.predict.run import PredictOptions
    from pipeline.study import FoldJob

    register_root(tmp_path / "export")
    register_identifying(["Ng^Bo", "19700101"])
    client = _Recorder()
    for module in (fanout, predict_fanout):
        monkeypatch.setattr(module, "client_for", lambda scheduler: (client, None))
    monkeypatch.setattr(fanout, "gather", lambda c, futures, what: [("fold_0", None)])
    monkeypatch.setattr(fanout, "dump_config", lambda cfg: "")
    run = SimpleNamespace(run_dir=tmp_path / "r", seal=SEAL, dask="tcp://127.0.0.1:1")
    fanout.run_folds(None, run, [(FoldJob(0, "fold_0", 0), {})], pd.DataFrame(), "label")
    monkeypatch.setattr(predict_fanout, "wait_for_workers", lambda c, scheduler: 1)
    monkeypatch.setattr(predict_fanout, "gather", lambda c, futures, what: [str(tmp_path / "o" / "shards" / "0-of-1")])
    monkeypatch.setattr(predict_fanout, "merge_shards", lambda folders, out: None)
    predict_fanout.dask_predict(tmp_path / "m.zip", tmp_path / "m.csv", tmp_path / "o", PredictOptions(), "x", 1)
    assert len(client.sent) == 2
    for args in client.sent:
        assert args[-1] == registered_roots()
        assert str(tmp_path / "export") in args[-1]
        sent = pickle.dumps(args)
        assert b"Ng^Bo" not in sent
        assert b"19700101" not in sent
