"""Studies with several members: training seeds (an ensemble for holdout studies) and repeated
k-fold cross-validation, with the spread across members and the ensemble against one model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.cli import main


def _run(wf: Path, run_id: str = "r") -> Path:
    assert main(["run", str(wf), "--run-id", run_id]) == 0
    return wf.parent / "reports" / "tiny" / run_id


def _other_cohort(make_cohort: Callable[..., Path]) -> Path:
    """Four new patients (other ids, other images) of the same kind, to predict."""
    other = make_cohort(n_patients=4, seed=7, folder="new")
    table = pd.read_csv(other, dtype=str)
    table.assign(patient_id="N" + table["patient_id"]).to_csv(other, index=False)
    return other


def test_holdout_seed_ensemble_averages_the_seed_models_and_compares_with_one(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=18, second_scan=(2,), split=True)
    wf = make_workflow(
        manifest,
        train={"seeds": [0, 1, 2], "deterministic": True},
        validation={"scheme": "holdout"},
        evaluation={"ensemble": "mean"},
    )
    run = _run(wf)
    splits = pd.read_csv(run / "splits.csv", dtype={"patient_id": str})
    assert sorted(splits["fold"].unique()) == [0, 1, 2]
    assert splits.groupby("fold")["seed"].first().tolist() == [0, 1, 2]
    roles = splits.pivot(index="patient_id", columns="fold", values="role")
    assert (roles.nunique(axis=1) == 1).all()  # every seed on the same holdout partition
    members = pd.read_csv(run / "member_predictions.csv", dtype={"patient_id": str, "image_id": str})
    preds = pd.read_csv(run / "predictions.csv", dtype={"patient_id": str, "image_id": str})
    val = pd.read_csv(run / "val_predictions.csv", dtype={"patient_id": str, "image_id": str})
    for table, role in ((preds, "test"), (val, "val")):
        mean = members[members["role"] == role].groupby("image_id")["score"].mean()
        assert table["image_id"].is_unique
        assert table["score"].to_numpy() == pytest.approx(table["image_id"].map(mean).to_numpy())
        first = members[(members["role"] == role) & (members["seed"] == 0)].set_index("image_id")["score"]
        assert table["score_single_model"].to_numpy() == pytest.approx(table["image_id"].map(first).to_numpy())
    metrics = json.loads((run / "metrics.json").read_text())
    block = metrics["members"]
    assert block["n_members"] == 3
    assert block["seeds"] == [0, 1, 2]
    assert block["repeats"] == 1
    aucs = [m["auc"] for m in block["per_member"]]
    assert block["auc"]["mean"] == pytest.approx(sum(aucs) / 3)
    assert block["auc"]["min"] == min(aucs)
    assert block["auc"]["max"] == max(aucs)
    assert block["auc"]["sd"] == pytest.approx(pd.Series(aucs).std(ddof=1))
    comp = block["comparison"]
    assert comp["auc1"] == pytest.approx(metrics["auc"])
    assert comp["auc2"] == pytest.approx(aucs[0])
    assert 0.0 <= comp["p_value"] <= 1.0
    html = (run / "report.html").read_text()
    assert 'id="members-table"' in html
    assert 'id="ensemble-table"' in html
    assert "members averaged (the study" in html
    # the first member is the plain single-seed run, model for model
    single = _run(
        make_workflow(manifest, name="one.yaml", train={"deterministic": True}, validation={"scheme": "holdout"}), "one"
    )
    plain = pd.read_csv(single / "predictions.csv", dtype={"patient_id": str, "image_id": str}).set_index("image_id")
    assert preds.set_index("image_id")["score_single_model"].to_numpy() == pytest.approx(
        plain.loc[preds["image_id"], "score"].to_numpy(), abs=1e-6
    )


def test_repeated_kfold_draws_new_splits_per_repeat_and_keeps_every_members_predictions(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=12, second_scan=(3,))
    tracking = {"mlflow": (tmp_path / "store").as_uri()}
    validation = {"scheme": "kfold", "folds": 2, "repeats": 2}
    wf = make_workflow(manifest, validation=validation, evaluation={"ensemble": "none"}, tracking=tracking)
    run = _run(wf)
    splits = pd.read_csv(run / "splits.csv", dtype={"patient_id": str})
    assert sorted(splits["fold"].unique()) == [0, 1, 2, 3]
    assert splits.groupby("fold")["repeat"].first().tolist() == [0, 0, 1, 1]
    tests = splits[splits["role"] == "test"]
    per_repeat = tests.groupby(["repeat", "patient_id"]).size()
    assert (per_repeat == 1).all()
    assert len(per_repeat) == 24
    test_sets = [frozenset(tests.loc[tests["fold"] == f, "patient_id"]) for f in range(4)]
    assert {test_sets[0], test_sets[1]} != {test_sets[2], test_sets[3]}  # a new partition
    members = pd.read_csv(run / "member_predictions.csv", dtype={"patient_id": str})
    assert set(members["repeat"]) == {0, 1}
    preds = pd.read_csv(run / "predictions.csv", dtype={"patient_id": str})
    assert set(preds["fold"]) == {0, 1}  # ensemble none: the first member's figures
    block = json.loads((run / "metrics.json").read_text())["members"]
    assert [(m["repeat"], m["seed"]) for m in block["per_member"]] == [(0, 0), (1, 0)]
    assert "comparison" not in block
    assert "Repeats and seeds" in (run / "report.html").read_text()
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=tracking["mlflow"])
    logged = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    assert logged["r"].data.metrics["members_auc_mean"] == pytest.approx(block["auc"]["mean"])
    assert logged["fold 3"].data.params["repeat"] == "1"
    # ensemble none: the study's model is its first member's folds
    other = _other_cohort(make_cohort)
    assert main(["predict", str(run), str(other), "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    scored = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert sorted(c for c in scored.columns if c.startswith("score_fold_")) == ["score_fold_0", "score_fold_1"]


def test_member_settings_are_checked(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = make_cohort(n_patients=12, split=True)
    wf = make_workflow(manifest, validation={"scheme": "holdout", "repeats": 3}, train={"seeds": [1, 1]})
    assert main(["run", str(wf), "--check"]) == 2
    err = capsys.readouterr().err
    assert "validation.repeats draws new k-fold splits; scheme holdout has fixed test sets" in err
    assert "train.seeds must be distinct, got [1, 1]" in err
    one = make_workflow(manifest, name="one.yaml", validation={"scheme": "holdout"}, train={"seeds": [7]})
    assert main(["run", str(one), "--check"]) == 2
    assert "train.seeds: [7] is one seed and the study is one plain run; set train.seed: 7 instead" in (
        capsys.readouterr().err
    )


def _kfold_members() -> pd.DataFrame:
    """Two seeds on the same 2-fold splits (folds 0, 1 of seed 0; 2, 3 of seed 1). Patient a
    validates both folds, with a high score from fold 0's model and a low one from fold 1's: mixing
    the two models' scores would move the locked threshold (0.45 per (fold, patient), 0.425 mixed)."""
    label = {"a": 1, "b": 0, "c": 0, "d": 1}
    val = {0: {"a": 0.95, "b": 0.3, "d": 0.6}, 1: {"a": 0.15, "c": 0.1}}
    test = {0: {"a": 0.7, "b": 0.2}, 1: {"c": 0.4, "d": 0.9}}
    rows = []
    for seed, offset in ((0, 0), (1, 2)):
        for k in (0, 1):
            for role, scores in (("val", val[k]), ("test", test[k])):
                for p, score in scores.items():
                    rows.append(
                        {
                            "patient_id": p,
                            "image_id": f"{p}1",
                            "label": str(label[p]),
                            "score": score + 0.02 * seed,
                            "fold": k + offset,
                            "role": role,
                            "repeat": 0,
                            "seed": seed,
                        }
                    )
    return pd.DataFrame(rows)


