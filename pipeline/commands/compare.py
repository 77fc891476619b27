"""``cohortnet compare RUN_A RUN_B [RUN_C ...] --out DIR``: compare runs scored on the same patients.

RUN_A is the reference. Writes ``compare.json``, ``compare.csv``, ``roc_overlay.png`` and
``compare.html`` into ``--out``. Exit code 2, naming the runs and the reason, when the runs are
not comparable (unfinished, other patients or labels, other positive class, other splits, or a
prediction folder scored by models that trained on some of its patients).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from pipeline.errors import ValidationError

log = logging.getLogger("pipeline")


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "runs",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="run folders (or labelled predict folders); the first is the reference",
    )
    add("--out", type=Path, required=True, help="output folder")
    add("--n-bootstrap", type=int, default=2000, metavar="N", help="paired bootstrap replicates (default 2000)")
    add("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    add(
        "--allow-different-splits",
        action="store_true",
        help="compare study runs whose splits.csv differ (stated as a warning in the report)",
    )
    add(
        "--allow-study-patients",
        action="store_true",
        help="compare prediction folders whose models trained or validated on some of the patients "
        "(predict --allow-study-patients; not an independent test, stated as a warning in the report)",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.commands.evaluate import folder_problem
    from pipeline.reporting.compare import CompareOptions, compare_runs, comparison_row, write_comparison
    from pipeline.reporting.html import fmt, fmt_p

    problems = []
    if args.n_bootstrap < 100:
        problems.append(f"--n-bootstrap must be at least 100, got {args.n_bootstrap}")
    if args.seed < 0:
        problems.append(f"--seed must be 0 or more, got {args.seed}")
    if not 0.5 <= args.level < 1.0:
        problems.append(f"--level must be in [0.5, 1), got {args.level}")
    problem = folder_problem(args.out, "--out (the folder that receives compare.json and compare.html)")
    problems += [problem] if problem else []
    if problems:
        raise ValidationError(problems, "compare options")
    options = CompareOptions(
        args.n_bootstrap,
        args.seed,
        args.level,
        allow_different_splits=args.allow_different_splits,
        allow_study_patients=args.allow_study_patients,
    )
    comparison = compare_runs(args.runs, options)
    write_comparison(args.out, comparison)
    names = {r["key"]: r["name"] for r in comparison.summary["runs"]}
    for c in comparison.summary["comparisons"]:
        row = comparison_row(c)
        print(
            f"{row['run']} ({names[row['run']]}) - {row['reference']} ({names[row['reference']]}): "
            f"AUC {fmt(row['auc_run'])} vs {fmt(row['auc_reference'])}, difference {_signed(row['auc_difference'])} "
            f"[{fmt(row['bootstrap_ci_low'])}, {fmt(row['bootstrap_ci_high'])}], DeLong p {fmt_p(row['delong_p'])}"
        )
    for warning in comparison.summary["warnings"]:
        log.warning("%s", warning)
    print(f"comparison: {args.out}")
    return 0


def _signed(value: float | None) -> str:
    """A difference with its sign, or "–" when it is undefined."""
    return "–" if value is None or not math.isfinite(value) else f"{value:+.3f}"
