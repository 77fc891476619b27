"""DeLong (fast Sun-Xu algorithm) against slow textbook implementations, and input checking."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats
from sklearn.metrics import auc as trapezoid_area

from pipeline.evaluation import SingleClassError, delong_ci, roc_table
from pipeline.evaluation.roc import clustered_covariance, delong_covariance

from .conftest import binormal


def psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def slow_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong, DeLong and Clarke-Pearson (1988) by explicit O(m n) loops over all pairs."""
    v10_all, v01_all, aucs = [], [], []
    for s in scores:
        pos, neg = s[y == 1], s[y == 0]
        v10 = np.array([np.mean([psi(x, z) for z in neg]) for x in pos])
        v01 = np.array([np.mean([psi(x, z) for x in pos]) for z in neg])
        v10_all.append(v10)
        v01_all.append(v01)
        aucs.append(v10.mean())
    m, n = len(v10_all[0]), len(v01_all[0])
    cov = np.cov(np.array(v10_all)) / m + np.cov(np.array(v01_all)) / n
    return np.array(aucs), np.atleast_2d(cov)


def slow_obuchowski(y: np.ndarray, scores: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Obuchowski (1997) clustered AUCs (k,) and covariance (k, k) of k predictors ``scores`` (k, n),
    written with loops from the paper's formulas (as her funcs_clusteredROC.R computes them): S10
    scaled by I10/(I10-1) with I10 the clusters holding a positive, S01 by I01/(I01-1), S11 by I/(I-1)."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m_total, n_total = len(pos), len(neg)
    ids = np.unique(clusters)
    big_i = len(ids)
    i10, i01 = len(np.unique(clusters[pos])), len(np.unique(clusters[neg]))
    m_i = {c: int(np.sum(clusters[pos] == c)) for c in ids}
    n_i = {c: int(np.sum(clusters[neg] == c)) for c in ids}
    aucs, x_comps, y_comps = [], [], []  # per predictor: the centred cluster sums V10(X_i.) - m_i AUC, ...
    for s in scores:
        auc = np.mean([psi(s[i], s[j]) for i in pos for j in neg])
        v10 = {c: sum(np.mean([psi(s[i], s[j]) for j in neg]) for i in pos if clusters[i] == c) for c in ids}
        v01 = {c: sum(np.mean([psi(s[i], s[j]) for i in pos]) for j in neg if clusters[j] == c) for c in ids}
        aucs.append(auc)
        x_comps.append({c: v10[c] - m_i[c] * auc for c in ids})
        y_comps.append({c: v01[c] - n_i[c] * auc for c in ids})
    k = len(scores)
    cov = np.empty((k, k))
    for a in range(k):
        for b in range(k):
            s10 = i10 / ((i10 - 1) * m_total) * sum(x_comps[a][c] * x_comps[b][c] for c in ids)
            s01 = i01 / ((i01 - 1) * n_total) * sum(y_comps[a][c] * y_comps[b][c] for c in ids)
            s11_ab = big_i / (big_i - 1) * sum(x_comps[a][c] * y_comps[b][c] for c in ids)
            s11_ba = big_i / (big_i - 1) * sum(x_comps[b][c] * y_comps[a][c] for c in ids)
            cov[a, b] = s10 / m_total + s01 / n_total + (s11_ab + s11_ba) / (m_total * n_total)
    return np.array(aucs), cov


def test_fast_delong_equals_slow_reference_with_ties():
    rng = np.random.default_rng(11)
    y = np.r_[np.ones(23, dtype=int), np.zeros(31, dtype=int)]
    s1 = np.round(rng.normal(0.8 * y, 1.0), 1)  # rounding makes ties, within and across classes
    s2 = np.round(0.5 * s1 + rng.normal(0.3 * y, 1.0), 1)
    auc, cov = delong_covariance(y, np.vstack([s1, s2]))
    ref_auc, ref_cov = slow_delong(y, np.vstack([s1, s2]))
    np.testing.assert_allclose(auc, ref_auc, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10)


def test_clustered_delong_equals_obuchowski_formulas():
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(15), rng.integers(1, 4, 15))
    y = rng.integers(0, 2, clusters.size)  # mixed clusters on purpose
    y[:2] = [0, 1]
    s = np.round(rng.normal(y + 0.3 * clusters / 15, 1.0), 1)
    s2 = np.round(0.6 * s + rng.normal(0.5 * y, 1.0), 1)  # a second predictor: the paired covariance
    y[clusters == 3] = 1  # a cluster of positives only: I10 < I, I01 < I
    auc, cov = clustered_covariance(y, np.vstack([s, s2]), clusters)
    ref_auc, ref_cov = slow_obuchowski(y, np.vstack([s, s2]), clusters)
    n_clusters = clusters.max() + 1
    assert len(np.unique(clusters[y == 1])) < n_clusters
    assert len(np.unique(clusters[y == 0])) < n_clusters
    np.testing.assert_allclose(auc, ref_auc, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10)


