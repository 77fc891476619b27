"""Per-subgroup and per-fold metrics at a locked threshold, with a heterogeneity test across subgroups."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.evaluation._inputs import SingleClassError, py_float
from pipeline.evaluation.spec import Interval
from pipeline.evaluation.summary import binary_summary

MAX_LEVELS_UNBANDED = 10  # numeric columns with more distinct values are cut into quartile bands
_THRESHOLD_KEYS = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "balanced_accuracy", "f1")

Summarise = Callable[[np.ndarray, np.ndarray], dict[str, Any]]


def subgroup_values(column: pd.Series) -> tuple[pd.Series, list[str], str | None]:
    """Subgroup value per row (as text), the values in display order, and how they were derived.

    Numeric columns with more than ``MAX_LEVELS_UNBANDED`` distinct values (age, say) are cut into
    quartile bands; other columns are used as they are, with empty cells as "(missing)".
    """
    if pd.api.types.is_numeric_dtype(column) and column.nunique(dropna=True) > MAX_LEVELS_UNBANDED:
        bands = pd.qcut(column, 4, duplicates="drop")
        order = [str(c) for c in bands.cat.categories]
        return bands.astype(str).where(column.notna(), "(missing)"), order, "quartile bands"
    text = column.astype(str).where(column.notna(), "(missing)")
    if pd.api.types.is_numeric_dtype(column):
        order = [str(v) for v in sorted(column.dropna().unique())]
    else:
        order = sorted(text[column.notna()].unique())
    return text, order + (["(missing)"] if column.isna().any() else []), None


def _one(y: np.ndarray, s: np.ndarray, summarise: Summarise, what: str) -> dict[str, Any]:
    """Summary of one subset; one class only gives ``auc: None`` and a warning, not an exception."""
    n_pos = int(y.sum())
    try:
        out = summarise(y, s)
    except SingleClassError:
        out = {"n": int(y.size), "n_positive": n_pos, "n_negative": int(y.size - n_pos), "auc": None}
        out["warnings"] = [f"{what} has only one class ({n_pos} positive of {y.size}); no AUC"]
        return out
    out["warnings"] = [w.replace("the data", what) for w in out.get("warnings", [])]
    return out


def heterogeneity_test(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Cochran's Q test that independent subgroups share one AUC (inverse-variance weights on the SE),
    with Higgins' I^2 = max(0, (Q - df) / Q), the share of the spread beyond chance.

    Needs at least two subgroups with an AUC and a positive SE; otherwise None.
    """
    usable = [r for r in results if r.get("auc") is not None and (r.get("auc_se") or 0.0) > 0.0]
    if len(usable) < 2:
        return None
    auc = np.array([r["auc"] for r in usable])
    w = 1.0 / np.array([r["auc_se"] for r in usable]) ** 2
    pooled = float(np.sum(w * auc) / w.sum())
    q = float(np.sum(w * (auc - pooled) ** 2))
    df = len(usable) - 1
    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    return {
        "q": q,
        "df": df,
        "p_value": float(stats.chi2.sf(q, df)),
        "i2": i2,
        "pooled_auc": pooled,
        "n_groups": len(usable),
    }


def subgroup_summaries(
    frame: pd.DataFrame, y: np.ndarray, s: np.ndarray, columns: Sequence[str], summarise: Summarise
) -> dict[str, Any]:
    """For each column in ``columns``: one summary per value, the AUC range and a heterogeneity test.

    frame holds the subgroup columns, aligned with y (n,) and s (n,). ``summarise(y, s)`` computes
    the metrics of one subset (the caller fixes the CI method and the locked threshold).
    """
    out: dict[str, Any] = {}
    for col in columns:
        values, order, derived = subgroup_values(frame[col].reset_index(drop=True))
        rows = []
        for value in order:
            mask = (values == value).to_numpy()
            res = _one(y[mask], s[mask], summarise, f"subgroup {col}={value}")
            rows.append({"value": value, **res})
        aucs = [r["auc"] for r in rows if r["auc"] is not None]
        out[col] = {
            "groups": rows,
            "auc_range": py_float(max(aucs) - min(aucs)) if aucs else None,
            "heterogeneity": heterogeneity_test(rows),
            **({"derived": derived} if derived else {}),
        }
    return out


def fold_summaries(folds: pd.Series, y: np.ndarray, s: np.ndarray, summarise: Summarise) -> dict[str, Any]:
    """Per-fold metrics and their mean and SD (ddof=1) across folds.

    folds (n,) fold ids aligned with y and s. The pooled out-of-fold figures are the top level of
    metrics.json; this section shows how much they vary from fold to fold.
    """
    fold_ids = folds.reset_index(drop=True)
    per_fold = []
    for fold in sorted(fold_ids.unique(), key=str):
        mask = (fold_ids == fold).to_numpy()
        per_fold.append({"fold": _plain(fold), **_one(y[mask], s[mask], summarise, f"fold {fold}")})
    out: dict[str, Any] = {"n_folds": len(per_fold), "per_fold": per_fold}
    for key in ("auc", *_THRESHOLD_KEYS):
        vals = np.array([f[key] for f in per_fold if f.get(key) is not None], dtype=np.float64)
        if vals.size:
            out[f"{key}_mean"] = py_float(vals.mean())
            out[f"{key}_sd"] = py_float(vals.std(ddof=1)) if vals.size > 1 else None
    return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def make_summariser(threshold: float | None, interval: Interval) -> Summarise:
    """A ``summarise(y, s)`` with the study's CI settings and locked threshold fixed."""

    def summarise(y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
        return binary_summary(y, s, interval=interval, threshold=threshold)

    return summarise
