"""Comparing two models: paired and unpaired, DeLong and bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation import (
    bootstrap_paired_test,
    bootstrap_unpaired_test,
    delong_paired_test,
    delong_unpaired_test,
)
from pipeline.evaluation.compare import _z_test

from .conftest import binormal
from .test_eval_delong import slow_delong


def test_paired_delong_equals_slow_reference():
    rng = np.random.default_rng(21)
    y, s1 = binormal(28, 35, 1.0, seed=21)
    s2 = 0.6 * s1 + rng.normal(0.2 * y, 0.8)
    res = delong_paired_test(y, s1, s2)
    auc, cov = slow_delong(y, np.vstack([s1, s2]))
    z = (auc[0] - auc[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert res["auc_difference"] == pytest.approx(auc[0] - auc[1], rel=1e-12)
    assert res["z"] == pytest.approx(z, rel=1e-10)


def test_paired_bootstrap_agrees_with_delong_on_asah(asah):
    """pROC's bootstrap roc.test is the same statistic; with 2000 replicates it is close to DeLong."""
    delong = delong_paired_test(asah["y"], asah["wfns"], asah["s100b"])
    boot = bootstrap_paired_test(asah["y"], asah["wfns"], asah["s100b"], n_bootstrap=2000, seed=1)
    assert boot["auc_difference"] == pytest.approx(delong["auc_difference"])
    assert boot["se"] == pytest.approx(delong["se"], rel=0.15)
    assert boot["p_value"] == pytest.approx(delong["p_value"], abs=0.02)
    assert boot["ci_low"] < delong["auc_difference"] < boot["ci_high"]
    again = bootstrap_paired_test(asah["y"], asah["wfns"], asah["s100b"], n_bootstrap=2000, seed=1)
    assert again == boot


def test_paired_test_uses_the_pairing():
    """Two strongly correlated scores: the paired SE is far below the unpaired one."""
    rng = np.random.default_rng(3)
    y, s1 = binormal(60, 60, 1.0, seed=3)
    s2 = s1 + rng.normal(0, 0.2, y.size)
    paired = delong_paired_test(y, s1, s2)
    unpaired = delong_unpaired_test(y, s1, y, s2)
    assert paired["se"] < 0.5 * unpaired["se"]


def test_unpaired_tests_on_independent_cohorts():
    y1, s1 = binormal(50, 50, 1.5, seed=4)  # AUC about 0.86
    y2, s2 = binormal(40, 70, 0.3, seed=5)  # AUC about 0.58
    delong = delong_unpaired_test(y1, s1, y2, s2)
    boot = bootstrap_unpaired_test(y1, s1, y2, s2, n_bootstrap=2000, seed=0)
    assert delong["p_value"] < 0.001
    assert boot["p_value"] < 0.001
    assert boot["se"] == pytest.approx(delong["se"], rel=0.2)
    assert delong["df"] > 100
    assert delong["n"] == [100, 110]


def test_paired_test_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        delong_paired_test([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.2], [0.3, 0.4])


def test_a_failed_variance_gives_no_interval_never_a_zero_width_one():
    """One positive (SE NaN) or an SE of 0 beside a difference: no Z, p or interval; identical
    curves (difference and SE 0) are the exact case, Z = 0 and p = 1 as pROC."""
    y, s1, s2 = [1, 0, 0, 0, 0, 0], [0.9, 0.1, 0.2, 0.3, 0.4, 0.5], [0.3, 0.1, 0.2, 0.35, 0.4, 0.5]
    res = delong_paired_test(y, s1, s2)
    assert res["auc_difference"] == pytest.approx(0.6)
    assert [res[k] for k in ("se", "z", "p_value", "ci_low", "ci_high")] == [None] * 5
    for se in (0.0, float("nan")):
        z, p, (low, high) = _z_test(0.6, se, 0.95)
        assert np.isnan([z, p, low, high]).all()
    assert _z_test(0.0, 0.0, 0.95) == (0.0, 1.0, (0.0, 0.0))
    assert np.isnan(_z_test(0.0, float("nan"), 0.95)[1])  # no variance: no test, whatever the difference
