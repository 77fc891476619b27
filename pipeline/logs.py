"""Logging set-up: one format, messages to stderr, and a per-run log file in the run folder.

Third-party readers (MONAI, nibabel, pydicom) log and warn with full file paths, and hospital
export folders are often named after the patient, so their INFO chatter is silenced and warnings
are routed through the same handlers as ours rather than printed raw.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
_LOGGER = "pipeline"
_WORKER_LOCK = threading.Lock()


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (pytest and notebooks swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(verbose: bool = False) -> logging.Logger:
    logger = logging.getLogger(_LOGGER)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.propagate = False
    _quiet_readers()
    logging.captureWarnings(True)
    from pipeline.privacy import install_redaction

    install_redaction(logger)
    return logger


def _quiet_readers() -> None:
    for noisy in ("monai", "pydicom", "nibabel", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"monai\..*")


def setup_worker(roots: Iterable[str] = ()) -> None:
    """The first thing a task does in a worker process (Dask): the redaction of ``setup_logging``
    (a log-record factory and the warnings hook, so records of any logger and warnings are redacted
    there too) and the third-party readers silenced, with the driver's registered ``roots``
    (``privacy.registered_roots()``, passed with the task); the worker registers the identifying
    values itself, from the headers it reads. Idempotent: every task of a worker calls it."""
    from pipeline.privacy import install_redaction, register_root, registered_roots

    with _WORKER_LOCK:  # a worker's threads start tasks at the same time
        _quiet_readers()
        install_redaction()
        for root in set(roots) - set(registered_roots()):
            register_root(root)


def add_run_log(folder: Path) -> logging.Handler:
    """Also write the pipeline's log to ``folder/run.log``; returns the handler so it can be removed."""
    from pipeline.schema import LOG_FILE

    handler = logging.FileHandler(Path(folder) / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger(_LOGGER).addHandler(handler)
    return handler
