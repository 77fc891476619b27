"""Multi-class ROC: one-vs-rest AUCs with DeLong CIs and their macro average with a bootstrap CI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.evaluation._inputs import as_float_vector, py_float
from pipeline.evaluation.bootstrap import SortedScore, percentile_interval, weighted_auc
from pipeline.evaluation.roc import delong_ci


def multiclass_summary(
    labels: Any,
    scores: Any,
    classes: Sequence[Any],
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    ci_method: str = "delong",
) -> dict[str, Any]:
    """One-vs-rest AUC per class and the macro average (= sklearn ``roc_auc_score(multi_class="ovr")``).

    labels (n,) class values; scores (n, k), column j the score for ``classes[j]``.
    Per-class intervals are DeLong (``ci_method``); the macro-average interval is a percentile
    bootstrap stratified by class, with the same resampled rows for every class so that the
    correlation between one-vs-rest AUCs is respected.
    """
    lab = np.asarray(labels)
    sc = np.asarray(scores, dtype=np.float64)
    if sc.ndim != 2 or sc.shape != (lab.shape[0], len(classes)):
        raise ValueError(f"scores must have shape (n, k) = ({lab.shape[0]}, {len(classes)}), got {sc.shape}")
    for j, c in enumerate(classes):
        as_float_vector(sc[:, j], f"score for class {c!r}")
    if not np.isfinite(sc).all():
        raise ValueError("multi-class scores contain NaN or infinite values")
    missing = [c for c in classes if not np.any(lab == c)]
    if missing:
        raise ValueError(f"classes without any observation: {missing}")
    per_class = []
    for j, c in enumerate(classes):
        ci = delong_ci((lab == c).astype(int), sc[:, j], level=level, transform=_transform(ci_method))
        per_class.append({"class": _plain(c), "n": int(np.sum(lab == c)), **_ci_keys(ci.as_dict())})
    macro = float(np.mean([d["auc"] for d in per_class]))
    reps = _macro_replicates(lab, sc, classes, n_bootstrap, seed)
    low, high = percentile_interval(reps, level)
    return {
        "classes": [_plain(c) for c in classes],
        "per_class": per_class,
        "macro_auc": py_float(macro),
        "macro_auc_ci_low": py_float(low),
        "macro_auc_ci_high": py_float(high),
        "macro_ci_method": "bootstrap_percentile_stratified",
        "n_bootstrap": n_bootstrap,
    }


def _transform(ci_method: str) -> str:
    return "none" if ci_method == "delong_wald" else "logit"


def _ci_keys(d: dict[str, Any]) -> dict[str, Any]:
    return {"auc": d["auc"], "auc_ci_low": d["low"], "auc_ci_high": d["high"], "auc_se": d["se"]}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _macro_replicates(lab: np.ndarray, sc: np.ndarray, classes: Sequence[Any], n_bootstrap: int, seed: int) -> Any:
    """Macro-average AUC per bootstrap replicate, (B,); rows resampled within each class."""
    rng = np.random.default_rng(seed)
    n = lab.size
    members = [np.flatnonzero(lab == c) for c in classes]
    sorted_scores = [SortedScore.build((lab == c).astype(np.int64), sc[:, j]) for j, c in enumerate(classes)]
    weights = np.zeros((n_bootstrap, n))
    for rows in members:
        drawn = rows[rng.integers(0, rows.size, size=(n_bootstrap, rows.size))]
        flat = (np.arange(n_bootstrap)[:, None] * n + drawn).ravel()
        weights += np.bincount(flat, minlength=n_bootstrap * n).reshape(n_bootstrap, n)
    aucs = np.column_stack([weighted_auc(ss, weights) for ss in sorted_scores])
    return aucs.mean(axis=1)
