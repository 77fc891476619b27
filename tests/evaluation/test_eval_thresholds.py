"""Operating points: rules, locking on validation data, Wilson and derived intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_curve

from pipeline.evaluation import (
    EvaluationOptions,
    ScoreColumns,
    choose_threshold,
    evaluate_predictions,
    threshold_metrics,
    wilson_interval,
)
from pipeline.evaluation.thresholds import parse_rule

from .conftest import binormal


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (41, 113), (1, 1)])
def test_wilson_matches_scipy_and_the_closed_form(k, n):
    low, high = wilson_interval(k, n)
    ref = stats.binomtest(k, n).proportion_ci(method="wilson")
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    z, p = stats.norm.ppf(0.975), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (low, high) == pytest.approx((max(0.0, centre - half), min(1.0, centre + half)), abs=1e-9)


def test_threshold_metrics_intervals_are_wilson():
    y, s = binormal(40, 60, 1.0, seed=1)
    m = threshold_metrics(y, s, 0.5)
    tp, fp, tn, fn = m["tp"], m["fp"], m["tn"], m["fn"]
    assert tp + fp + tn + fn == 100
    for name, k, n in [("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("ppv", tp, tp + fp),
                       ("npv", tn, tn + fn), ("accuracy", tp + tn, 100)]:  # fmt: skip
        assert m[name] == pytest.approx(k / n)
        assert (m[f"{name}_ci_low"], m[f"{name}_ci_high"]) == pytest.approx(wilson_interval(k, n))
    assert m["balanced_accuracy"] == pytest.approx((m["sensitivity"] + m["specificity"]) / 2)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    for name in ("balanced_accuracy", "f1"):
        assert m[f"{name}_ci_low"] < m[name] < m[f"{name}_ci_high"]


def test_undefined_ppv_is_none():
    m = threshold_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], 0.9)
    assert m["tp"] + m["fp"] == 0
    assert m["ppv"] is None
    assert m["ppv_ci_low"] is None


def test_rules_reach_their_targets():
    y, s = binormal(80, 120, 1.2, seed=2)
    for rule, key, target in [
        ("sensitivity=0.9", "sensitivity", 0.9),
        ("specificity=0.95", "specificity", 0.95),
    ]:
        m = threshold_metrics(y, s, choose_threshold(y, s, rule))
        assert m[key] >= target
        # the next cut-off in the direction of the other metric falls below the target
        assert m[key] < target + 0.05
    j = threshold_metrics(y, s, choose_threshold(y, s, "youden"))
    fpr, tpr, _ = roc_curve(y, s)
    assert j["sensitivity"] + j["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))


def test_fixed_rule_and_errors():
    assert choose_threshold([0, 1], [0.2, 0.7], "0.5") == 0.5
    assert parse_rule(" Sensitivity = 0.8 ") == ("sensitivity", 0.8)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        parse_rule("best")
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        parse_rule("specificity=1.5")


def test_threshold_is_locked_on_validation_data_only():
    """Validation and test data would each give a different Youden threshold; the test metrics must
    use the validation one, and changing the test data must not move it."""
    yv, sv = binormal(60, 60, 1.0, seed=3)
    yt, st = binormal(60, 60, 1.0, seed=4)
    st = st + 0.7  # a shifted test distribution moves the test-optimal threshold
    val = pd.DataFrame({"label": yv, "score": sv})
    test = pd.DataFrame({"label": yt, "score": st})
    locked = choose_threshold(yv, sv, "youden")
    assert choose_threshold(yt, st, "youden") != pytest.approx(locked, abs=0.05)
    m = evaluate_predictions(
        test, ScoreColumns("label", "score"), EvaluationOptions(calibration=False), threshold_df=val
    )
    assert m["threshold"] == locked
    assert m["threshold_source"] == "validation"
    assert m["threshold_validation_n"] == 120
    assert m["sensitivity"] == threshold_metrics(yt, st, locked)["sensitivity"]
    test2 = test.assign(score=test["score"] * 3)
    m2 = evaluate_predictions(
        test2, ScoreColumns("label", "score"), EvaluationOptions(calibration=False), threshold_df=val
    )
    assert m2["threshold"] == locked


def test_without_validation_data_the_threshold_is_flagged_optimistic():
    y, s = binormal(30, 30, 1.0, seed=5)
    m = evaluate_predictions(pd.DataFrame({"label": y, "score": s}), ScoreColumns("label", "score"))
    assert m["threshold_source"] == "same_data"
    assert any("optimistic" in w for w in m["warnings"])
    fixed = evaluate_predictions(
        pd.DataFrame({"label": y, "score": s}), ScoreColumns("label", "score"), EvaluationOptions(threshold_rule="0.3")
    )
    assert (fixed["threshold"], fixed["threshold_source"]) == (0.3, "fixed")