def test_seed_ensemble_of_kfold_averages_each_fold_position_never_a_mix_of_folds() -> None:
    from pipeline.study import combine_members

    pooled = _kfold_members()
    test, val = combine_members(pooled, "mean")
    assert sorted(test["patient_id"]) == ["a", "b", "c", "d"]
    assert set(test["fold"]) == {0, 1}  # the first member's folds
    a = val[val["patient_id"] == "a"].set_index("fold")["score"]
    # patient a validates fold 0 (0.95 and 0.97) and fold 1 (0.15 and 0.17): one mean per fold
    assert a.to_dict() == pytest.approx({0: 0.96, 1: 0.16})
    assert val["score_single_model"].tolist() == pytest.approx(
        pooled[(pooled["role"] == "val") & (pooled["seed"] == 0)]["score"].tolist()
    )


def test_each_members_threshold_is_locked_per_fold_and_patient_like_the_studys() -> None:
    from pipeline.evaluation.members import members_summary
    from pipeline.evaluation.predictions import evaluate_predictions
    from pipeline.evaluation.spec import EvaluationOptions, ScoreColumns

    pooled = _kfold_members()
    columns = ScoreColumns("label", "score", positive="1", group="patient_id", fold="fold")
    options = EvaluationOptions(calibration=False)
    block = members_summary(pooled, columns, options, member_cols=("repeat", "seed"), role_col="role")
    for member, seed in zip(block["per_member"], (0, 1), strict=True):
        rows = pooled[pooled["seed"] == seed]
        own = evaluate_predictions(
            rows[rows["role"] == "test"], columns, options, threshold_df=rows[rows["role"] == "val"]
        )
        assert own["threshold_validation_n"] == 5  # (fold, patient) units: a twice, b, c, d
        assert own["threshold"] == pytest.approx(0.45 + 0.02 * seed)
        assert member["threshold"] == pytest.approx(own["threshold"])
        assert member["accuracy"] == pytest.approx(own["accuracy"])


