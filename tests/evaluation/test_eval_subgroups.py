"""Subgroups and folds: per-group metrics at the locked threshold, small-group warnings, heterogeneity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.evaluation import EvaluationOptions, ScoreColumns, binary_summary, evaluate_predictions
from pipeline.evaluation.subgroups import heterogeneity_test

from .conftest import binormal

SMALL = [0, 1, 2, 297, 298, 299]  # site C: 3 positive and 3 negative cases


def table(seed: int = 0) -> pd.DataFrame:
    y, s = binormal(120, 180, 1.0, seed=seed)
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "label": y,
            "score": s,
            "site": rng.choice(["A", "B"], size=300),
            "age": rng.integers(20, 90, size=300),
            "fold": np.arange(300) % 5,
        }
    ).assign(site=lambda d: d["site"].where(~np.isin(np.arange(300), SMALL), "C"))


def test_subgroups_have_metrics_with_cis_and_small_ones_are_flagged():
    df = table()
    m = evaluate_predictions(
        df, ScoreColumns("label", "score", subgroups=("site",)), EvaluationOptions(threshold_rule="0")
    )
    groups = {g["value"]: g for g in m["subgroups"]["site"]["groups"]}
    assert set(groups) == {"A", "B", "C"}
    for value in ("A", "B"):
        rows = (df["site"] == value).to_numpy()
        ref = binary_summary(df["label"][rows], df["score"][rows], threshold=0.0)
        assert groups[value]["auc"] == pytest.approx(ref["auc"])
        assert groups[value]["sensitivity_ci_low"] == pytest.approx(ref["sensitivity_ci_low"])
        assert groups[value]["warnings"] == []
    small = groups["C"]
    assert small["n"] == 6
    assert any("too wide to say anything" in w and "site=C" in w for w in small["warnings"])
    assert any("site=C" in w for w in m["warnings"])  # also listed at the top level


def test_single_class_subgroup_gives_none_and_a_warning_not_an_error():
    df = table().assign(site=lambda d: np.where(d["label"] == 1, "pos_only", "mixed"))
    df.loc[df.index[-10:], "site"] = "mixed"
    m = evaluate_predictions(
        df, ScoreColumns("label", "score", subgroups=("site",)), EvaluationOptions(calibration=False)
    )
    groups = {g["value"]: g for g in m["subgroups"]["site"]["groups"]}
    assert groups["pos_only"]["auc"] is None
    assert any("only one class" in w for w in groups["pos_only"]["warnings"])


def test_numeric_column_with_many_values_is_cut_into_quartiles():
    m = evaluate_predictions(
        table(), ScoreColumns("label", "score", subgroups=("age",)), EvaluationOptions(calibration=False)
    )
    sub = m["subgroups"]["age"]
    assert sub["derived"] == "quartile bands"
    assert len(sub["groups"]) == 4
    lows = [float(g["value"].split(",")[0].strip("([")) for g in sub["groups"]]
    assert lows == sorted(lows)  # bands in numeric order, not text order
    assert sum(g["n"] for g in sub["groups"]) == 300


def test_heterogeneity_q_statistic_by_hand():
    rows = [{"auc": 0.9, "auc_se": 0.05}, {"auc": 0.7, "auc_se": 0.05}, {"auc": None}]
    het = heterogeneity_test(rows)
    assert het is not None
    assert het["pooled_auc"] == pytest.approx(0.8)
    assert het["q"] == pytest.approx(2 * (0.1 / 0.05) ** 2)
    assert het["df"] == 1
    assert het["p_value"] == pytest.approx(2 * stats.norm.sf(np.sqrt(8.0)))  # chi2(1) tail = two normal tails


def test_folds_give_per_fold_values_with_mean_and_sd():
    df = table(seed=1)
    m = evaluate_predictions(df, ScoreColumns("label", "score", fold="fold"), EvaluationOptions(calibration=False))
    folds = m["folds"]
    assert folds["n_folds"] == 5
    aucs = []
    for f in folds["per_fold"]:
        rows = (df["fold"] == f["fold"]).to_numpy()
        ref = binary_summary(df["label"][rows], df["score"][rows])
        assert f["auc"] == pytest.approx(ref["auc"])
        assert f["auc_ci_low"] == pytest.approx(ref["auc_ci_low"])
        assert f["threshold"] == m["threshold"]  # one locked threshold for every fold
        aucs.append(f["auc"])
    assert folds["auc_mean"] == pytest.approx(np.mean(aucs))
    assert folds["auc_sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert "sensitivity_mean" in folds