def test_clustered_delong_of_one_image_per_cluster_is_delong():
    """Singleton clusters: Obuchowski's covariance is DeLong's exactly (I10 = m, I01 = n; no S11)."""
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(10, dtype=int), np.zeros(90, dtype=int)]  # few positives: G/(G-1) would be off by 8%
    scores = np.vstack([y + rng.normal(size=100), 0.7 * y + rng.normal(size=100)]).round(1)
    auc, cov = delong_covariance(y, scores)
    auc_c, cov_c = clustered_covariance(y, scores, rng.permutation(100))
    np.testing.assert_allclose(auc_c, auc, rtol=1e-12)
    np.testing.assert_allclose(cov_c, cov, rtol=1e-12, atol=1e-15)
    single = delong_ci(y, scores[0], transform="none")
    clustered = delong_ci(y, scores[0], groups=np.arange(100), transform="none")
    assert (clustered.se, clustered.low, clustered.high) == pytest.approx(
        (single.se, single.low, single.high), rel=1e-12
    )


def test_clustered_delong_needs_two_clusters_of_each_class():
    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.1, 0.5, 0.3])
    auc, cov = clustered_covariance(y, s[None, :], np.array([0, 0, 1, 2, 2]))  # both positives in one patient
    assert auc[0] == 1.0
    assert np.isnan(cov).all()


def test_clustered_delong_counts_duplicated_images_once():
    """Five identical images per patient carry no more information than one: the same SE."""
    y, s = binormal(30, 40, 1.0, seed=2)
    single = delong_ci(y, s, transform="none")
    rep = 5
    clustered = delong_ci(np.repeat(y, rep), np.repeat(s, rep), groups=np.repeat(np.arange(70), rep))
    naive = delong_ci(np.repeat(y, rep), np.repeat(s, rep))
    assert clustered.auc == pytest.approx(single.auc)
    assert clustered.se == pytest.approx(single.se, rel=1e-12)
    assert naive.se < 0.5 * clustered.se  # treating images as independent is far too confident


def test_logit_interval_is_inside_unit_interval_and_matches_formula():
    y, s = binormal(12, 12, 2.5, seed=1)
    ci = delong_ci(y, s)
    wald = delong_ci(y, s, transform="none")
    z = stats.norm.ppf(0.975)
    half = z * ci.se / (ci.auc * (1 - ci.auc))
    assert ci.low == pytest.approx(special.expit(special.logit(ci.auc) - half))
    assert ci.high == pytest.approx(special.expit(special.logit(ci.auc) + half))
    assert 0 < ci.low < ci.auc < ci.high < 1
    assert ci.se == wald.se


def test_single_observation_in_a_class_gives_no_interval():
    ci = delong_ci([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3])
    assert ci.auc == 1.0
    assert np.isnan(ci.se)
    assert np.isnan(ci.low)


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "only 0 and 1"),
        ([], [], "empty"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
        ([0, 1], ["a", "b"], "numeric"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(y, s, message):
    with pytest.raises(ValueError, match=message):
        delong_ci(y, s)


def test_single_class_raises_single_class_error():
    with pytest.raises(SingleClassError, match="only one class"):
        delong_ci([1, 1, 1], [0.1, 0.2, 0.3])


def test_roc_table_columns_and_ends():
    y, s = binormal(20, 30, 1.0, seed=4)
    roc = roc_table(y, s)
    assert list(roc.columns) == ["threshold", "fpr", "tpr"]
    assert (roc.iloc[0]["fpr"], roc.iloc[0]["tpr"]) == (0.0, 0.0)
    assert (roc.iloc[-1]["fpr"], roc.iloc[-1]["tpr"]) == (1.0, 1.0)
    assert trapezoid_area(roc["fpr"], roc["tpr"]) == pytest.approx(delong_ci(y, s).auc)


def test_pr_table_by_hand():
    """Scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1."""
    from pipeline.evaluation import pr_table

    table, ap, prevalence = pr_table([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert list(table.columns) == ["threshold", "recall", "precision"]
    at = table.dropna().set_index("threshold")
    assert at.loc[0.7, "precision"] == pytest.approx(2 / 3)
    assert at.loc[0.7, "recall"] == 1.0
    assert at.loc[0.8, "precision"] == pytest.approx(1 / 2)
    assert at.loc[0.9, "precision"] == 1.0
    assert (table.iloc[-1]["recall"], table.iloc[-1]["precision"]) == (0.0, 1.0)
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)  # sum of recall steps times precision
    assert prevalence == 0.5


def test_zero_width_intervals_are_flagged():
    from pipeline.evaluation import binary_summary

    tied = binary_summary([0, 1] * 10, [0.5] * 20)
    assert (tied["auc"], tied["auc_ci_low"], tied["auc_ci_high"]) == (0.5, 0.5, 0.5)
    assert any("no spread" in w for w in tied["warnings"])
    separated = binary_summary([0] * 10 + [1] * 10, list(range(20)))
    assert any("perfectly separated" in w for w in separated["warnings"])
