"""Decision-curve analysis (Vickers and Elkin 2006): net benefit across threshold probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.evaluation._inputs import binary_arrays

DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def net_benefit(y: Any, p: Any, thresholds: Any = DEFAULT_THRESHOLDS) -> dict[str, list[float]]:
    """Net benefit of the model, of treating all and of treating none, at each threshold probability.

    Net benefit at threshold probability t = TP/n - FP/n * t / (1 - t), treating when p >= t.
    Treat-all: prevalence - (1 - prevalence) * t / (1 - t); treat-none: 0.
    y (n,) 0/1; p (n,) probabilities; thresholds (k,) in (0, 1). Returns lists of length k.
    """
    yy, pp = binary_arrays(y, p, score_name="p", require_both=False)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or (t <= 0).any() or (t >= 1).any():
        raise ValueError("decision-curve thresholds must be a 1-D array strictly between 0 and 1")
    n = yy.size
    odds = t / (1.0 - t)
    # Positives and negatives with p >= t, for every t at once, via sorted scores.
    pos_sorted = np.sort(pp[yy == 1])
    neg_sorted = np.sort(pp[yy == 0])
    tp = pos_sorted.size - np.searchsorted(pos_sorted, t, side="left")
    fp = neg_sorted.size - np.searchsorted(neg_sorted, t, side="left")
    prevalence = yy.mean()
    return {
        "threshold": t.tolist(),
        "net_benefit_model": (tp / n - fp / n * odds).tolist(),
        "net_benefit_treat_all": (prevalence - (1.0 - prevalence) * odds).tolist(),
        "net_benefit_treat_none": np.zeros_like(t).tolist(),
    }
