"""Calibration of predicted probabilities: Brier score, logistic recalibration, ECE, reliability data.

All functions take probabilities in [0, 1]; :func:`is_probability` tells whether a score column
qualifies (arbitrary marker values such as a serum concentration do not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize, special, stats
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from pipeline.evaluation._inputs import FloatArray, IntArray, binary_arrays, py_float
from pipeline.evaluation.thresholds import wilson_interval

_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the logit


def is_probability(scores: FloatArray) -> bool:
    """True when every score lies in [0, 1]."""
    return bool(scores.size) and float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0


def _logit(p: FloatArray) -> FloatArray:
    return special.logit(np.clip(p, _EPS, 1.0 - _EPS))


def calibration_intercept(y: IntArray, p: FloatArray) -> float:
    """Calibration-in-the-large: a in logit P(y=1) = a + logit(p), slope fixed at 1 (offset model).

    0 when the mean prediction matches the event rate. Solved as a 1-D root (scikit-learn's
    LogisticRegression has no offset term); monotone in a, so Brent's method is exact.
    """
    lp = _logit(p)

    def score(a: float) -> float:
        return float(np.sum(y - special.expit(a + lp)))

    return float(optimize.brentq(score, -50.0, 50.0, xtol=1e-12))


def calibration_slope(y: IntArray, p: FloatArray, level: float = 0.95) -> dict[str, float | None]:
    """Slope b (and intercept) of logit P(y=1) = a + b logit(p), unpenalised, with a Wald CI for b.

    b = 1 for a calibrated model; b < 1 means predictions are too extreme (overfitting).
    """
    x = _logit(p)[:, None]
    fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x, y)
    a, b = float(fit.intercept_[0]), float(fit.coef_[0, 0])
    mu = special.expit(a + b * x[:, 0])
    design = np.column_stack([np.ones_like(x[:, 0]), x[:, 0]])
    info = design.T @ (design * (mu * (1.0 - mu))[:, None])  # Fisher information
    try:
        se = float(np.sqrt(np.linalg.inv(info)[1, 1]))
    except np.linalg.LinAlgError:
        se = float("nan")
    q = float(stats.norm.ppf(0.5 + level / 2.0))
    return {
        "calibration_slope": py_float(b),
        "calibration_slope_ci_low": py_float(b - q * se),
        "calibration_slope_ci_high": py_float(b + q * se),
        "recalibration_intercept": py_float(a),
    }


def reliability_bins(y: IntArray, p: FloatArray, n_bins: int = 10) -> dict[str, list[Any]]:
    """Equal-width bins on [0, 1] (as sklearn's ``calibration_curve(strategy="uniform")``).

    Returns lists over non-empty bins: ``bin_low``, ``bin_high``, ``n``, ``mean_predicted``,
    ``observed_rate``; the observed rate against the mean prediction is the reliability curve.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], p, side="right")
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    keep = count > 0
    return {
        "bin_low": edges[:-1][keep].tolist(),
        "bin_high": edges[1:][keep].tolist(),
        "n": count[keep].astype(int).tolist(),
        "mean_predicted": (sum_p[keep] / count[keep]).tolist(),
        "observed_rate": (sum_y[keep] / count[keep]).tolist(),
    }


