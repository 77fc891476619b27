"""``cohortnet evaluate TABLE.csv --label-col C --score-col C [--positive V] [--compare C2] ...``.

ROC statistics for any CSV of scores (cohortnet's own predictions or anyone else's): writes
``metrics.json`` and ``roc.csv`` into ``--out`` and prints a readable table. Exit code 2, with
every problem listed, when the table or the options are invalid.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.errors import ValidationError
from pipeline.options import AGGREGATES, CI_METHODS
from pipeline.schema import METRICS_FILE, ROC_FILE

if TYPE_CHECKING:
    from pipeline.evaluation.spec import EvaluationOptions, ScoreColumns

log = logging.getLogger("pipeline")

CI_CHOICES = CI_METHODS


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("table", type=Path, help="CSV with one row per image or case: labels and scores")
    add("--label-col", required=True, help="column holding the true class")
    add(
        "--score-col",
        required=True,
        nargs="+",
        metavar="C",
        help="score column (higher = more likely positive); one column per class for multi-class",
    )
    add("--positive", help="label value of the positive class (default: 1 for 0/1 labels)")
    add("--compare", metavar="C2", help="second score column: paired test of --score-col minus C2")
    add("--group-col", metavar="C", help="patient ids: metrics per patient, image-level interval by cluster")
    add(
        "--subgroup-col",
        nargs="+",
        action="extend",
        default=[],
        metavar="C",
        help="metrics per value of these columns (numeric ones with over 10 values: quartile bands)",
    )
    add("--fold-col", metavar="C", help="cross-validation fold column: per-fold AUC, mean and SD")
    add("--out", type=Path, help="output folder (default: next to TABLE, named <TABLE name>_evaluation)")
    lock = parser.add_mutually_exclusive_group()
    lock.add_argument("--val-table", type=Path, help="validation CSV (same columns) that locks the threshold")
    lock.add_argument(
        "--threshold-split-col",
        metavar="C",
        help="rows where C equals --threshold-split-value lock the threshold; the others are evaluated",
    )
    add(
        "--threshold-split-value",
        default="val",
        help="validation value of --threshold-split-col (default val)",
    )
    add("--threshold-rule", default="youden", help="youden | sensitivity=0.90 | specificity=0.95 | a number")
    add(
        "--ci-method",
        choices=CI_CHOICES,
        default="delong",
        help="delong: DeLong on the logit scale (default); delong_wald: pROC's; bootstrap: BCa",
    )
    add("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap replicates (default 2000)")
    add("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    add(
        "--aggregate",
        choices=AGGREGATES,
        default="mean",
        help="per-patient score (--group-col)",
    )
    add(
        "--recalibrate",
        choices=("platt", "isotonic"),
        help="recalibrate on the validation rows and report it",
    )
    add("--no-calibration", action="store_true", help="skip calibration and decision curve")
    add("--classes", nargs="+", metavar="V", help="multi-class: the class of each --score-col, in order")


def _read_csv(path: Path, what: str, problems: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        problems.append(f"{what} not found: {path}")
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        problems.append(f"{what} {path} is not a readable CSV: {exc}")
        return None
    except OSError as exc:  # no permission
        problems.append(f"{what} {path} cannot be read: {exc.strerror or exc}")
        return None


def _option_problems(args: argparse.Namespace) -> list[str]:
    from pipeline.evaluation.thresholds import parse_rule

    problems = []
    try:
        parse_rule(args.threshold_rule)
    except ValueError as exc:
        problems.append(f"--threshold-rule: {exc}")
    if args.bootstrap < 100:
        problems.append(f"--bootstrap must be at least 100, got {args.bootstrap}")
    if args.seed < 0:
        problems.append(f"--seed must be 0 or more, got {args.seed}")
    if not 0.5 <= args.level < 1.0:
        problems.append(f"--level must be in [0.5, 1), got {args.level}")
    if args.recalibrate and not (args.val_table or args.threshold_split_col):
        problems.append("--recalibrate needs validation rows (--val-table or --threshold-split-col)")
    problems += _column_problems(args)
    problem = folder_problem(output_folder(args), f"--out (the folder that receives {METRICS_FILE} and {ROC_FILE})")
    return problems + ([problem] if problem else [])


def folder_problem(folder: Path, what: str) -> str | None:
    """Why ``folder`` cannot be an output folder (it, or the nearest part of it that exists, is a
    file), checked before any work; None when it can be."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or existing.is_dir():
        return None
    return f"{what}: {existing} exists and is not a folder"


def _column_problems(args: argparse.Namespace) -> list[str]:
    """Score columns, --classes and --compare that name one task unambiguously."""
    scores = list(args.score_col)
    problems = []
    if len(set(scores)) < len(scores):
        problems.append(f"--score-col names a column more than once: {scores}")
    if len(scores) > 1 and not args.classes:
        problems.append(
            f"{len(scores)} --score-col columns make a multi-class task: give --classes with the class of each "
            "column, in order (one --score-col for a binary task)"
        )
    if args.classes and len(scores) == 1:
        problems.append("--classes is for a multi-class task with one --score-col per class; got one --score-col")
    elif args.classes and len(args.classes) != len(scores):
        problems.append(f"--classes names {len(args.classes)} classes for {len(scores)} --score-col columns")
    if args.compare is not None and args.compare in scores:
        problems.append(f"--compare {args.compare!r} is the --score-col column itself: name another score column")
    return problems


