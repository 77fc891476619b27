"""``cohortnet report RUN_DIR``: rebuild per-patient table, metrics, figures and report from saved predictions."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run folder: reports/<study>/<run_id>")


def run(args: argparse.Namespace) -> int:
    from pipeline.schema import REPORT_FILE
    from pipeline.study import check_run_complete, finalize_run

    check_run_complete(args.run_dir)
    metrics = finalize_run(args.run_dir)
    print(f"per-patient AUC {metrics['auc']:.3f} [95% CI {metrics['auc_ci_low']:.3f}, {metrics['auc_ci_high']:.3f}]")
    print(f"report: {args.run_dir / REPORT_FILE}")
    return 0
