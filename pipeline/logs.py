"""Logging set-up: one format, messages to stderr, and a per-run log file in the run folder.

Third-party readers (MONAI, nibabel, pydicom) log and warn with full file paths, and hospital
export folders are often named after the patient, so their INFO chatter is silenced and warnings
are routed through the same handlers as ours rather than printed raw.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
_LOGGER = "pipeline"


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
    for noisy in ("monai", "pydicom", "nibabel", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", module=r"monai\..*")
    from pipeline.privacy import install_redaction

    install_redaction(logger)
    return logger


def add_run_log(folder: Path) -> logging.Handler:
    """Also write the pipeline's log to ``folder/run.log``; returns the handler so it can be removed."""
    from pipeline.schema import LOG_FILE

    handler = logging.FileHandler(Path(folder) / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger(_LOGGER).addHandler(handler)
    return handler
