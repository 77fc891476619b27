"""``cohortnet report RUN_DIR``: rebuild per-patient table, metrics, figures and report from saved predictions."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run folder: reports/<study>/<run_id>")
    parser.add_argument("--pdf", action="store_true", help="also write report.pdf (needs headless Chromium)")
    parser.add_argument("--browser", help="the Chromium executable for --pdf (default: chromium on PATH)")


def _check_arguments(args: argparse.Namespace) -> None:
    """A run folder that exists, and --browser only with --pdf (it would be ignored): exit 2."""
    from pipeline.errors import ValidationError

    problems = []
    if not args.run_dir.exists():
        problems.append(f"{args.run_dir}: no such run folder")
    elif not args.run_dir.is_dir():
        problems.append(f"{args.run_dir} is not a folder (a run folder is reports/<study>/<run_id>)")
    if args.browser is not None and not args.pdf:
        problems.append("--browser is the Chromium for --pdf: add --pdf, or drop --browser")
    if problems:
        raise ValidationError(problems, "report arguments")


def run(args: argparse.Namespace) -> int:
    from pipeline.reporting.html import fmt
    from pipeline.schema import PDF_FILE, REPORT_FILE
    from pipeline.study import check_run_complete, finalize_run

    _check_arguments(args)
    check_run_complete(args.run_dir)
    if args.pdf:
        from pipeline.reporting.pdf import find_browser

        find_browser(args.browser)  # before the rebuild, so a missing browser costs nothing
    # the previous report's PDF would no longer match the rebuilt report: removed before the rebuild,
    # so the report's list of the folder's files does not name it (--pdf prints the new one after)
    stale = args.run_dir / PDF_FILE
    had_pdf = stale.is_file()
    stale.unlink(missing_ok=True)
    metrics = finalize_run(args.run_dir)
    ci = f"{fmt(metrics.get('auc_ci_low'))}, {fmt(metrics.get('auc_ci_high'))}"
    print(f"per-patient AUC {fmt(metrics.get('auc'))} [95% CI {ci}]")
    print(f"report: {args.run_dir / REPORT_FILE}")
    if had_pdf and not args.pdf:
        print(f"removed {stale}, made from the previous report (add --pdf to print this one)")
    if args.pdf:
        from pipeline.reporting.pdf import write_pdf

        print(f"pdf: {write_pdf(args.run_dir / REPORT_FILE, args.run_dir / PDF_FILE, args.browser)}")
    return 0
