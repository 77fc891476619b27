"""Comparing the AUCs of two models: DeLong tests (paired, unpaired) and bootstrap tests.

Every result has the same keys: ``auc1``, ``auc2``, ``auc_difference`` (auc1 - auc2), ``se``,
``z`` (the test statistic; pROC calls the unpaired one D), ``p_value`` (two-sided), ``ci_low``,
``ci_high`` (interval of the difference), ``method``, ``n`` and, for bootstrap, ``n_bootstrap``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from pipeline.evaluation._inputs import binary_arrays, group_codes, py_float
from pipeline.evaluation.bootstrap import bootstrap_aucs, percentile_interval
from pipeline.evaluation.roc import clustered_covariance, delong_covariance, delong_placements


def _result(
    auc1: float, auc2: float, se: float, test: tuple[float, float], ci: tuple[float, float], **extra: Any
) -> dict[str, Any]:
    stat, p = test
    out: dict[str, Any] = {
        "auc1": py_float(auc1),
        "auc2": py_float(auc2),
        "auc_difference": py_float(auc1 - auc2),
        "se": py_float(se),
        "z": py_float(stat),
        "p_value": py_float(p),
        "ci_low": py_float(ci[0]),
        "ci_high": py_float(ci[1]),
    }
    out.update(extra)
    return out


def _z_test(diff: float, se: float, level: float) -> tuple[float, float, tuple[float, float]]:
    """Z, two-sided p and Wald interval of a difference; identical curves (difference and SE 0) give
    Z = 0, p = 1 (as pROC) and the interval (0, 0); an undefined SE gives NaN for all three."""
    if se == 0.0 or not np.isfinite(se):
        # An SE that is NaN (a class with one unit) or 0 beside a non-zero difference is a variance
        # estimate that failed, not certainty: no test and no interval, never the zero-width (diff, diff).
        if se == 0.0 and diff == 0.0:
            return 0.0, 1.0, (0.0, 0.0)
        nan = float("nan")
        return nan, nan, (nan, nan)
    z = diff / se
    q = float(stats.norm.ppf(0.5 + level / 2.0))
    return z, float(2.0 * stats.norm.sf(abs(z))), (diff - q * se, diff + q * se)


def delong_paired_test(
    y_true: Any, score1: Any, score2: Any, *, groups: Any = None, level: float = 0.95
) -> dict[str, Any]:
    """DeLong et al. (1988) test for two correlated ROC curves (same cases), as pROC's ``roc.test``.

    y_true (n,) 0/1; score1, score2 (n,). With ``groups`` the covariance is Obuchowski's clustered one.
    """
    y, s1 = binary_arrays(y_true, score1, score_name="score1")
    _, s2 = binary_arrays(y_true, score2, score_name="score2")
    scores = np.vstack([s1, s2])
    if groups is None:
        auc, cov = delong_covariance(y, scores)
        method = "delong_paired"
    else:
        auc, cov = clustered_covariance(y, scores, group_codes(groups, len(y)))
        method = "delong_paired_clustered"
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    se = float(np.sqrt(max(var, 0.0)))
    z, p, ci = _z_test(float(auc[0] - auc[1]), se, level)
    return _result(auc[0], auc[1], se, (z, p), ci, method=method, n=len(y), level=level)


def delong_unpaired_test(y1: Any, score1: Any, y2: Any, score2: Any, *, level: float = 0.95) -> dict[str, Any]:
    """DeLong test for two independent cohorts, as pROC's unpaired ``roc.test``.

    Statistic D = (auc1 - auc2) / sqrt(var1 + var2) against a t distribution whose degrees of
    freedom (``df``) follow pROC's Welch-type formula; the interval uses the same t quantile.
    """
    ya, sa = binary_arrays(y1, score1, score_name="score1")
    yb, sb = binary_arrays(y2, score2, score_name="score2")
    a1, v1 = delong_covariance(ya, sa[None, :])
    a2, v2 = delong_covariance(yb, sb[None, :])
    var1, var2 = float(v1[0, 0]), float(v2[0, 0])
    se = float(np.sqrt(var1 + var2))
    diff = float(a1[0] - a2[0])
    df = (var1 + var2) ** 2 / (var1**2 / (len(ya) - 1) + var2**2 / (len(yb) - 1)) if se > 0 else float("nan")
    if se == 0.0:
        d, p, ci = _z_test(diff, se, level)
    else:
        d = diff / se
        p = float(2.0 * stats.t.sf(abs(d), df))
        q = float(stats.t.ppf(0.5 + level / 2.0, df))
        ci = (diff - q * se, diff + q * se)
    return _result(
        a1[0],
        a2[0],
        se,
        (d, p),
        ci,
        method="delong_unpaired",
        df=py_float(df),
        n=[len(ya), len(yb)],
        level=level,
    )


def bootstrap_paired_test(
    y_true: Any,
    score1: Any,
    score2: Any,
    *,
    groups: Any = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap test: both scores resampled on the same (stratified or cluster) replicates.

    As pROC's ``roc.test(method="bootstrap")``: Z = difference / SD of the replicate differences;
    the interval is the percentile interval of the replicate differences.
    """
    y, s1 = binary_arrays(y_true, score1, score_name="score1")
    _, s2 = binary_arrays(y_true, score2, score_name="score2")
    scores = np.vstack([s1, s2])
    clusters = None if groups is None else group_codes(groups, len(y))
    auc, _, _ = delong_placements(y, scores)
    reps = bootstrap_aucs(y, scores, clusters=clusters, n_bootstrap=n_bootstrap, seed=seed)
    diffs = reps[:, 0] - reps[:, 1]
    diffs = diffs[np.isfinite(diffs)]
    se = float(np.std(diffs, ddof=1))
    z, p, _ = _z_test(float(auc[0] - auc[1]), se, level)
    method = "bootstrap_paired" if groups is None else "cluster_bootstrap_paired"
    extra = {"method": method, "n": len(y), "n_bootstrap": int(diffs.size), "level": level}
    return _result(auc[0], auc[1], se, (z, p), percentile_interval(diffs, level), **extra)


def bootstrap_unpaired_test(
    y1: Any, score1: Any, y2: Any, score2: Any, *, n_bootstrap: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Bootstrap test for two independent cohorts: each resampled (stratified) on its own.

    Z = difference / sqrt(SD1^2 + SD2^2) of the replicate AUCs, normal p; percentile interval of
    the replicate differences.
    """
    ya, sa = binary_arrays(y1, score1, score_name="score1")
    yb, sb = binary_arrays(y2, score2, score_name="score2")
    seeds = np.random.SeedSequence(seed).spawn(2)
    ra = bootstrap_aucs(ya, sa[None, :], n_bootstrap=n_bootstrap, seed=seeds[0])[:, 0]
    rb = bootstrap_aucs(yb, sb[None, :], n_bootstrap=n_bootstrap, seed=seeds[1])[:, 0]
    a1 = float(delong_placements(ya, sa[None, :])[0][0])
    a2 = float(delong_placements(yb, sb[None, :])[0][0])
    se = float(np.sqrt(np.var(ra, ddof=1) + np.var(rb, ddof=1)))
    z, p, _ = _z_test(a1 - a2, se, level)
    extra = {
        "method": "bootstrap_unpaired",
        "n": [len(ya), len(yb)],
        "n_bootstrap": n_bootstrap,
        "level": level,
    }
    return _result(a1, a2, se, (z, p), percentile_interval(ra - rb, level), **extra)
