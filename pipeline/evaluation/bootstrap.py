"""Vectorised stratified and cluster (patient) bootstrap of the AUC.

Hand-written because ``scipy.stats.bootstrap`` resamples rows, not clusters, cannot stratify
by class, and would recompute a sort per replicate. Here a replicate is a (B, n) matrix of
resampling counts (weights); each score is sorted once, and the AUC of every replicate is a
weighted Mann-Whitney sum over the distinct score values (ties count half), O(B n) in total.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import stats

from pipeline.evaluation._inputs import FloatArray, IntArray

# Replicate chunk size is chosen so a (chunk, n) weight matrix stays around 160 MB of float64.
_MAX_CELLS = 20_000_000


@dataclass(frozen=True)
class SortedScore:
    """One score vector sorted once: ``order`` (n,), run starts of equal values, labels in that order."""

    order: IntArray
    starts: IntArray
    y_sorted: IntArray

    @classmethod
    def build(cls, y: IntArray, s: FloatArray) -> SortedScore:
        order = np.argsort(s, kind="stable")
        s_sorted = s[order]
        starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
        return cls(order, starts, y[order])


def weighted_auc(sorted_score: SortedScore, weights: FloatArray) -> FloatArray:
    """AUC for each row of ``weights`` (B, n): observation i counted ``weights[b, i]`` times.

    Returns (B,); NaN where a replicate holds no positive or no negative weight.
    """
    w = weights[:, sorted_score.order]
    wp = w * sorted_score.y_sorted
    wn = w - wp
    if sorted_score.starts.size < w.shape[1]:  # ties: pool the weight of equal scores
        wp = np.add.reduceat(wp, sorted_score.starts, axis=1)
        wn = np.add.reduceat(wn, sorted_score.starts, axis=1)
    below = np.cumsum(wn, axis=1)
    below -= 0.5 * wn  # negatives strictly below, plus half of those tied
    num = np.einsum("ij,ij->i", wp, below)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _counts(rng: np.random.Generator, n_units: int, size: int) -> FloatArray:
    """(size, n_units) counts of ``n_units`` draws with replacement per row (a multinomial, but
    via integers + bincount, about 10x faster than ``Generator.multinomial`` for many rows)."""
    idx = rng.integers(0, n_units, size=(size, n_units))
    flat = (np.arange(size)[:, None] * n_units + idx).ravel()
    return np.bincount(flat, minlength=size * n_units).reshape(size, n_units).astype(np.float64)


def _strata(y: IntArray, clusters: IntArray | None) -> tuple[list[IntArray], IntArray | None]:
    """Resampling units per stratum: observations by class, or clusters by 'contains a positive'."""
    if clusters is None:
        return [np.flatnonzero(y == 0), np.flatnonzero(y == 1)], None
    n_clusters = int(clusters.max()) + 1
    has_pos = np.bincount(clusters, weights=y, minlength=n_clusters) > 0
    return [np.flatnonzero(~has_pos), np.flatnonzero(has_pos)], clusters


def replicate_weights(
    y: IntArray,
    *,
    clusters: IntArray | None,
    n_bootstrap: int,
    rng: np.random.Generator,
    stratified: bool = True,
) -> Iterator[FloatArray]:
    """Yield (b, n) count matrices, b <= chunk size, n_bootstrap rows in all.

    Stratified: each class (or each kind of cluster) is resampled to its own size, so every
    replicate keeps the observed prevalence, as pROC's ``boot.stratified = TRUE``.
    With ``clusters`` (codes 0..G-1), whole clusters are drawn and all their rows come along.
    """
    n = y.shape[0]
    strata, cl = _strata(y, clusters)
    if not stratified:
        units = np.arange(n) if cl is None else np.arange(int(cl.max()) + 1)
        strata = [units]
    n_units = n if cl is None else int(cl.max()) + 1
    chunk = max(1, min(n_bootstrap, _MAX_CELLS // max(n, n_units)))
    done = 0
    while done < n_bootstrap:
        b = min(chunk, n_bootstrap - done)
        counts = np.zeros((b, n_units))
        for units in strata:
            if units.size:
                counts[:, units] = _counts(rng, units.size, b)
        yield counts if cl is None else counts[:, cl]
        done += b


def bootstrap_aucs(
    y: IntArray,
    scores: FloatArray,
    *,
    clusters: IntArray | None = None,
    n_bootstrap: int = 2000,
    seed: int | np.random.SeedSequence = 0,
    stratified: bool = True,
) -> FloatArray:
    """Bootstrap AUC replicates, shape (B, k), for k score rows of ``scores`` (k, n) resampled together.

    Resampling the same rows for every predictor makes the replicates paired, as needed to compare
    two models on the same patients. Rows may contain NaN (a cluster replicate without one class).
    """
    rng = np.random.default_rng(seed)
    sorted_scores = [SortedScore.build(y, s) for s in scores]
    out = [
        np.column_stack([weighted_auc(ss, w) for ss in sorted_scores])
        for w in replicate_weights(y, clusters=clusters, n_bootstrap=n_bootstrap, rng=rng, stratified=stratified)
    ]
    return np.vstack(out)


def jackknife_aucs(
    y: IntArray, s: FloatArray, v10: FloatArray, v01: FloatArray, auc: float, *, clusters: IntArray | None
) -> FloatArray:
    """Leave-one-unit-out AUCs from DeLong placements, in closed form (no refitting).

    y, s (n,); v10 (m,), v01 (n0,) for that predictor (see :func:`roc.delong_placements`).
    Without clusters a unit is one observation; with clusters (codes 0..G-1) one cluster, and pairs
    inside a cluster that holds both classes are added back once so they are not removed twice.
    Units whose removal leaves one class empty are skipped.
    """
    m, n0 = v10.size, v01.size
    total = auc * m * n0  # sum of pair credits psi(pos, neg)
    if clusters is None:
        drop_pos = (total - v10 * n0) / ((m - 1) * n0) if m > 1 else np.array([])
        drop_neg = (total - v01 * m) / (m * (n0 - 1)) if n0 > 1 else np.array([])
        return np.concatenate([drop_pos, drop_neg])
    g = int(clusters.max()) + 1
    cp, cn = clusters[y == 1], clusters[y == 0]
    # Credit removed with cluster c: its positives' pairs, its negatives' pairs, minus the pairs
    # counted twice because both members are in c.
    by_pos = np.bincount(cp, weights=v10 * n0, minlength=g).astype(np.float64)
    by_neg = np.bincount(cn, weights=v01 * m, minlength=g).astype(np.float64)
    removed = by_pos + by_neg - _within_cluster_credit(y, s, clusters, g)
    den = (m - np.bincount(cp, minlength=g)) * (n0 - np.bincount(cn, minlength=g))
    keep = den > 0
    return (total - removed[keep]) / den[keep]


def _within_cluster_credit(y: IntArray, s: FloatArray, clusters: IntArray, g: int) -> FloatArray:
    """Per cluster, the summed pair credit of its own positive-negative pairs, (G,); 0 for pure clusters."""
    out = np.zeros(g)
    n_pos = np.bincount(clusters, weights=y, minlength=g)
    n_all = np.bincount(clusters, minlength=g)
    for c in np.flatnonzero((n_pos > 0) & (n_pos < n_all)):  # usually none: labels are per patient
        rows = clusters == c
        sp, sn = s[rows & (y == 1)], s[rows & (y == 0)]
        out[c] = (sp[:, None] > sn[None, :]).sum() + 0.5 * (sp[:, None] == sn[None, :]).sum()
    return out


def percentile_interval(replicates: FloatArray, level: float) -> tuple[float, float]:
    """Percentile interval of finite replicates (B,); (NaN, NaN) if there are none."""
    r = replicates[np.isfinite(replicates)]
    if r.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(r, [0.5 - level / 2.0, 0.5 + level / 2.0])
    return float(lo), float(hi)


def bca_interval(replicates: FloatArray, estimate: float, jackknife: FloatArray, level: float) -> tuple[float, float]:
    """Bias-corrected and accelerated interval (Efron 1987) from replicates (B,) and jackknife values (J,).

    Falls back to the percentile interval when the bias correction is undefined (all replicates on
    one side of the estimate, e.g. AUC = 1) or the jackknife is degenerate.
    """
    r = replicates[np.isfinite(replicates)]
    if r.size == 0:
        return float("nan"), float("nan")
    # Ties with the estimate count half, which keeps z0 finite for the discrete AUC.
    p0 = (np.sum(r < estimate) + 0.5 * np.sum(r == estimate)) / r.size
    d = jackknife.mean() - jackknife
    denom = 6.0 * float(np.sum(d**2)) ** 1.5
    if not 0.0 < p0 < 1.0 or denom == 0.0:
        return percentile_interval(r, level)
    z0 = float(stats.norm.ppf(p0))
    a = float(np.sum(d**3)) / denom
    z = stats.norm.ppf([0.5 - level / 2.0, 0.5 + level / 2.0])
    adj = stats.norm.cdf(z0 + (z0 + z) / (1.0 - a * (z0 + z)))
    lo, hi = np.quantile(r, adj)
    return float(lo), float(hi)
