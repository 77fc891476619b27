"""``cohortnet bench --suite evaluation``: coverage of the AUC intervals on simulated binormal
studies, and the speed of DeLong's interval.

Both benchmarks return plain dicts and have a ``format_*`` companion that prints a table. They
use only ``pipeline.evaluation`` (no torch or MONAI is imported).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from pipeline.evaluation.bootstrap import bca_interval, bootstrap_aucs, jackknife_aucs, percentile_interval
from pipeline.evaluation.roc import delong_ci, delong_placements, logit_interval, normal_interval
from pipeline.options import CI_METHODS

COVERAGE_RANGE = (0.935, 0.965)  # acceptance band for a nominal 95% interval over 2,000 studies
MIN_STUDIES_FOR_VERDICT = 2000  # the band is +/- 3 Monte Carlo SEs at 2,000 studies; fewer cannot judge
METHODS = CI_METHODS
DEFAULT_METHODS = ("delong", "bootstrap")  # the defaults of binary_summary; these must pass


def binormal_study(n: int, true_auc: float, prevalence: float, rng: np.random.Generator) -> tuple[Any, Any]:
    """One simulated study: negatives ~ N(0, 1), positives ~ N(mu, 1) with AUC = Phi(mu / sqrt 2).

    Class sizes are fixed at round(n * prevalence) positives. Returns y (n,) 0/1 and scores (n,).
    """
    n_pos = round(n * prevalence)
    mu = np.sqrt(2.0) * stats.norm.ppf(true_auc)
    y = np.r_[np.ones(n_pos, dtype=np.int64), np.zeros(n - n_pos, dtype=np.int64)]
    s = np.r_[rng.normal(mu, 1.0, n_pos), rng.normal(0.0, 1.0, n - n_pos)]
    return y, s


def _study_intervals(y: Any, s: Any, n_bootstrap: int, seed: Any, level: float) -> dict[str, tuple[float, float]]:
    """The four intervals of one study, sharing the DeLong placements and one set of replicates."""
    auc, v10, v01 = delong_placements(y, s[None, :])
    m, n0 = v10.shape[1], v01.shape[1]
    a = float(auc[0])
    se = float(np.sqrt(np.var(v10[0], ddof=1) / m + np.var(v01[0], ddof=1) / n0))
    reps = bootstrap_aucs(y, s[None, :], n_bootstrap=n_bootstrap, seed=seed)[:, 0]
    jack = jackknife_aucs(y, s, v10[0], v01[0], a, clusters=None)
    return {
        "delong": logit_interval(a, se, level),
        "delong_wald": normal_interval(a, se, level),
        "bootstrap": bca_interval(reps, a, jack, level),
        "bootstrap_percentile": percentile_interval(reps, level),
    }


@dataclass(frozen=True)
class CoverageDesign:
    """The simulation: studies per size, sizes, the true AUC and prevalence, bootstrap replicates,
    seed and nominal level."""

    n_studies: int = 2000
    sizes: tuple[int, ...] = (50, 500)
    true_auc: float = 0.8
    n_bootstrap: int = 1000
    seed: int = 0
    prevalence: float = 0.5
    level: float = 0.95

    def params(self) -> dict[str, Any]:
        """The design as the result's ``params`` (with the acceptance band)."""
        return {
            "n_studies": self.n_studies,
            "sizes": list(self.sizes),
            "true_auc": self.true_auc,
            "prevalence": self.prevalence,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "level": self.level,
            "acceptance": list(COVERAGE_RANGE),
        }


def _size_rows(design: CoverageDesign, n: int, size_seq: np.random.SeedSequence) -> list[dict[str, Any]]:
    """Coverage rows, one per method, of ``design.n_studies`` studies of ``n`` cases."""
    truth, n_studies = design.true_auc, design.n_studies
    hits = {m: np.zeros(3) for m in METHODS}  # covered, truth below interval, truth above
    widths = {m: 0.0 for m in METHODS}
    for study_seq in size_seq.spawn(n_studies):
        data_seq, boot_seq = study_seq.spawn(2)
        y, s = binormal_study(n, truth, design.prevalence, np.random.default_rng(data_seq))
        for method, (lo, hi) in _study_intervals(y, s, design.n_bootstrap, boot_seq, design.level).items():
            hits[method] += (lo <= truth <= hi, truth < lo, truth > hi)
            widths[method] += hi - lo
    rows = []
    for method in METHODS:
        cov = hits[method][0] / n_studies
        rows.append(
            {
                "n": n,
                "method": method,
                "coverage": float(cov),
                "mc_se": float(np.sqrt(cov * (1.0 - cov) / n_studies)),
                "miss_low": float(hits[method][1] / n_studies),
                "miss_high": float(hits[method][2] / n_studies),
                "mean_width": widths[method] / n_studies,
            }
        )
    return rows


