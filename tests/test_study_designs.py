"""Study designs beyond one k-fold split: leave-one-group-out (each site held out in turn)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main

SITES = ("north", "east", "south")


def three_sites(manifest: Path) -> Path:
    table = pd.read_csv(manifest)
    number = table["patient_id"].str[1:].astype(int)
    table["site"] = [SITES[n % 3] for n in number]
    table.to_csv(manifest, index=False)
    return manifest


def test_leave_one_site_out_reports_each_site_and_their_heterogeneity(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = three_sites(make_cohort(n_patients=18, second_scan=(4,)))
    wf = make_workflow(
        manifest,
        validation={"scheme": "leave_one_group_out", "group": "site"},
        report={"explain": {"cases": 0}},
    )
    assert main(["run", str(wf), "--run-id", "r"]) == 0
    run = tmp_path / "reports" / "tiny" / "r"
    splits = pd.read_csv(run / "splits.csv", dtype=str)
    assert splits.groupby("fold")["group"].first().tolist() == sorted(SITES)
    site = pd.read_csv(manifest, dtype=str).groupby("patient_id")["site"].first()
    test = splits[splits["role"] == "test"]
    assert (test["patient_id"].map(site) == test["group"]).all()
    assert test["patient_id"].is_unique
    assert len(test) == 18
    metrics = json.loads((run / "metrics.json").read_text())
    per_site = {g["value"]: g for g in metrics["subgroups"]["site"]["groups"]}
    assert set(per_site) == set(SITES)
    per_fold = {str(f["fold"]): f for f in metrics["folds"]["per_fold"]}
    for fold, value in splits.groupby("fold")["group"].first().items():
        assert per_site[value]["n"] == per_fold[fold]["n"] == 6  # the fold is the site
        assert per_site[value]["auc"] == pytest.approx(per_fold[fold]["auc"])
    html = (run / "report.html").read_text()
    het = metrics["subgroups"]["site"]["heterogeneity"]
    usable = [g for g in per_site.values() if g["auc"] is not None and (g.get("auc_se") or 0) > 0]
    assert len(usable) >= 2  # a site whose AUC is exactly 0 or 1 has no SE and no weight
    assert het is not None
    assert het["df"] == het["n_groups"] - 1 == len(usable) - 1
    assert 0.0 <= het["i2"] <= 1.0
    assert het["i2"] == pytest.approx(max(0.0, (het["q"] - het["df"]) / het["q"]) if het["q"] > 0 else 0.0)
    assert "Heterogeneity across site" in html
    assert "leave-one-site-out cross-validation" in html
    assert "east held out" in html
    table1 = pd.read_csv(run / "table1.csv")
    assert [c for c in table1.columns if c.startswith("fold")] == ["fold 0: east", "fold 1: north", "fold 2: south"]


def test_leave_one_group_out_workflows_are_checked(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = three_sites(make_cohort(n_patients=12, second_scan=(3,)))
    no_group = make_workflow(manifest, name="a.yaml", validation={"scheme": "leave_one_group_out"})
    assert main(["run", str(no_group), "--check"]) == 2
    assert "validation.group must name a manifest column" in capsys.readouterr().err
    absent = make_workflow(manifest, name="b.yaml", validation={"scheme": "leave_one_group_out", "group": "ward"})
    assert main(["run", str(absent), "--check"]) == 2
    assert "validation.group: column 'ward' is not in the manifest" in capsys.readouterr().err
    table = pd.read_csv(manifest)
    second = table.index[table["patient_id"] == "P003"][1]
    table.loc[second, "site"] = "elsewhere" if table.loc[second, "site"] != "elsewhere" else "north"
    table.to_csv(manifest, index=False)
    split_patient = make_workflow(
        manifest, name="c.yaml", validation={"scheme": "leave_one_group_out", "group": "site"}
    )
    assert main(["run", str(split_patient), "--check"]) == 2
    assert "1 patient(s) have images under more than one site" in capsys.readouterr().err


def test_heterogeneity_across_sites_by_hand() -> None:
    from pipeline.evaluation.subgroups import heterogeneity_test

    het = heterogeneity_test([{"auc": 0.7, "auc_se": 0.05}, {"auc": 0.9, "auc_se": 0.05}, {"auc": None}])
    assert het is not None
    assert het["pooled_auc"] == pytest.approx(0.8)
    assert het["q"] == pytest.approx(8.0)  # 400 * 0.1^2 * 2
    assert het["df"] == 1
    assert het["n_groups"] == 2
    assert het["i2"] == pytest.approx(7 / 8)
    same = heterogeneity_test([{"auc": 0.8, "auc_se": 0.05}, {"auc": 0.8, "auc_se": 0.1}])
    assert same is not None
    assert same["i2"] == 0.0


def test_mirrored_views_cover_every_flip_combination_once() -> None:
    import torch

    from pipeline.inference import mirror_views, view_logits

    assert mirror_views(3, "none") == ((),)
    views = mirror_views(3, "flips")
    assert len(views) == 8
    assert len(set(views)) == 8
    assert views[0] == ()
    assert mirror_views(2, "flips") == ((), (2,), (3,), (2, 3))

    class Corner(torch.nn.Module):  # the logit is the first voxel: each flip moves another corner there
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 0, 0].reshape(len(x), 1)

    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    assert view_logits(Corner(), x, mirror_views(2, "flips")).tolist() == [[0.0, 2.0, 1.0, 3.0]]


def test_test_time_augmentation_scores_the_mean_of_the_views_and_reports_the_single_view(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=12)
    # fp32 throughout (train.amp: off), so predict must reproduce the study's scores to rounding
    wf = make_workflow(manifest, train={"amp": "off"}, evaluation={"tta": "flips"}, report={"explain": {"cases": 0}})
    assert main(["run", str(wf), "--run-id", "r"]) == 0
    run = tmp_path / "reports" / "tiny" / "r"
    preds = pd.read_csv(run / "predictions.csv")
    assert "score_single_view" in preds.columns
    assert (preds["score"] - preds["score_single_view"]).abs().max() > 0  # the views disagree somewhere
    metrics = json.loads((run / "metrics.json").read_text())
    comparison = metrics["comparison"]
    assert comparison["compare_col"] == "score_single_view"
    assert comparison["auc1"] == pytest.approx(metrics["auc"])
    html = (run / "report.html").read_text()
    assert 'id="tta"' in html
    # predict applies the study's test-time augmentation: the test patients score as in the study
    new = pd.read_csv(manifest)
    predict = ["predict", str(run), str(manifest), "--out", str(tmp_path / "p"), "--allow-study-patients"]
    assert main([*predict, "--no-progress"]) == 0  # every image scored (8: some were excluded)
    predicted = pd.read_csv(tmp_path / "p" / "predictions.csv").set_index("image_id")
    assert len(new) == len(predicted)
    folds = pd.read_csv(run / "predictions.csv")
    fold_cols = {int(c.removeprefix("score_fold_")): c for c in predicted.columns if c.startswith("score_fold_")}
    mine = np.array(
        [predicted.loc[i, fold_cols[int(f)]] for i, f in zip(folds["image_id"], folds["fold"], strict=True)]
    )
    study, single = folds["score"].to_numpy(), folds["score_single_view"].to_numpy()
    tolerance = 1e-6
    np.testing.assert_allclose(mine, study, rtol=0, atol=tolerance)
    # where the mean over the views and the single view differ by more than the tolerance, predict's
    # score is the mean: without its views it would be the single view's
    apart = np.abs(study - single) > 10 * tolerance
    assert apart.any()
    assert (np.abs(mine - study) < np.abs(mine - single))[apart].all()


@pytest.mark.timeout(600)
def test_folds_on_a_local_dask_cluster_equal_the_sequential_run(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    manifest = make_cohort(n_patients=12, second_scan=(2,))
    deterministic = {"epochs": 2, "deterministic": True, "num_threads": 1, "amp": "off"}
    wf = make_workflow(manifest, train=deterministic, report={"explain": {"cases": 0}})
    assert main(["run", str(wf), "--run-id", "seq"]) == 0
    assert main(["run", str(wf), "--run-id", "dask", "--dask", "local:2"]) == 0
    runs = tmp_path / "reports" / "tiny"
    seq = pd.read_csv(runs / "seq" / "predictions.csv").sort_values("image_id").reset_index(drop=True)
    fanned = pd.read_csv(runs / "dask" / "predictions.csv").sort_values("image_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(seq, fanned)
    for fold in (0, 1):
        done = json.loads((runs / "dask" / f"fold_{fold}" / "done.json").read_text())
        assert done["seal"] == json.loads((runs / "dask" / "seal.json").read_text())["digest"]
        # where each fold was computed: equal results need equal thread counts (train.num_threads)
        sequential = json.loads((runs / "seq" / f"fold_{fold}" / "done.json").read_text())
        for record in (done, sequential):
            assert record["environment"]["torch_threads"] == 1
            assert record["environment"]["device"] == "cpu"
            assert record["environment"]["torch"]
    assert json.loads((runs / "seq" / "metrics.json").read_text())["auc"] == pytest.approx(
        json.loads((runs / "dask" / "metrics.json").read_text())["auc"]
    )
    # a rerun of the same command finds every fold done and trains nothing
    models = {p: p.stat().st_mtime_ns for p in (runs / "dask").glob("fold_*/model.pt")}
    assert main(["run", str(wf), "--run-id", "dask", "--dask", "local:2"]) == 0
    assert {p: p.stat().st_mtime_ns for p in models} == models


def test_cluster_tasks_of_two_studies_never_share_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.fanout import _task_id

    a, b = tmp_path / "a" / "tiny" / "r", tmp_path / "b" / "tiny" / "r"  # the same run id
    key = _task_id(a, "seal")
    assert len(key) == 16
    assert int(key, 16) >= 0
    assert _task_id(a, "seal") != _task_id(b, "seal")
    assert _task_id(a, "seal") != _task_id(a, "other seal")
    # the same folder and seal, spelt another way, name the same task: the key is the resolved path
    monkeypatch.chdir(tmp_path)
    assert _task_id(Path("a") / "tiny" / "r", "".join(["se", "al"])) == key
    assert _task_id(tmp_path / "b" / ".." / "a" / "tiny" / "r", "seal") == key
    assert _task_id(Path("b/tiny/r"), "seal") == _task_id(b, "seal") != key
