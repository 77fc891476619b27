"""Calibration and decision curves on simulated data with a known truth."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from pipeline.evaluation import calibration_summary, fit_recalibration, net_benefit


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from the predicted probabilities themselves: perfectly calibrated."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (1.0 + np.exp(-rng.normal(-0.5, 1.5, n)))
    return (rng.uniform(size=n) < p).astype(int), p


def test_perfectly_calibrated_data_have_slope_one_and_intercept_zero():
    y, p = calibrated(20000, seed=1)
    cal = calibration_summary(y, p)
    assert cal["calibration_slope"] == pytest.approx(1.0, abs=0.05)
    assert cal["calibration_slope_ci_low"] < 1.0 < cal["calibration_slope_ci_high"]
    assert cal["calibration_intercept"] == pytest.approx(0.0, abs=0.05)
    assert cal["ece"] < 0.02
    assert cal["brier"] == pytest.approx(brier_score_loss(y, p))


def test_overconfident_predictions_have_slope_below_one():
    y, p = calibrated(20000, seed=2)
    logit = np.log(p / (1 - p))
    extreme = 1.0 / (1.0 + np.exp(-2.0 * logit))  # twice as extreme: true slope 0.5
    cal = calibration_summary(y, extreme)
    assert cal["calibration_slope"] == pytest.approx(0.5, abs=0.03)
    shifted = 1.0 / (1.0 + np.exp(-(logit + 1.0)))  # overestimates risk: intercept about -1
    assert calibration_summary(y, shifted)["calibration_intercept"] == pytest.approx(-1.0, abs=0.06)


def test_reliability_bins_match_sklearn_calibration_curve():
    y, p = calibrated(3000, seed=3)
    cal = calibration_summary(y, p, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    rel = cal["reliability"]
    np.testing.assert_allclose(rel["observed_rate"], prob_true, rtol=1e-12)
    np.testing.assert_allclose(rel["mean_predicted"], prob_pred, rtol=1e-12)
    n = np.array(rel["n"])
    gap = np.abs(np.array(rel["observed_rate"]) - np.array(rel["mean_predicted"]))
    assert cal["ece"] == pytest.approx(float(np.sum(n * gap) / n.sum()))


def test_scores_outside_unit_interval_are_rejected():
    with pytest.raises(ValueError, match="probabilities"):
        calibration_summary([0, 1], [0.2, 3.0])


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_recalibration_fitted_on_validation_improves_test_calibration(method):
    yv, pv = calibrated(5000, seed=4)
    yt, pt = calibrated(5000, seed=5)

    def distort(p):
        return p**3  # badly miscalibrated, same ranking

    recal = fit_recalibration(yv, distort(pv), method)
    before = calibration_summary(yt, distort(pt))
    after = calibration_summary(yt, recal(distort(pt)))
    assert after["ece"] < 0.03 < before["ece"]
    assert after["brier"] < before["brier"]


def test_net_benefit_treat_all_formula_and_model_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.1, 0.05, 0.4, 0.2])
    dc = net_benefit(y, p, thresholds=[0.1, 0.25, 0.5])
    prevalence = 0.3
    for i, t in enumerate([0.1, 0.25, 0.5]):
        assert dc["net_benefit_treat_all"][i] == pytest.approx(prevalence - (1 - prevalence) * t / (1 - t))
        treated = p >= t
        tp, fp = np.sum(treated & (y == 1)), np.sum(treated & (y == 0))
        assert dc["net_benefit_model"][i] == pytest.approx(tp / 10 - fp / 10 * t / (1 - t))
        assert dc["net_benefit_treat_none"][i] == 0.0
    # at t = 0.5: treated 0.9, 0.6 (positives) and 0.7 (negative): NB = 2/10 - 1/10 = 0.1
    assert dc["net_benefit_model"][2] == pytest.approx(0.1)


def test_perfect_model_net_benefit_is_the_prevalence():
    y = np.r_[np.ones(20, dtype=int), np.zeros(80, dtype=int)]
    p = np.r_[np.full(20, 0.999), np.full(80, 0.001)]
    dc = net_benefit(y, p)
    np.testing.assert_allclose(dc["net_benefit_model"], 0.2)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        net_benefit(y, p, thresholds=[0.0, 0.5])


def test_separating_predictions_have_no_calibration_slope():
    cal = calibration_summary([0, 1, 0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8, 0.3, 0.7])
    assert cal["calibration_slope"] is None
    assert "separate" in cal["calibration_slope_note"]
    assert cal["calibration_intercept"] == pytest.approx(0.0, abs=1e-6)  # mean prediction = event rate
