"""Vectorised bootstrap: weighted AUC, resampling design, seeding, jackknife and BCa."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from pipeline.evaluation import Interval, binary_summary
from pipeline.evaluation.bootstrap import (
    SortedScore,
    bca_interval,
    bootstrap_aucs,
    jackknife_aucs,
    replicate_weights,
    weighted_auc,
)
from pipeline.evaluation.roc import delong_placements

from .conftest import binormal


def test_weighted_auc_equals_sklearn_sample_weight_with_ties():
    rng = np.random.default_rng(0)
    y, s = binormal(40, 60, 0.8, seed=3)
    s = np.round(s, 1)
    weights = rng.integers(0, 4, size=(5, y.size)).astype(float)
    got = weighted_auc(SortedScore.build(y, s), weights)
    want = [roc_auc_score(y, s, sample_weight=w) for w in weights]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_stratified_weights_keep_class_sizes():
    y = np.r_[np.ones(7, dtype=int), np.zeros(13, dtype=int)]
    w = next(replicate_weights(y, clusters=None, n_bootstrap=50, rng=np.random.default_rng(1)))
    assert w.shape == (50, 20)
    np.testing.assert_array_equal(w[:, y == 1].sum(axis=1), 7)
    np.testing.assert_array_equal(w[:, y == 0].sum(axis=1), 13)


def test_cluster_weights_move_whole_patients():
    clusters = np.repeat(np.arange(10), 3)
    y = (clusters % 2).astype(int)
    w = next(replicate_weights(y, clusters=clusters, n_bootstrap=40, rng=np.random.default_rng(2)))
    per_cluster = w.reshape(40, 10, 3)
    assert (per_cluster == per_cluster[:, :, :1]).all()  # every image of a patient drawn together
    np.testing.assert_array_equal(w[:, y == 1].sum(axis=1), 15)  # 5 positive patients x 3 images


def test_bootstrap_is_reproducible_with_a_seed_and_varies_without():
    y, s = binormal(30, 30, 1.0, seed=5)
    a = binary_summary(y, s, interval=Interval(ci_method="bootstrap", n_bootstrap=500, seed=7))
    b = binary_summary(y, s, interval=Interval(ci_method="bootstrap", n_bootstrap=500, seed=7))
    c = binary_summary(y, s, interval=Interval(ci_method="bootstrap", n_bootstrap=500, seed=8))
    assert (a["auc_ci_low"], a["auc_ci_high"]) == (b["auc_ci_low"], b["auc_ci_high"])
    assert (a["auc_ci_low"], a["auc_ci_high"]) != (c["auc_ci_low"], c["auc_ci_high"])
    assert a["ci_method"] == "bootstrap_bca"
    assert a["n_bootstrap"] == 500


def test_chunked_replicates_have_the_same_distribution(monkeypatch):
    """The (B, n) weight matrix is built in chunks for large n; chunks draw a different random stream
    (so the replicates differ) but must give the same bootstrap distribution."""
    import pipeline.evaluation.bootstrap as boot

    y, s = binormal(25, 35, 1.0, seed=6)
    whole = bootstrap_aucs(y, s[None, :], n_bootstrap=300, seed=3)
    monkeypatch.setattr(boot, "_MAX_CELLS", 60 * 7)  # 7 replicates per chunk
    chunked = bootstrap_aucs(y, s[None, :], n_bootstrap=300, seed=3)
    assert chunked.shape == (300, 1)
    assert np.isfinite(chunked).all()
    assert abs(np.std(chunked) - np.std(whole)) < 0.2 * np.std(whole)


def test_jackknife_closed_form_equals_refitting():
    y, s = binormal(15, 20, 0.7, seed=8)
    s = np.round(s, 1)
    auc, v10, v01 = delong_placements(y, s[None, :])
    got = jackknife_aucs(y, s, v10[0], v01[0], float(auc[0]), clusters=None)
    order = np.r_[np.flatnonzero(y == 1), np.flatnonzero(y == 0)]
    want = [roc_auc_score(np.delete(y, i), np.delete(s, i)) for i in order]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_cluster_jackknife_equals_refitting_with_mixed_clusters():
    rng = np.random.default_rng(9)
    clusters = np.repeat(np.arange(12), 3)
    y = rng.integers(0, 2, clusters.size)
    s = np.round(rng.normal(y, 1.0), 1)
    auc, v10, v01 = delong_placements(y, s[None, :])
    got = jackknife_aucs(y, s, v10[0], v01[0], float(auc[0]), clusters=clusters)
    want = [roc_auc_score(y[clusters != c], s[clusters != c]) for c in range(12) if len(set(y[clusters != c])) == 2]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_bca_matches_scipy_for_the_mean_of_a_skewed_sample():
    """Same BCa formulas as scipy.stats.bootstrap (Efron 1987); replicates differ, so compare loosely."""
    rng = np.random.default_rng(10)
    x = rng.exponential(1.0, 40)
    idx = rng.integers(0, 40, size=(20000, 40))
    reps = x[idx].mean(axis=1)
    jack = (x.sum() - x) / 39
    got = bca_interval(reps, float(x.mean()), jack, 0.95)
    ref = stats.bootstrap((x,), np.mean, method="BCa", n_resamples=20000, random_state=11).confidence_interval
    sd = x.std(ddof=1) / np.sqrt(40)
    assert got[0] == pytest.approx(ref.low, abs=0.05 * sd)
    assert got[1] == pytest.approx(ref.high, abs=0.05 * sd)


def test_cluster_bootstrap_interval_is_wider_than_naive_for_duplicated_images():
    y, s = binormal(25, 25, 1.0, seed=12)
    rep = 4
    yy, ss, g = np.repeat(y, rep), np.repeat(s, rep), np.repeat(np.arange(50), rep)
    patient = binary_summary(y, s, interval=Interval(ci_method="bootstrap_percentile", n_bootstrap=1000))
    cluster = binary_summary(yy, ss, groups=g, interval=Interval(ci_method="bootstrap_percentile", n_bootstrap=1000))
    naive = binary_summary(yy, ss, interval=Interval(ci_method="bootstrap_percentile", n_bootstrap=1000))
    width = {k: r["auc_ci_high"] - r["auc_ci_low"] for k, r in [("p", patient), ("c", cluster), ("n", naive)]}
    assert cluster["ci_method"] == "cluster_bootstrap_percentile"
    assert width["c"] == pytest.approx(width["p"], rel=0.15)
    assert width["n"] < 0.65 * width["c"]
