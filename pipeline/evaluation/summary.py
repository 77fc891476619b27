"""One binary score vector -> the metrics dict that every study's metrics.json is built from."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.evaluation._inputs import binary_arrays, group_codes, py_float
from pipeline.evaluation.bootstrap import bca_interval, bootstrap_aucs, jackknife_aucs, percentile_interval
from pipeline.evaluation.roc import delong_ci, delong_placements
from pipeline.evaluation.spec import Interval
from pipeline.evaluation.thresholds import choose_threshold, parse_rule, threshold_metrics
from pipeline.options import CI_METHODS

MIN_PER_CLASS = 10  # fewer cases than this in a class: intervals are too wide to say anything


def auc_interval(
    y: Any,
    s: Any,
    *,
    groups: Any = None,
    ci_method: str = "delong",
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """AUC and its interval: ``auc``, ``auc_ci_low``, ``auc_ci_high``, ``auc_se``, ``ci_method``.

    ci_method: ``delong`` (logit-scale DeLong, the default), ``delong_wald`` (pROC's interval),
    ``bootstrap`` (stratified BCa) or ``bootstrap_percentile`` (pROC's bootstrap). With
    ``groups`` DeLong becomes Obuchowski's clustered DeLong and the bootstrap resamples clusters.
    The reported ``ci_method`` names what was done, e.g. ``cluster_bootstrap_bca``.
    """
    if ci_method not in CI_METHODS:
        raise ValueError(f"ci_method must be one of {CI_METHODS}, got {ci_method!r}")
    yy, ss = binary_arrays(y, s)
    if ci_method.startswith("delong"):
        ci = delong_ci(yy, ss, groups=groups, level=level, transform="none" if ci_method == "delong_wald" else "logit")
        return {
            "auc": py_float(ci.auc),
            "auc_ci_low": py_float(ci.low),
            "auc_ci_high": py_float(ci.high),
            "auc_se": py_float(ci.se),
            "ci_method": ci.method,
            "ci_level": level,
        }
    clusters = None if groups is None else group_codes(groups, len(yy))
    auc, v10, v01 = delong_placements(yy, ss[None, :])
    reps = bootstrap_aucs(yy, ss[None, :], clusters=clusters, n_bootstrap=n_bootstrap, seed=seed)[:, 0]
    if ci_method == "bootstrap":
        jack = jackknife_aucs(yy, ss, v10[0], v01[0], float(auc[0]), clusters=clusters)
        low, high = bca_interval(reps, float(auc[0]), jack, level)
        kind = "bca"
    else:
        low, high = percentile_interval(reps, level)
        kind = "percentile"
    finite = reps[np.isfinite(reps)]
    return {
        "auc": py_float(auc[0]),
        "auc_ci_low": py_float(low),
        "auc_ci_high": py_float(high),
        "auc_se": py_float(np.std(finite, ddof=1)) if finite.size > 1 else None,
        "ci_method": f"{'cluster_' if clusters is not None else ''}bootstrap_{kind}",
        "ci_level": level,
        "n_bootstrap": int(finite.size),
    }


def size_warnings(n_pos: int, n_neg: int, what: str = "the data") -> list[str]:
    """Warnings for classes too small for a useful interval."""
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        return [
            f"{what} has {n_pos} positive and {n_neg} negative case(s); with fewer than {MIN_PER_CLASS} "
            "in a class the intervals are too wide to say anything"
        ]
    return []


def binary_summary(
    y_true: Any,
    y_score: Any,
    *,
    groups: Any = None,
    interval: Interval = Interval(),
    threshold: float | None = None,
    threshold_rule: str | None = None,
) -> dict[str, Any]:
    """AUC with CI, counts and (with a threshold) operating-point metrics, as a JSON-ready dict.

    y_true (n,) 0/1; y_score (n,) any real scores, higher = more likely positive; groups (n,)
    cluster ids (patients) for image-level data; ``interval`` the CI settings. ``threshold`` is a
    locked cut-off (positive when score >= threshold); ``threshold_rule`` instead chooses one on
    these same data (reported as ``threshold_source: "same_data"``, an optimistic figure).
    Raises ValueError on length mismatch, NaN scores or non-0/1 labels, and SingleClassError (a
    ValueError) when one class is absent.
    """
    y, s = binary_arrays(y_true, y_score)
    n_pos = int(y.sum())
    out: dict[str, Any] = {"n": int(y.size), "n_positive": n_pos, "n_negative": int(y.size - n_pos)}
    if groups is not None:
        out["n_clusters"] = int(group_codes(groups, len(y)).max()) + 1
    out.update(
        auc_interval(
            y,
            s,
            groups=groups,
            ci_method=interval.ci_method,
            n_bootstrap=interval.n_bootstrap,
            seed=interval.seed,
            level=interval.level,
        )
    )
    warnings = size_warnings(n_pos, int(y.size - n_pos))
    if out["auc_ci_low"] is not None and out["auc_ci_low"] == out["auc_ci_high"]:
        why = "the classes are perfectly separated" if out["auc"] in (0.0, 1.0) else "the scores carry no spread"
        warnings.append(f"the AUC interval has zero width ({why}) and is not informative")
    if threshold is None and threshold_rule is not None:
        threshold = choose_threshold(y, s, threshold_rule)
        out["threshold_rule"] = threshold_rule
        out["threshold_source"] = "fixed" if parse_rule(threshold_rule)[0] == "fixed" else "same_data"
    if threshold is not None:
        out.update(threshold_metrics(y, s, threshold, level=interval.level))
    out["warnings"] = warnings
    return out
