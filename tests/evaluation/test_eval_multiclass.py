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


def test_multiclass_per_class_intervals_follow_the_workflows_ci_method():
    labels, probs = three_classes(120, seed=4)
    df = pd.DataFrame({"dx": labels, "p_a": probs[:, 0], "p_ca": probs[:, 1], "p_cy": probs[:, 2]})
    cols = ScoreColumns("dx", ("p_a", "p_ca", "p_cy"))
    wald = Interval(ci_method="delong_wald", n_bootstrap=100)
    rows = evaluate_predictions(df, cols, EvaluationOptions(interval=wald))["multiclass"]["per_class"]
    logit = evaluate_predictions(df, cols, EvaluationOptions(interval=Interval(n_bootstrap=100)))["multiclass"]
    for j, (row, default) in enumerate(zip(rows, logit["per_class"], strict=True)):
        binary = delong_ci((labels == row["class"]).astype(int), probs[:, j], transform="none")
        assert (row["auc_ci_low"], row["auc_ci_high"]) == pytest.approx((binary.low, binary.high), rel=1e-12)
        assert row["auc_ci_low"] != pytest.approx(default["auc_ci_low"], rel=1e-6)  # not the logit interval


def test_multiclass_needs_one_score_column_per_class():
    labels, probs = three_classes(100, seed=3)
    df = pd.DataFrame({"dx": labels, "p_a": probs[:, 0], "p_ca": probs[:, 1]})
    with pytest.raises(Exception, match="one score column per class"):
        evaluate_predictions(df, ScoreColumns("dx", ("p_a", "p_ca")))
