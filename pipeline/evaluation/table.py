"""Score tables (one row per image or case): validation, labels, per-patient aggregation.

:func:`validate_score_table` lists every problem at once, so a user fixes a CSV in one round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation.spec import ScoreColumns
from pipeline.options import AGGREGATES

_SHOW = 3  # examples shown per problem


def norm_label(value: Any) -> str:
    """Label value -> canonical text, so that 1, 1.0, "1" and True all read "1"."""
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value).strip()
    if np.isfinite(f) and f == int(f):
        return str(int(f))
    return str(value).strip()


def label_texts(labels: pd.Series) -> pd.Series:
    """``norm_label`` of each value; None where the label is missing or blank."""
    return labels.map(lambda v: None if pd.isna(v) or str(v).strip() == "" else norm_label(v))


def resolve_positive(labels: pd.Series, positive: Any) -> tuple[str | None, list[str]]:
    """The positive label (canonical text) and problems; 0/1 labels default to 1."""
    values = sorted({norm_label(v) for v in labels.dropna()})
    if positive is not None:
        pos = norm_label(positive)
        if pos not in values:
            return None, [f"positive label {positive!r} does not occur in the label column (values: {_few(values)})"]
        return pos, []
    if set(values) <= {"0", "1"}:
        return "1", []
    return None, [f"labels are not 0/1 (values: {_few(values)}); say which one is positive (--positive)"]


def _few(values: Sequence[Any], k: int = 8) -> str:
    shown = ", ".join(str(v) for v in list(values)[:k])
    return shown + (f", ... ({len(values)} in all)" if len(values) > k else "")


def _numeric_problems(df: pd.DataFrame, col: str, what: str) -> list[str]:
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce")
    problems = []
    bad = raw.notna() & num.isna()
    if bad.any():
        rows = ", ".join(f"row {i + 2}: {raw.iloc[i]!r}" for i in np.flatnonzero(bad.to_numpy())[:_SHOW])
        problems.append(f"{what} column {col!r} has {int(bad.sum())} non-numeric value(s) ({rows})")
    if raw.isna().any():
        problems.append(f"{what} column {col!r} has {int(raw.isna().sum())} empty value(s)")
    if np.isinf(num.to_numpy(dtype=np.float64, na_value=np.nan)).any():
        problems.append(f"{what} column {col!r} has infinite value(s)")
    return problems


def _label_problems(df: pd.DataFrame, label_col: str, positive: Any, n_scores: int) -> list[str]:
    labels = df[label_col]
    problems = []
    if labels.isna().any():
        problems.append(f"label column {label_col!r} has {int(labels.isna().sum())} empty value(s)")
    values = sorted({norm_label(v) for v in labels.dropna()})
    if n_scores > 1:
        if len(values) != n_scores:
            problems.append(
                f"multi-class needs one score column per class: {n_scores} score columns but "
                f"{len(values)} label values ({_few(values)})"
            )
        return problems
    if len(values) < 2:
        problems.append(f"label column {label_col!r} has a single value ({_few(values)}); ROC needs two classes")
        return problems
    if len(values) > 2 and positive is None:
        problems.append(
            f"label column {label_col!r} has {len(values)} values ({_few(values)}), not binary: give "
            "--positive V (V against the rest) or one --score-col per class (multi-class)"
        )
        return problems
    return problems + resolve_positive(labels, positive)[1]


def _constant_within(df: pd.DataFrame, group_col: str, col: str) -> int:
    """Number of groups in which ``col`` takes more than one value."""
    return int((df.groupby(group_col, sort=False)[col].nunique(dropna=False) > 1).sum())


def validate_score_table(df: pd.DataFrame, cols: ScoreColumns) -> list[str]:
    """Every problem in ``df`` for an evaluation with these columns; an empty list means valid."""
    label_col, score_cols, group_col, fold_col = cols.label, cols.scores, cols.group, cols.fold
    wanted = [label_col, *score_cols, cols.compare, group_col, fold_col, *cols.subgroups]
    named = [c for c in wanted if c is not None]
    missing = [c for c in dict.fromkeys(named) if c not in df.columns]
    problems = [f"column {c!r} not found (columns: {_few(list(df.columns))})" for c in missing]
    if len(df) == 0:
        problems.append("the table has no rows")
        return problems
    for col in [*score_cols, cols.compare]:
        if col is not None and col in df.columns:
            problems += _numeric_problems(df, col, "score")
    if label_col in df.columns:
        problems += _label_problems(df, label_col, cols.positive, len(score_cols))
    if group_col is not None and group_col in df.columns:
        if df[group_col].isna().any():
            problems.append(f"group column {group_col!r} has {int(df[group_col].isna().sum())} empty value(s)")
        known = df.dropna(subset=[group_col])
        for col, why in ((label_col, "label"), (fold_col, "fold (the patient is in two folds: leakage)")):
            k = _constant_within(known, group_col, col) if col is not None and col in df.columns else 0
            if k:
                problems.append(f"{k} patient(s) in {group_col!r} have more than one {why} value")
    if fold_col is not None and fold_col in df.columns and df[fold_col].isna().any():
        problems.append(f"fold column {fold_col!r} has {int(df[fold_col].isna().sum())} empty value(s)")
    return problems


def binary_target(labels: pd.Series, positive: str) -> np.ndarray:
    """Labels -> (n,) int64, 1 where the canonical label equals ``positive``."""
    return np.asarray([norm_label(v) == positive for v in labels], dtype=np.int64)


def aggregate_by_patient(
    df: pd.DataFrame, group_col: str, score_cols: Sequence[str], how: str = "mean"
) -> pd.DataFrame:
    """One row per patient: scores combined by ``how`` (mean, max, median), other columns' first value.

    Adds ``n_images``. Row order follows the first appearance of each patient.
    """
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
    grouped = df.groupby(group_col, sort=False)
    scores = grouped[list(score_cols)].agg(how)
    others = [c for c in df.columns if c not in (group_col, *score_cols)]
    first = grouped[others].first() if others else pd.DataFrame(index=scores.index)
    out = pd.concat([first, scores], axis=1)
    out["n_images"] = grouped.size()
    return out.reset_index()
