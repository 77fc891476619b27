"""Validation of score arrays at the boundary of every public statistic.

Every public function calls :func:`binary_arrays` first, so the statistics below it can assume
1-D float scores without NaN and 0/1 labels with both classes present.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class SingleClassError(ValueError):
    """Only one outcome class is present, so ROC statistics are undefined.

    A subclass of ValueError so that callers who evaluate many subsets (subgroups, folds) can
    catch exactly this case and report ``auc: None`` with a warning instead of failing.
    """


def as_float_vector(values: Any, name: str) -> FloatArray:
    """``values`` -> 1-D float64 array; ValueError naming ``name`` if it is not numeric or not 1-D."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, but it is {arr.ndim}-D with shape {arr.shape}")
    return arr


def binary_labels(values: Any, name: str = "y_true") -> IntArray:
    """0/1 labels (bool, int or float 0.0/1.0) -> int64 array; ValueError listing other values."""
    arr = as_float_vector(values, name)
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        shown = ", ".join(repr(v) for v in np.unique(arr[bad])[:5])
        raise ValueError(f"{name} must contain only 0 and 1, but it contains {shown}")
    return arr.astype(np.int64)


def binary_arrays(
    y_true: Any, y_score: Any, *, require_both: bool = True, score_name: str = "y_score"
) -> tuple[IntArray, FloatArray]:
    """Validate a label vector and a score vector of the same length.

    Returns ``(y, s)``: y (n,) int64 in {0, 1}; s (n,) float64, finite.
    Raises ValueError (SingleClassError when ``require_both`` and one class is missing).
    """
    y = binary_labels(y_true)
    s = as_float_vector(y_score, score_name)
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"y_true and {score_name} differ in length: {y.shape[0]} labels, {s.shape[0]} scores")
    if y.shape[0] == 0:
        raise ValueError("no observations: y_true is empty")
    n_bad = int((~np.isfinite(s)).sum())
    if n_bad:
        raise ValueError(f"{score_name} has {n_bad} NaN or infinite value(s); remove or impute them first")
    if require_both:
        n_pos = int(y.sum())
        if n_pos in (0, y.shape[0]):
            only = "positive (1)" if n_pos else "negative (0)"
            raise SingleClassError(
                f"only one class is present ({y.shape[0]} {only} observations); "
                "ROC statistics need at least one positive and one negative"
            )
    return y, s


def group_codes(groups: Any, n: int) -> IntArray:
    """Cluster ids of any hashable type -> codes 0..G-1, shape (n,); ValueError on length mismatch or NaN."""
    arr = np.asarray(groups)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"groups must be 1-D with one id per observation ({n}), but its shape is {arr.shape}")
    codes, _ = _factorize(arr)
    if (codes < 0).any():
        raise ValueError(f"groups has {int((codes < 0).sum())} missing cluster id(s)")
    return codes


def _factorize(arr: npt.NDArray[Any]) -> tuple[IntArray, Sequence[Any]]:
    import pandas as pd

    codes, uniques = pd.factorize(pd.Series(arr), sort=False)
    return np.asarray(codes, dtype=np.int64), list(uniques)


def py_float(x: Any) -> float | None:
    """numpy/python number -> python float, or None for NaN/inf (JSON has neither)."""
    if x is None:
        return None
    v = float(x)
    return v if np.isfinite(v) else None