def coverage_benchmark(
    n_studies: int = 2000,
    sizes: Sequence[int] = (50, 500),
    true_auc: float = 0.8,
    n_bootstrap: int = 1000,
    seed: int = 0,
    *,
    prevalence: float = 0.5,
    level: float = 0.95,
) -> dict[str, Any]:
    """Coverage of the 95% AUC intervals over ``n_studies`` simulated binormal studies per size.

    Each study gets every interval method: DeLong on the logit scale (``delong``, the default),
    pROC's Wald DeLong (``delong_wald``), stratified bootstrap BCa (``bootstrap``, the default)
    and percentile (``bootstrap_percentile``, pROC's), the bootstrap ones on the same replicates.
    1,000 replicates per study: enough for BCa end points (Efron and Tibshirani 1993, ch. 14),
    and the coverage estimate averages the end points' Monte Carlo noise over the studies.
    Returns ``{"params", "rows": [{n, method, coverage, mc_se, miss_low, miss_high, mean_width}],
    "passed", "seconds"}``; ``passed`` is True when both default methods are inside COVERAGE_RANGE,
    and None (no verdict) with fewer than 2,000 studies, whose Monte Carlo error is too large.
    """
    t0 = time.perf_counter()
    design = CoverageDesign(n_studies, tuple(sizes), true_auc, n_bootstrap, seed, prevalence, level)
    root = np.random.SeedSequence(seed)
    rows: list[dict[str, Any]] = []
    for n, size_seq in zip(design.sizes, root.spawn(len(design.sizes)), strict=True):
        rows += _size_rows(design, n, size_seq)
    lo_ok, hi_ok = COVERAGE_RANGE
    passed = all(lo_ok <= r["coverage"] <= hi_ok for r in rows if r["method"] in DEFAULT_METHODS)
    verdict = passed if n_studies >= MIN_STUDIES_FOR_VERDICT else None
    return {"params": design.params(), "rows": rows, "passed": verdict, "seconds": time.perf_counter() - t0}


def format_coverage(result: dict[str, Any]) -> str:
    """Plain-text table of :func:`coverage_benchmark`'s result."""
    p = result["params"]
    lines = [
        f"AUC interval coverage: {p['n_studies']} binormal studies per size, true AUC {p['true_auc']}, "
        f"prevalence {p['prevalence']}, {p['n_bootstrap']} bootstrap replicates, seed {p['seed']}",
        f"{'n':>6}  {'method':<22}{'coverage':>9}{'MC SE':>8}{'miss<':>8}{'miss>':>8}{'width':>8}",
    ]
    for r in result["rows"]:
        flag = " (default)" if r["method"] in DEFAULT_METHODS else ""
        lines.append(
            f"{r['n']:>6}  {r['method']:<22}{100 * r['coverage']:>8.1f}%{100 * r['mc_se']:>7.1f}%"
            f"{100 * r['miss_low']:>7.1f}%{100 * r['miss_high']:>7.1f}%{r['mean_width']:>8.3f}{flag}"
        )
    lo, hi = (100 * v for v in p["acceptance"])
    if result["passed"] is None:
        se = 100 * np.sqrt(0.95 * 0.05 / p["n_studies"])
        verdict = f"no verdict (Monte Carlo SE {se:.1f}% with {p['n_studies']} studies; needs 2,000)"
    else:
        verdict = "PASS" if result["passed"] else "FAIL"
    lines.append(f"defaults within {lo:.1f}-{hi:.1f}%: {verdict}   ({result['seconds']:.0f} s)")
    return "\n".join(lines)


def speed_benchmark(n: int = 1_000_000, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Median wall time of ``delong_ci`` (AUC, DeLong SE and interval, input checks included) on n scores.

    Binormal scores (AUC about 0.76, prevalence 0.3, no ties). scikit-learn's ``roc_auc_score``
    (point AUC only) is timed on the same data for reference.
    """
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.3).astype(np.int64)
    s = rng.normal(size=n) + y
    times, ref = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ci = delong_ci(y, s)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        roc_auc_score(y, s)
        ref.append(time.perf_counter() - t0)
    return {
        "n": n,
        "repeats": repeats,
        "median_seconds": float(np.median(times)),
        "seconds": [float(t) for t in times],
        "sklearn_roc_auc_median_seconds": float(np.median(ref)),
        "auc": ci.auc,
        "auc_ci": [ci.low, ci.high],
        "limit_seconds": 2.0,
        "passed": bool(np.median(times) < 2.0),
    }


def format_speed(result: dict[str, Any]) -> str:
    """Plain-text line of :func:`speed_benchmark`'s result: numbers only (no verdict on a time;
    ``passed`` against ``limit_seconds`` stays in the JSON for the slow test)."""
    return (
        f"DeLong AUC + 95% CI on {result['n']:,} scores: median {result['median_seconds']:.3f} s over "
        f"{result['repeats']} runs (fastest {min(result['seconds']):.3f} s, slowest {max(result['seconds']):.3f} s); "
        f"sklearn roc_auc_score alone: {result['sklearn_roc_auc_median_seconds']:.3f} s"
    )
