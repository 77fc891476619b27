"""Multi-class: one-vs-rest AUCs and their macro average against scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.evaluation import (
    EvaluationOptions,
    Interval,
    ScoreColumns,
    delong_ci,
    evaluate_predictions,
    multiclass_summary,
)


def three_classes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array(["cyst", "adenoma", "carcinoma"]), size=n)
    onehot = np.stack([labels == c for c in ("adenoma", "carcinoma", "cyst")], axis=1)
    logits = rng.normal(size=(n, 3)) + 1.2 * onehot
    return labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_macro_auc_equals_sklearn_ovr():
    labels, probs = three_classes(400, seed=1)
    classes = ["adenoma", "carcinoma", "cyst"]
    mc = multiclass_summary(labels, probs, classes, n_bootstrap=500)
    ref = roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=classes)
    assert mc["macro_auc"] == pytest.approx(ref, rel=1e-12)
    assert mc["macro_auc_ci_low"] < mc["macro_auc"] < mc["macro_auc_ci_high"]
    for j, row in enumerate(mc["per_class"]):
        binary = delong_ci((labels == classes[j]).astype(int), probs[:, j])
        assert row["auc"] == pytest.approx(binary.auc)
        assert row["auc_ci_low"] == pytest.approx(binary.low)


def test_multiclass_through_evaluate_predictions():
    labels, probs = three_classes(300, seed=2)
    df = pd.DataFrame({"dx": labels, "p_a": probs[:, 0], "p_ca": probs[:, 1], "p_cy": probs[:, 2]})
    m = evaluate_predictions(
        df, ScoreColumns("dx", ("p_a", "p_ca", "p_cy")), EvaluationOptions(interval=Interval(n_bootstrap=300))
    )
    assert m["task"] == "multiclass"
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", labels=sorted(set(labels))))
    assert [r["score_col"] for r in m["multiclass"]["per_class"]] == ["p_a", "p_ca", "p_cy"]
    assert sum(m["n_per_class"].values()) == 300


def test_multiclass_needs_one_score_column_per_class():
    labels, probs = three_classes(100, seed=3)
    df = pd.DataFrame({"dx": labels, "p_a": probs[:, 0], "p_ca": probs[:, 1]})
    with pytest.raises(Exception, match="one score column per class"):
        evaluate_predictions(df, ScoreColumns("dx", ("p_a", "p_ca")))