def quantile_bin_count(n: int, per_bin: int = 10, most: int = 10) -> int:
    """Bins of about ``per_bin`` cases each (at least 2, at most ``most``): a bin of one or two
    cases makes the curve zig-zag."""
    return int(min(most, max(2, n // per_bin)))


def quantile_reliability_bins(y: IntArray, p: FloatArray, n_bins: int, level: float = 0.95) -> dict[str, list[Any]]:
    """Equal-count bins over the sorted scores (tied scores stay in one bin), with the Wilson
    interval of each bin's observed rate.

    Returns lists over bins: ``bin_low``, ``bin_high``, ``n``, ``mean_predicted``,
    ``observed_rate``, ``observed_ci_low``, ``observed_ci_high``.
    """
    order = np.argsort(p, kind="stable")
    chunks = [c for c in np.array_split(order, n_bins) if len(c)]
    out: dict[str, list[Any]] = {k: [] for k in ("bin_low", "bin_high", "n", "mean_predicted", "observed_rate")}
    out["observed_ci_low"], out["observed_ci_high"] = [], []
    bins: list[npt.NDArray[np.intp]] = []
    for chunk in chunks:  # a score on a bin edge joins the bin that already holds it
        rest = chunk
        if bins and p[bins[-1][-1]] == p[chunk[0]]:
            same = p[chunk] == p[chunk[0]]
            bins[-1] = np.concatenate([bins[-1], chunk[same]])
            rest = chunk[~same]
        if len(rest):
            bins.append(rest)
    for idx in bins:
        k, n = int(y[idx].sum()), len(idx)
        low, high = wilson_interval(k, n, level)
        out["bin_low"].append(float(p[idx].min()))
        out["bin_high"].append(float(p[idx].max()))
        out["n"].append(n)
        out["mean_predicted"].append(float(p[idx].mean()))
        out["observed_rate"].append(k / n)
        out["observed_ci_low"].append(low)
        out["observed_ci_high"].append(high)
    return out


def expected_calibration_error(y: IntArray, p: FloatArray, n_bins: int = 10) -> float:
    """ECE = sum over equal-width bins of (bin size / n) * |observed rate - mean prediction|."""
    bins = reliability_bins(y, p, n_bins)
    n = np.asarray(bins["n"], dtype=np.float64)
    gap = np.abs(np.asarray(bins["observed_rate"]) - np.asarray(bins["mean_predicted"]))
    return float(np.sum(n * gap) / n.sum())


_SLOPE_KEYS = (
    "calibration_slope",
    "calibration_slope_ci_low",
    "calibration_slope_ci_high",
    "recalibration_intercept",
)


def _separated(y: IntArray, p: FloatArray) -> bool:
    """True when some cut-off puts every positive above every negative (either direction)."""
    return bool(p[y == 1].min() > p[y == 0].max() or p[y == 1].max() < p[y == 0].min())


def calibration_summary(y_true: Any, y_prob: Any, *, n_bins: int = 10, level: float = 0.95) -> dict[str, Any]:
    """Brier score, calibration intercept and slope (with CI), ECE and reliability-curve data.

    y_true (n,) 0/1; y_prob (n,) probabilities in [0, 1] (ValueError otherwise).
    """
    y, p = binary_arrays(y_true, y_prob, score_name="y_prob")
    if not is_probability(p):
        raise ValueError("calibration needs probabilities in [0, 1]; these scores are outside that range")
    out: dict[str, Any] = {
        "brier": py_float(brier_score_loss(y, p)),
        "brier_reference": py_float(y.mean() * (1.0 - y.mean())),  # Brier of predicting the prevalence
        "mean_predicted": py_float(p.mean()),
        "observed_rate": py_float(y.mean()),
        "calibration_intercept": py_float(calibration_intercept(y, p)),
    }
    if _separated(y, p):
        # Logistic recalibration has no finite maximum-likelihood slope when the scores separate the classes.
        out.update(dict.fromkeys(_SLOPE_KEYS))
        out["calibration_slope_note"] = "undefined: the predictions separate the classes perfectly"
    else:
        out.update(calibration_slope(y, p, level))
    out["ece"] = py_float(expected_calibration_error(y, p, n_bins))
    out["n_bins"] = n_bins
    out["reliability"] = reliability_bins(y, p, n_bins)
    out["reliability_quantile"] = quantile_reliability_bins(y, p, quantile_bin_count(len(y)), level)
    return out


def fit_recalibration(y_val: Any, p_val: Any, method: str = "platt") -> Callable[[Any], FloatArray]:
    """Fit a recalibration map on validation data only; returns ``f(p) -> recalibrated p``.

    platt: logistic regression on logit(p) (Platt scaling for probabilities);
    isotonic: scikit-learn's IsotonicRegression, clipped outside the validation range.
    """
    y, p = binary_arrays(y_val, p_val, score_name="p_val")
    if method == "platt":
        model = LogisticRegression(C=np.inf, max_iter=1000).fit(_logit(p)[:, None], y)
        return lambda q: model.predict_proba(_logit(np.asarray(q, dtype=np.float64))[:, None])[:, 1]
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return lambda q: np.asarray(iso.predict(np.asarray(q, dtype=np.float64)), dtype=np.float64)
    raise ValueError(f"unknown recalibration method {method!r}; use 'platt' or 'isotonic'")
