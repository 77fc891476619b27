"""Reference values from published sources, reproduced to their printed precision.

pROC (Robin et al. 2011, BMC Bioinformatics 12:77; https://github.com/xrobin/pROC) on its aSAH data,
values from pROC's own test suite (tests/testthat, files named in each test). pROC's r.wfns,
r.s100b, r.ndka are roc(aSAH$outcome, aSAH$<marker>) with Poor as the case level.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.evaluation import (
    choose_threshold,
    delong_ci,
    delong_paired_test,
    delong_unpaired_test,
    threshold_metrics,
)
from pipeline.evaluation.roc import delong_covariance

REL = 1e-10


@pytest.mark.parametrize(
    ("marker", "auc", "var"),
    [
        # test-auc.R ("full auc works") and test-var.R ("var with delong works")
        ("wfns", 0.823678861788618, 0.00146991470882363),
        ("ndka", 0.611957994579946, 0.0031908105493913),
        ("s100b", None, 0.00266868245717244),
    ],
)
def test_auc_and_delong_variance_match_proc(asah, marker, auc, var):
    ci = delong_ci(asah["y"], asah[marker], transform="none")
    if auc is not None:
        assert ci.auc == pytest.approx(auc, rel=REL)
    assert ci.se**2 == pytest.approx(var, rel=REL)
    assert ci.auc == pytest.approx(roc_auc_score(asah["y"], asah[marker]), rel=1e-12)


def test_s100b_auc_and_ci_match_proc_documentation(asah):
    """pROC's documented example: roc(aSAH$outcome, aSAH$s100b) AUC 0.7314, ci.auc 0.6301-0.8326."""
    ci = delong_ci(asah["y"], asah["s100b"], transform="none")
    assert round(ci.auc, 4) == 0.7314
    assert (round(ci.low, 4), round(ci.high, 4)) == (0.6301, 0.8326)


def test_ci_auc_delong_matches_proc(asah):
    """test-ci.auc.R: ci.auc(r.ndka) = 0.501244999271703, 0.611957994579946, 0.722670989888189."""
    ci = delong_ci(asah["y"], asah["ndka"], transform="none")
    assert [ci.low, ci.auc, ci.high] == pytest.approx(
        [0.501244999271703, 0.611957994579946, 0.722670989888189], rel=REL
    )
    assert ci.method == "delong_wald"


def test_delong_covariances_match_proc(asah):
    """test-cov.R: cov(r.wfns, r.ndka), cov(r.ndka, r.s100b), cov(r.s100b, r.wfns)."""
    scores = asah[["wfns", "ndka", "s100b"]].to_numpy(dtype=float).T
    _, cov = delong_covariance(asah["y"].to_numpy(), scores)
    assert cov[0, 1] == pytest.approx(-0.000532967856762438, rel=REL)
    assert cov[1, 2] == pytest.approx(-0.000756164938056579, rel=REL)
    assert cov[2, 0] == pytest.approx(0.00119615567376754, rel=REL)


@pytest.mark.parametrize(
    ("pair", "z", "p", "ci"),
    [
        # test-roc.test.R ("roc.test statistic and p are as expected with defaults")
        (("wfns", "s100b"), 2.20898359144091, 0.0271757822291882, (0.0104061769564846, 0.174214419249478)),
        (("wfns", "ndka"), 2.79777591868904, 0.00514557970691098, (0.0634011709339876, 0.3600405634833566)),
        (("ndka", "s100b"), -1.39077002573558, 0.164295175223054, (-0.2876917446341914, 0.0488706064228094)),
    ],
)
def test_paired_delong_test_matches_proc(asah, pair, z, p, ci):
    (a, b), (lo, hi) = pair, ci
    res = delong_paired_test(asah["y"], asah[a], asah[b])
    assert res["z"] == pytest.approx(z, rel=REL)
    assert res["p_value"] == pytest.approx(p, rel=REL)
    assert [res["ci_low"], res["ci_high"]] == pytest.approx([lo, hi], rel=REL)
    reverse = delong_paired_test(asah["y"], asah[b], asah[a])
    assert reverse["z"] == pytest.approx(-z, rel=REL)
    assert reverse["p_value"] == pytest.approx(p, rel=REL)


def test_paired_delong_identical_curves(asah):
    """test-roc.test.R: roc.test(r.wfns, r.wfns) gives Z = 0 and p = 1."""
    res = delong_paired_test(asah["y"], asah["wfns"], asah["wfns"])
    assert res["z"] == 0.0
    assert res["p_value"] == 1.0


@pytest.mark.parametrize(
    ("a", "b", "d", "p"),
    [
        # test-roc.test.R ("unpaired roc.test statistic and p are as expected")
        ("wfns", "s100b", 1.43490640926908, 0.152825378808796),
        ("wfns", "ndka", 3.10125096778969, 0.00220950791756457),
        ("ndka", "s100b", -1.55995743389685, 0.120192832430845),
    ],
)
def test_unpaired_delong_test_matches_proc(asah, a, b, d, p):
    res = delong_unpaired_test(asah["y"], asah[a], asah["y"], asah[b])
    assert res["z"] == pytest.approx(d, rel=REL)
    assert res["p_value"] == pytest.approx(p, rel=REL)


def test_youden_threshold_matches_proc_coords(asah):
    """test-coords.R: coords(r.s100b, "best") is threshold 0.205 with tp 26, fp 14, tn 58, fn 15."""
    t = choose_threshold(asah["y"], asah["s100b"], "youden")
    assert t == pytest.approx(0.205)
    m = threshold_metrics(asah["y"], asah["s100b"], t)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (26, 14, 58, 15)
    assert m["sensitivity"] == pytest.approx(26 / 41)
    assert m["specificity"] == pytest.approx(58 / 72)


def test_hanley_mcneil_1982_ct_ratings():
    """Hanley & McNeil (1982) Radiology 143:29-36, Table 1: CT ratings of 58 normal and 51 abnormal
    patients on a 5-point scale; published area 0.893 (ties counted half, the Wilcoxon statistic)."""
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(58, dtype=int), np.ones(51, dtype=int)]
    ci = delong_ci(y, np.r_[normal, abnormal])
    assert round(ci.auc, 3) == 0.893
    assert 0.02 < ci.se < 0.04  # their exponential approximation gives 0.032; DeLong's estimator 0.031
