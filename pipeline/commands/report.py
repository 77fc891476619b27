"""``cohortnet report RUN_DIR``: rebuild per-patient table, metrics, figures and report from saved predictions."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run folder: reports/<study>/<run_id>")
    parser.add_argument("--pdf", action="store_true", help="also write report.pdf (needs headless Chromium)")
    parser.add_argument("--browser", help="the Chromium executable for --pdf (default: chromium on PATH)")


def run(args: argparse.Namespace) -> int:
    from pipeline.schema import PDF_FILE, REPORT_FILE
    from pipeline.study import check_run_complete, finalize_run

    check_run_complete(args.run_dir)
    if args.pdf:
        from pipeline.reporting.pdf import find_browser

        find_browser(args.browser)  # before the rebuild, so a missing browser costs nothing
    metrics = finalize_run(args.run_dir)
    print(f"per-patient AUC {metrics['auc']:.3f} [95% CI {metrics['auc_ci_low']:.3f}, {metrics['auc_ci_high']:.3f}]")
    print(f"report: {args.run_dir / REPORT_FILE}")
    stale = args.run_dir / PDF_FILE
    if not args.pdf and stale.is_file():  # it would no longer match the rebuilt report
        stale.unlink()
        print(f"removed {stale}, made from the previous report (add --pdf to print this one)")
    if args.pdf:
        from pipeline.reporting.pdf import write_pdf

        print(f"pdf: {write_pdf(args.run_dir / REPORT_FILE, args.run_dir / PDF_FILE, args.browser)}")
    return 0