def output_folder(args: argparse.Namespace) -> Path:
    """Where metrics.json and roc.csv go: --out, or ``<TABLE name>_evaluation`` next to TABLE."""
    return args.out if args.out is not None else args.table.parent / f"{args.table.stem}_evaluation"


def _split(df: pd.DataFrame, args: argparse.Namespace, problems: list[str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(evaluated rows, validation rows) by --threshold-split-col; (df, None) without it."""
    col = args.threshold_split_col
    if col is None:
        return df, None
    if col not in df.columns:
        problems.append(f"--threshold-split-col: column {col!r} not found")
        return df, None
    is_val = df[col].astype(str) == str(args.threshold_split_value)
    if not is_val.any() or is_val.all():
        problems.append(f"--threshold-split-col {col!r}: need rows with and without {args.threshold_split_value!r}")
        return df, None
    if args.group_col in df.columns:
        both = set(df.loc[is_val, args.group_col]) & set(df.loc[~is_val, args.group_col])
        if both:
            problems.append(f"{len(both)} patient(s) have rows in both the validation and the evaluated part (leakage)")
    return df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)


def score_columns(args: argparse.Namespace) -> ScoreColumns:
    """The table's columns as the flags name them."""
    from pipeline.evaluation.spec import ScoreColumns

    return ScoreColumns.of(
        args.label_col,
        args.score_col,
        positive=args.positive,
        compare=args.compare,
        group=args.group_col,
        subgroups=args.subgroup_col,
        fold=args.fold_col,
        classes=args.classes,
    )


def evaluation_options(args: argparse.Namespace) -> EvaluationOptions:
    """The statistical choices as the flags name them."""
    from pipeline.evaluation.spec import EvaluationOptions, Interval

    return EvaluationOptions(
        threshold_rule=args.threshold_rule,
        interval=Interval(args.ci_method, args.bootstrap, args.seed, args.level),
        calibration=not args.no_calibration,
        aggregate=args.aggregate,
        recalibration=args.recalibrate,
    )


def load_inputs(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Read and check the table(s); ValidationError listing every problem in options and tables."""
    from pipeline.evaluation.table import validate_score_table

    problems = _option_problems(args)
    df = _read_csv(args.table, "table", problems)
    val = _read_csv(args.val_table, "validation table", problems) if args.val_table else None
    if df is not None:
        df, split_val = _split(df, args, problems)
        val = split_val if split_val is not None else val
        cols = score_columns(args)
        problems += validate_score_table(df, cols)
        if val is not None:
            problems += [f"validation rows: {p}" for p in validate_score_table(val, cols.for_validation())]
        if args.recalibrate and not problems:
            problems += _recalibration_problems(df, val, args)
    if problems or df is None:
        raise ValidationError(problems, "evaluation input")
    return df, val


def _recalibration_problems(df: pd.DataFrame, val: pd.DataFrame | None, args: argparse.Namespace) -> list[str]:
    """--recalibrate maps probabilities: scores outside [0, 1] are refused, not silently skipped."""
    problems = []
    for name, frame in (("table", df), ("validation rows", val)):
        if frame is None:
            continue
        scores = pd.to_numeric(frame[args.score_col[0]], errors="coerce")
        if scores.min() < 0 or scores.max() > 1:
            problems.append(
                f"--recalibrate {args.recalibrate}: {name} column {args.score_col[0]!r} ranges "
                f"{scores.min():.3g}..{scores.max():.3g}, not probabilities in [0, 1] (logits? apply a sigmoid first)"
            )
    return problems


def _roc_frame(df: pd.DataFrame, args: argparse.Namespace, metrics: dict[str, Any], col: str) -> pd.DataFrame:
    """ROC table of ``col`` at the unit of the metrics (per patient with --group-col)."""
    from pipeline.evaluation import roc_table
    from pipeline.evaluation.table import aggregate_by_patient, binary_target

    unit = df.copy()
    unit[col] = pd.to_numeric(unit[col])
    if args.group_col:
        unit = aggregate_by_patient(unit, args.group_col, [col], args.aggregate)
    return roc_table(binary_target(unit[args.label_col], metrics["positive"]), unit[col].to_numpy())


def _write(df: pd.DataFrame, args: argparse.Namespace, metrics: dict[str, Any]) -> Path:
    from pipeline.reporting.artifacts import write_csv, write_json

    out = output_folder(args)
    write_json(out / METRICS_FILE, metrics)
    if metrics.get("task") == "binary":
        write_csv(out / ROC_FILE, _roc_frame(df, args, metrics, args.score_col[0]))
        if args.compare:
            write_csv(out / f"roc_{args.compare}.csv", _roc_frame(df, args, metrics, args.compare))
    return out


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluation import evaluate_predictions, format_metrics

    df, val = load_inputs(args)
    metrics = evaluate_predictions(df, score_columns(args), evaluation_options(args), threshold_df=val)
    out = _write(df, args, metrics)
    print(format_metrics(metrics), end="")
    log.info("wrote %s and %s in %s", METRICS_FILE, ROC_FILE, out)
    return 0
