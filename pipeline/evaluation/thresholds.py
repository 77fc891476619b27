"""Operating points: choose a threshold on validation data, then report metrics at it with CIs.

Convention everywhere: a case is called positive when ``score >= threshold``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import confusion_matrix, roc_curve

from pipeline.evaluation._inputs import binary_arrays, py_float

RULES_HELP = "'youden', 'sensitivity=0.90', 'specificity=0.95' or a fixed threshold such as '0.5'"


def parse_rule(rule: str | float) -> tuple[str, float | None]:
    """``rule`` -> (kind, value), e.g. ('youden', None), ('sensitivity', 0.9), ('fixed', 0.5).

    ValueError naming the accepted forms for anything else.
    """
    if isinstance(rule, int | float) and not isinstance(rule, bool):
        return "fixed", float(rule)
    text = str(rule).strip().lower()
    if text == "youden":
        return "youden", None
    if "=" in text:
        kind, _, value = (part.strip() for part in text.partition("="))
        if kind in ("sensitivity", "specificity"):
            try:
                target = float(value)
            except ValueError:
                target = float("nan")
            if not 0.0 < target <= 1.0:
                raise ValueError(f"threshold rule {rule!r}: the target {kind} must be in (0, 1], got {value!r}")
            return kind, target
    try:
        fixed = float(text)
    except ValueError:
        raise ValueError(f"unknown threshold rule {rule!r}; use {RULES_HELP}") from None
    if not math.isfinite(fixed):
        raise ValueError(f"threshold rule {rule!r}: a fixed threshold must be finite")
    return "fixed", fixed


def choose_threshold(y_true: Any, y_score: Any, rule: str | float) -> float:
    """Threshold chosen on (validation) data by ``rule``; see :func:`parse_rule` for the forms.

    - youden: maximises sensitivity + specificity - 1; ties go to the higher threshold.
    - sensitivity=x: the highest-specificity cut-off whose sensitivity is at least x.
    - specificity=x: the highest-sensitivity cut-off whose specificity is at least x.
    - a number: returned as is (fixed threshold, e.g. 0.5 for probabilities).

    The returned value lies halfway between the two observed scores the cut-off separates (as
    pROC), so that applying it to new data does not favour either neighbour.
    """
    kind, value = parse_rule(rule)
    if kind == "fixed":
        assert value is not None
        return value
    y, s = binary_arrays(y_true, y_score)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    if kind == "youden":
        idx = int(np.argmax(tpr - fpr))
    elif kind == "sensitivity":
        assert value is not None
        idx = int(np.flatnonzero(tpr >= value - 1e-12)[0])
    else:
        assert value is not None
        idx = int(np.flatnonzero(1.0 - fpr >= value - 1e-12)[-1])
    return _midpoint_cutoff(np.unique(s), float(thr[idx]))


def _midpoint_cutoff(distinct: np.ndarray, observed: float) -> float:
    """Midpoint between ``observed`` (a score value, or +inf) and the next lower distinct score."""
    if not math.isfinite(observed):  # nothing called positive: just above the highest score
        top = float(distinct[-1])
        return top + max(abs(top) * 1e-9, 1e-12)
    pos = int(np.searchsorted(distinct, observed))
    if pos == 0:  # everything called positive
        return float(distinct[0])
    return float((distinct[pos - 1] + distinct[pos]) / 2.0)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval for k successes in n trials (scipy's ``binomtest``); (None, None) if n = 0."""
    if n <= 0:
        return None, None
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def _proportion(k: int, n: int, level: float) -> tuple[float | None, float | None, float | None]:
    low, high = wilson_interval(k, n, level)
    return (k / n if n else None), low, high


def _balanced_accuracy(sens: tuple[Any, ...], spec: tuple[Any, ...]) -> tuple[float | None, ...]:
    """Mean of sensitivity and specificity with a MOVER interval built from their Wilson limits.

    MOVER (Newcombe 1998; Zou and Donner 2008) combines the two independent Wilson intervals
    into an interval for their sum, so balanced accuracy keeps Wilson's small-sample behaviour.
    """
    if None in sens or None in spec:
        return None, None, None
    (p1, l1, u1), (p2, l2, u2) = sens, spec
    est = p1 + p2
    low = est - math.sqrt((p1 - l1) ** 2 + (p2 - l2) ** 2)
    high = est + math.sqrt((u1 - p1) ** 2 + (u2 - p2) ** 2)
    return est / 2.0, low / 2.0, high / 2.0


def _f1(tp: int, fp: int, fn: int, level: float) -> tuple[float | None, ...]:
    """F1 with an interval from the Wilson interval of the Jaccard index J = tp / (tp + fp + fn).

    F1 = 2J / (1 + J) is increasing in J, and given tp + fp + fn, tp is binomial, so the Wilson
    limits of J map to limits of F1.
    """
    j, low, high = _proportion(tp, tp + fp + fn, level)
    if j is None or low is None or high is None:
        return None, None, None
    return 2 * j / (1 + j), 2 * low / (1 + low), 2 * high / (1 + high)


def threshold_metrics(y_true: Any, y_score: Any, threshold: float, *, level: float = 0.95) -> dict[str, Any]:
    """Confusion matrix and metrics at ``threshold`` (positive when score >= threshold), each with a CI.

    Keys: ``threshold``, ``tp fp tn fn``, and for sensitivity, specificity, ppv, npv, accuracy,
    balanced_accuracy, f1: the value, ``<name>_ci_low`` and ``<name>_ci_high`` (None when undefined,
    e.g. PPV with no positive calls). Intervals: Wilson for the proportions, MOVER-Wilson for
    balanced accuracy, Wilson on the Jaccard index for F1.
    """
    y, s = binary_arrays(y_true, y_score, require_both=False)
    pred = (s >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    values: dict[str, tuple[Any, ...]] = {
        "sensitivity": _proportion(tp, tp + fn, level),
        "specificity": _proportion(tn, tn + fp, level),
        "ppv": _proportion(tp, tp + fp, level),
        "npv": _proportion(tn, tn + fn, level),
        "accuracy": _proportion(tp + tn, len(y), level),
    }
    values["balanced_accuracy"] = _balanced_accuracy(values["sensitivity"], values["specificity"])
    values["f1"] = _f1(tp, fp, fn, level)
    out: dict[str, Any] = {"threshold": py_float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for name, (est, low, high) in values.items():
        out[name] = py_float(est)
        out[f"{name}_ci_low"] = py_float(low)
        out[f"{name}_ci_high"] = py_float(high)
    return out
