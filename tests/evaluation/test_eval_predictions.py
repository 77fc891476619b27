"""evaluate_predictions: the metrics.json contract, per-patient evaluation and input validation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ValidationError
from pipeline.evaluation import (
    EvaluationOptions,
    Interval,
    ScoreColumns,
    binary_summary,
    evaluate_predictions,
    format_metrics,
)
from pipeline.evaluation.table import aggregate_by_patient

from .conftest import probability_table

TOP_LEVEL = ("auc", "auc_ci_low", "auc_ci_high", "ci_method", "n", "n_positive")
THRESHOLD_KEYS = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "balanced_accuracy", "f1")


def test_binary_summary_contract_keys_and_json():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    s = rng.normal(y, 1.0)
    out = binary_summary(y, s, threshold=0.5)
    for key in (*TOP_LEVEL, "threshold", "tp", "fp", "tn", "fn"):
        assert key in out
    for key in THRESHOLD_KEYS:
        assert {key, f"{key}_ci_low", f"{key}_ci_high"} <= set(out)
    json.dumps(out, allow_nan=False)  # plain JSON types only
    assert "threshold" not in binary_summary(y, s)


def test_per_patient_is_primary_and_image_level_uses_clusters():
    df = probability_table(60, 3, seed=1)
    m = evaluate_predictions(
        df, ScoreColumns("label", "score", group="patient_id"), EvaluationOptions(interval=Interval(n_bootstrap=300))
    )
    assert m["unit"] == "patient"
    assert (m["n_patients"], m["n_images"], m["n"]) == (60, 180, 60)
    per_patient = aggregate_by_patient(df, "patient_id", ["score"], "mean")
    ref = binary_summary(per_patient["label"], per_patient["score"])
    assert m["auc"] == pytest.approx(ref["auc"])
    assert m["image_level"]["ci_method"] == "delong_clustered"
    assert m["image_level"]["n"] == 180
    assert m["image_level"]["n_clusters"] == 60
    boot = evaluate_predictions(
        df,
        ScoreColumns("label", "score", group="patient_id"),
        EvaluationOptions(interval=Interval(ci_method="bootstrap", n_bootstrap=300)),
    )
    assert boot["image_level"]["ci_method"] == "cluster_bootstrap_bca"


def test_full_metrics_sections_are_json_serialisable():
    df = probability_table(80, 2, seed=2)
    val = df[df["split"] == "val"]
    test = df[df["split"] == "test"]
    m = evaluate_predictions(
        test,
        ScoreColumns("label", "score", compare="other", group="patient_id", subgroups=("site",), fold="fold"),
        EvaluationOptions(recalibration="platt"),
        threshold_df=val,
    )
    for key in (*TOP_LEVEL, *THRESHOLD_KEYS, "threshold", "threshold_source", "warnings"):
        assert key in m
    for section in (
        "comparison",
        "calibration",
        "calibration_recalibrated",
        "decision_curve",
        "subgroups",
        "folds",
    ):
        assert section in m
    assert {"auc_difference", "z", "p_value", "ci_low", "ci_high"} <= set(m["comparison"])
    assert m["threshold_source"] == "validation"
    text = json.dumps(m, allow_nan=False)
    assert "NaN" not in text
    assert "AUC" in format_metrics(m)


def test_every_table_problem_is_listed_at_once():
    df = pd.DataFrame({"label": [0, 1, 2, 1], "score": [0.1, "x", None, 0.4], "pid": ["a", "a", "b", None]})
    with pytest.raises(ValidationError) as err:
        evaluate_predictions(df, ScoreColumns("label", "score", group="pid", subgroups=("nope",)))
    text = "\n".join(err.value.problems)
    assert err.value.exit_code == 2
    assert "'nope' not found" in text
    assert "non-numeric" in text
    assert "row 3: 'x'" in text
    assert "empty value" in text
    assert "not binary" in text
    assert "group column 'pid' has 1 empty" in text
    assert len(err.value.problems) >= 5


def test_positive_label_must_exist_and_non_numeric_labels_need_one():
    df = pd.DataFrame({"outcome": ["Good", "Poor", "Good", "Poor"], "s": [0.1, 0.9, 0.3, 0.6]})
    with pytest.raises(ValidationError, match="say which one is positive"):
        evaluate_predictions(df, ScoreColumns("outcome", "s"))
    with pytest.raises(ValidationError, match="'Bad' does not occur"):
        evaluate_predictions(df, ScoreColumns("outcome", "s", positive="Bad"))
    m = evaluate_predictions(df, ScoreColumns("outcome", "s", positive="Poor"), EvaluationOptions(calibration=False))
    assert (m["positive"], m["auc"]) == ("Poor", 1.0)


def test_labels_that_vary_within_a_patient_are_a_problem():
    df = pd.DataFrame({"pid": ["a", "a", "b", "b"], "label": [0, 1, 1, 1], "score": [0.1, 0.2, 0.3, 0.4]})
    with pytest.raises(ValidationError, match="more than one label"):
        evaluate_predictions(df, ScoreColumns("label", "score", group="pid"))


def test_non_probability_scores_skip_calibration_with_a_reason(asah):
    m = evaluate_predictions(asah, ScoreColumns("outcome", "ndka", positive="Poor"))
    assert m["calibration"] == {"skipped": "scores are not probabilities in [0, 1]"}
    assert m["decision_curve"]["skipped"]


def test_format_metrics_with_one_image_per_patient() -> None:
    rng = np.random.default_rng(3)
    y = np.tile([0, 1], 20)
    df = pd.DataFrame({"pid": [f"p{i}" for i in range(40)], "label": y, "score": y + rng.normal(size=40)})
    m = evaluate_predictions(df, ScoreColumns("label", "score", group="pid"))
    assert m["image_level"] is None
    assert "Image level" not in format_metrics(m)
    assert "AUC" in format_metrics(m)


def test_each_folds_own_threshold_is_locked_on_its_validation_rows_only():
    """Fold 0's model scores high, fold 1's low: one pooled threshold misclassifies fold 1's
    positives, each fold's own threshold (Youden, midpoint of its own validation scores) does not."""
    test = pd.DataFrame(
        {
            "patient_id": ["a", "b", "c", "d"],
            "label": [1, 0, 1, 0],
            "score": [0.9, 0.7, 0.4, 0.2],
            "fold": [0, 0, 1, 1],
        }
    )
    val = pd.DataFrame(
        {
            "patient_id": ["c", "d", "e", "a", "b", "f"],
            "label": [1, 0, 0, 1, 0, 1],
            "score": [0.95, 0.65, 0.6, 0.45, 0.15, 0.5],
            "fold": [0, 0, 0, 1, 1, 1],
        }
    )
    columns = ScoreColumns("label", "score", positive=1, group="patient_id", fold="fold")
    m = evaluate_predictions(test, columns, EvaluationOptions(calibration=False), threshold_df=val)
    own = m["folds"]["own_thresholds"]
    assert own["rule"] == "youden"
    assert own["per_fold"] == [
        {"fold": "0", "threshold": pytest.approx(0.8), "n_validation": 3},
        {"fold": "1", "threshold": pytest.approx(0.3), "n_validation": 3},
    ]
    assert (own["tp"], own["fp"], own["tn"], own["fn"]) == (2, 0, 2, 0)
    assert own["accuracy"] == 1.0
    assert m["accuracy"] < 1.0  # the pooled threshold cannot serve both folds' models
    assert "each fold's own threshold (0.800, 0.300): accuracy 1.000 (" in format_metrics(m)
    # a fold whose validation patients are of one class gets no threshold, and says so
    one_class = val.assign(label=[1, 1, 1, 1, 0, 1])
    m = evaluate_predictions(test, columns, EvaluationOptions(calibration=False), threshold_df=one_class)
    assert m["folds"]["own_thresholds"] == {"skipped": "fold 0: its validation patients are all of one class"}
    # without a fold column in the validation rows (or with a fixed rule) there is none
    m = evaluate_predictions(test, columns, EvaluationOptions(calibration=False), threshold_df=val.drop(columns="fold"))
    assert "own_thresholds" not in m["folds"]