def assert_stability(record: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Stability is the share of outer folds that chose the most chosen point; each fold's choice
    is checked against its inner AUCs, so with 2 folds it is exactly 1.0 when they agree, else 0.5."""
    chosen = [fold["point"] for fold in record["folds"]]
    assert len(chosen) == 2
    assert metrics["nested"]["stability"] == (1.0 if chosen[0] == chosen[1] else 0.5)
    assert [c["folds"] for c in record["chosen_counts"]] == [chosen.count(0), chosen.count(1)]


def test_nested_cross_validation_chooses_per_outer_fold_on_inner_folds_only(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=16, second_scan=(3,))
    wf = make_workflow(
        manifest,
        train={"epochs": 2, "batch_size": 4, "lr": 0.001, "seed": 0},
        validation={"scheme": "nested", "folds": 2, "inner_folds": 2},
        search={"train.lr": [0.001, 0.01], "model.widen_factor": [0.5]},
        report={"explain": {"cases": 2}},
        tracking={"mlflow": (tmp_path / "store").as_uri()},
    )
    run = _run(wf)
    splits = pd.read_csv(run / "splits.csv", dtype={"patient_id": str})
    outer = splits[splits["inner"] == -1]
    inner = splits[splits["inner"] >= 0]
    plain = make_workflow(manifest, name="plain.yaml", train={"epochs": 2, "batch_size": 4, "lr": 0.001, "seed": 0})
    assert main(["run", str(plain), "--check"]) == 0
    from pipeline.study import make_splits, validate_workflow

    kfold = make_splits(*validate_workflow(plain))
    same_tests = {f: set(p.loc[p["role"] == "test", "patient_id"]) for f, p in kfold.groupby("fold")}
    assert {f: set(p.loc[p["role"] == "test", "patient_id"]) for f, p in outer.groupby("fold")} == same_tests
    for fold, part in inner.groupby("fold"):
        assert not set(part["patient_id"]) & same_tests[fold]  # no outer test patient at the inner level
        assert (part[part["role"] == "val"].groupby("patient_id").size() == 1).all()
    record = json.loads((run / "nested.json").read_text())
    assert record["points"] == [
        {"train.lr": 0.001, "model.widen_factor": 0.5},
        {"train.lr": 0.01, "model.widen_factor": 0.5},
    ]
    for fold in record["folds"]:
        aucs = [p["inner_auc"] for p in fold["points"]]
        assert fold["point"] == max(range(2), key=lambda p: (aucs[p], -p))
        epochs = fold["points"][fold["point"]]["best_epochs"]
        assert len(epochs) == 2
        history = pd.read_csv(run / f"fold_{fold['fold']}" / "history.csv")
        assert len(history) == fold["epoch"]  # refitted for the chosen number of epochs, no validation
        assert (run / f"fold_{fold['fold']}" / "inner_1_point_1" / "done.json").is_file()
    assert sum(c["folds"] for c in record["chosen_counts"]) == 2
    val = pd.read_csv(run / "val_predictions.csv", dtype={"patient_id": str})
    assert set(val["patient_id"]) <= set(inner["patient_id"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert_stability(record, metrics)
    assert metrics["threshold_source"] == "validation"
    assert metrics["n_patients"] == 16
    # each outer fold's own threshold is locked on its own inner validation patients: every one of
    # its 8 training patients validated one inner fold
    own = metrics["folds"]["own_thresholds"]
    assert [(f["fold"], f["n_validation"]) for f in own["per_fold"]] == [("0", 8), ("1", 8)]
    assert own["tp"] + own["fp"] + own["tn"] + own["fn"] == 16
    html = (run / "report.html").read_text()
    assert 'id="nested-table"' in html
    assert 'id="fold-own-thresholds"' in html
    assert "inner AUC: train.lr = 0.01, model.widen_factor = 0.5" in html
    assert "nested cross-validation (2 outer × 2 inner" in html
    # the points differ in train.lr only: the outer models are of one kind, explained and predicting as one
    explained = json.loads((run / "explanations" / "explanations.json").read_text())
    assert explained["skipped"] is None
    assert explained["n_cases"] >= 1
    other = _other_cohort(make_cohort)
    assert main(["predict", str(run), str(other), "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    assert pd.read_csv(tmp_path / "pred" / "predictions.csv")["score"].between(0, 1).all()
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "store").as_uri())
    jobs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    assert {"fold 0", "fold 1", "fold 0 inner 0 point 0", "fold 1 inner 1 point 1"} <= set(jobs)
    assert jobs["fold 1 inner 1 point 1"].data.params["point.train.lr"] == "0.01"
    assert jobs["r"].data.metrics["nested_stability"] == metrics["nested"]["stability"]


def test_search_spaces_are_checked_point_by_point(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = make_cohort(n_patients=12)
    not_nested = make_workflow(manifest, name="a.yaml", search={"train.lr": [0.1]})
    assert main(["run", str(not_nested), "--check"]) == 2
    assert "search: a search space needs validation.scheme nested" in capsys.readouterr().err
    bad = make_workflow(
        manifest,
        name="b.yaml",
        validation={"scheme": "nested", "folds": 2, "inner_folds": 2},
        search={"train.lr": [0.001, -1.0], "evaluation.tta": ["flips"], "model.arch": ["resnet7"], "train.seed": [1]},
    )
    assert main(["run", str(bad), "--check"]) == 2
    err = capsys.readouterr().err
    assert "search: 'evaluation.tta' is not a model/data/train key" in err
    assert "search: train.seed is not a modelling choice" in err
    good = make_workflow(
        manifest,
        name="c.yaml",
        validation={"scheme": "nested", "folds": 2, "inner_folds": 2},
        search={"train.lr": [0.001, -1.0], "model.arch": ["resnet10", "resnet7"]},
    )
    assert main(["run", str(good), "--check"]) == 2
    err = capsys.readouterr().err
    assert "search point {'train.lr': -1.0, 'model.arch': 'resnet10'}" in err
    assert "train.lr must be > 0, got -1.0" in err
    assert "model.arch: must be one of" in err


def test_outer_models_of_different_kinds_are_not_one_model(tmp_path: Path) -> None:
    from pipeline.config import config_from_dict
    from pipeline.nested import chosen_config

    raw = {
        "study": "s",
        "manifest": "m.csv",
        "validation": {"scheme": "nested", "folds": 2, "inner_folds": 2},
        "search": {"model.arch": ["resnet10", "resnet18"], "train.lr": [0.001, 0.01]},
    }
    cfg = config_from_dict(raw, base_dir=tmp_path, check_files=False)
    points = [{"model.arch": a, "train.lr": lr} for a in ("resnet10", "resnet18") for lr in (0.001, 0.01)]

    def chosen(*picks: int) -> object:
        record = {"points": points, "folds": [{"fold": f, "point": p} for f, p in enumerate(picks)]}
        (tmp_path / "nested.json").write_text(json.dumps(record))
        return chosen_config(tmp_path, cfg)

    same_model = chosen(2, 3)  # resnet18 with two learning rates: one kind of model
    assert same_model is not None
    assert same_model.model.arch == "resnet18"  # type: ignore[attr-defined]
    assert chosen(0, 3) is None  # resnet10 and resnet18
