"""Command line: ``cohortnet <command> ...`` and ``python -m pipeline <command> ...``.

Thin by design: each command lives in ``pipeline/commands/<name>.py`` with ``configure(parser)``
(declares its arguments) and ``run(args) -> int`` (calls one function). This module parses
arguments, sets up privacy-safe logging and maps known errors to exit codes without a traceback.
Exit codes: 0 success, 1 unexpected failure, 2 invalid arguments, workflow or manifest, 130
interrupted (Ctrl-C); other codes are documented by the command that returns them. An unexpected
exception is one line through the redacting logger (its traceback too, only with ``-v``): a raw
Python traceback could name a patient-named data folder.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.errors import CohortnetError

# name -> one-line help; the module pipeline.commands.<name> implements it.
COMMANDS: dict[str, str] = {
    "demo": "write the synthetic demo cohort and run its cross-validated study",
    "run": "run a study from a workflow YAML",
    "evaluate": "ROC statistics for any CSV of scores",
    "report": "rebuild per-patient table, metrics and report of a run folder from its predictions",
    "scan": "scan a DICOM/NIfTI tree into a manifest with QC columns and an exclusions table",
    "convert": "convert a DICOM series or file (or NIfTI) to NIfTI exactly as the pipeline sees it",
    "predict": "apply a finished study (run folder or model.zip) to a new cohort",
    "export": "write a study's portable model archive, or --verify one",
    "compare": "compare runs evaluated on the same patients: paired AUC, sensitivity and specificity tests",
    "bench": "measure speed and memory (training data path, statistics, ingestion)",
}

# commands that keep their finished work in a folder when interrupted, and how to resume
RESUMABLE: dict[str, str] = {
    "run": "completed folds are kept in the run folder; the same command with its --run-id resumes",
    "predict": "the chunks scored so far are kept in the --out folder; the same command resumes",
}

log = logging.getLogger("pipeline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cohortnet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cohortnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"pipeline.commands.{name}")
        module.configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    from pipeline.logs import setup_logging

    setup_logging(verbose=args.verbose)
    try:
        module = importlib.import_module(f"pipeline.commands.{args.command}")
        return int(module.run(args))
    except CohortnetError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        kept = RESUMABLE.get(args.command)
        log.error("%s", f"interrupted; {kept}" if kept else "interrupted")
        return 130
    except Exception as exc:  # a bug: one redacted line, not a raw traceback (it may name a data folder)
        return internal_error(exc, args.verbose)


def internal_error(exc: Exception, verbose: bool) -> int:
    """Log an unexpected exception as one line through the redacting logger (with ``verbose``, its
    traceback as well, redacted the same way); exit code 1."""
    message = " ".join(str(exc).split())
    line = f"internal error: {type(exc).__name__}: {message}" if message else f"internal error: {type(exc).__name__}"
    if verbose:
        log.error("%s", line, exc_info=(type(exc), exc, exc.__traceback__))
    else:
        log.error("%s; rerun with -v for the traceback", line)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
