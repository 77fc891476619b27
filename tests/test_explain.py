"""Grad-CAM explanations: hot means important, the case rule, the run folder's files, geometry."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from monai.visualize import GradCAM
from torch import nn

from pipeline.config import WorkflowConfig
from pipeline.explain import (
    choose_layer,
    explain_run,
    fold_mean_map,
    make_cam,
    normalise_map,
    preprocessing,
    select_cases,
    shortfalls,
    split_budget,
    to_source_grid,
)
from pipeline.manifest import Cohort
from pipeline.reporting.explanations import CASE_COLUMNS, load_explanations
from pipeline.study import validate_workflow
from pipeline.transforms import KEY

# --- hot means important -------------------------------------------------------------------------

IMPORTANT = (slice(2, 5), slice(2, 5))  # a bright square: the only thing the logit reads
DISTRACTOR = (slice(7, 10), slice(5, 8))  # a dark square: strongly active, but ignored by the logit


class RegionNet(nn.Module):
    """Channel 0 fires on bright pixels, channel 1 on dark ones; the logit is the mean of channel 0."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, kernel_size=1, bias=False), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return f[:, :1].mean(dim=(2, 3)) + 0.0 * f[:, 1:].mean(dim=(2, 3))


def region_input(bright: bool = True) -> torch.Tensor:
    x = torch.zeros(1, 1, 12, 10)
    if bright:
        x[0, 0][IMPORTANT] = 3.0
    x[0, 0][DISTRACTOR] = -4.0  # more activation than the important square
    return x


def hot_where_important(cam: np.ndarray) -> bool:
    inside = np.zeros(cam.shape, dtype=bool)
    inside[IMPORTANT] = True
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(inside[peak]) and float(cam[inside].mean()) > float(cam[~inside].mean())


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_the_map_is_hot_where_the_decision_is_made(method: str) -> None:
    cam, zero = fold_mean_map([make_cam(RegionNet(), method, target_layer="features")], region_input())
    assert not zero
    assert cam.shape == (12, 10)
    assert cam.min() >= 0.0
    assert cam.max() == pytest.approx(1.0)
    assert hot_where_important(cam)
    assert cam[DISTRACTOR].max() < 0.05  # active but unimportant stays cold


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_monais_default_normaliser_flips_the_map_and_the_check_catches_it() -> None:
    flipped = GradCAM(nn_module=RegionNet(), target_layers="features")(region_input(), class_idx=0)
    flipped = flipped.detach().numpy()[0, 0]
    assert not hot_where_important(flipped)  # tutorials issue 1796: (min, max) -> (1, 0)
    assert hot_where_important(1.0 - flipped)


def test_a_map_with_nothing_positive_stays_zero_and_is_flagged() -> None:
    cam, zero = fold_mean_map([make_cam(RegionNet(), "gradcam", target_layer="features")], region_input(bright=False))
    assert zero
    assert not cam.any()
    out, flagged = normalise_map(np.array([[-1.0, -2.0], [np.nan, 0.0]]))
    assert flagged
    assert not out.any()
    out, flagged = normalise_map(np.array([[-1.0, 2.0], [4.0, 0.0]]))
    assert not flagged
    np.testing.assert_allclose(out, [[0.0, 0.5], [1.0, 0.0]])


def test_fold_maps_are_scaled_before_they_are_averaged() -> None:
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    a[0, 0], b[2, 2] = 100.0, 1.0  # a strong and a weak model pointing at different places
    cam, zero = fold_mean_map([lambda _x: a, lambda _x: b], torch.zeros(1))
    assert not zero
    assert cam[0, 0] == pytest.approx(1.0)
    assert cam[2, 2] == pytest.approx(1.0)


# --- case selection ------------------------------------------------------------------------------


def hand_made_predictions() -> pd.DataFrame:
    rows = [
        # (image_id, target, score, fold)
        ("n0", 0, 0.90, 0),
        ("n1", 0, 0.70, 1),
        ("n2", 0, 0.55, 0),
        ("p0", 1, 0.05, 1),
        ("p1", 1, 0.30, 0),
        ("p2", 1, 0.45, 1),
        ("p3", 1, 0.60, 0),
        ("p4", 1, 0.80, 1),
        ("p5", 1, 0.90, 0),
        ("p5", 1, 1.00, 1),  # scored by two fold models: mean 0.95, folds "0;1"
        ("p6", 1, 0.52, 0),
        ("p7", 1, 0.75, 1),
        ("n3", 0, 0.10, 1),
        ("n4", 0, 0.25, 0),
        ("n5", 0, 0.40, 1),
        ("n6", 0, 0.49, 0),
        ("n7", 0, 0.15, 1),
    ]
    df = pd.DataFrame(rows, columns=["image_id", "target", "score", "fold"])
    df["patient_id"] = "X" + df["image_id"]
    df["label"] = df["target"].map({0: "benign", 1: "malignant"})
    return df


def test_cases_are_chosen_by_the_recorded_rule() -> None:
    cases, counts = select_cases(hand_made_predictions(), threshold=0.5, n_cases=10)
    picked = cases.groupby("category", sort=False)["image_id"].apply(list).to_dict()
    assert picked == {
        "false_positive": ["n0", "n1"],  # most confident first
        "false_negative": ["p0", "p1"],
        "borderline": ["n6", "p6"],  # nearest 0.5, on either side
        "true_positive": ["p7", "p4"],  # nearest the TP median 0.75 (p6 already taken)
        "true_negative": ["n4", "n7"],  # nearest the TN median 0.25
    }
    assert cases.image_id.is_unique
    assert all(c["requested"] == c["found"] == 2 for c in counts.values())
    again, _ = select_cases(hand_made_predictions().sample(frac=1.0, random_state=3), threshold=0.5, n_cases=10)
    pd.testing.assert_frame_equal(cases, again)  # the row order of the table does not matter

    cases, counts = select_cases(hand_made_predictions(), threshold=0.5, n_cases=20)
    assert counts["false_positive"] == {"requested": 4, "found": 3, "available": 3}
    assert "false positive: 3 of 4 requested (only 3 available)" in shortfalls(counts)
    assert counts["false_negative"]["found"] == min(5, counts["false_negative"]["available"])  # 4 + the 1 left
    assert len(cases) == min(20, sum(1 for _ in hand_made_predictions().groupby("patient_id")))

    # a model without errors is still shown: the error categories' shares go to the next ones
    perfect = hand_made_predictions().assign(score=lambda d: np.where(d["target"] == 1, 0.9, 0.1))
    shown, shown_counts = select_cases(perfect, threshold=0.5, n_cases=4)
    assert shown_counts["false_positive"]["found"] == shown_counts["false_negative"]["found"] == 0
    assert len(shown) == 4
    assert set(shown["category"]) <= {"borderline", "true_positive", "true_negative"}
    p5 = cases.set_index("image_id").loc["p5"]
    assert p5.fold == "0;1"
    assert p5.score == pytest.approx(0.95)
    assert p5.predicted == 1
    assert split_budget(12) == {
        "false_positive": 3,
        "false_negative": 3,
        "borderline": 2,
        "true_positive": 2,
        "true_negative": 2,
    }


# --- tiny real studies ---------------------------------------------------------------------------

# an oblique-free but flipped and anisotropic affine (L-P-S-like first axis), so that a map written
# with the model grid's affine, an identity affine or without the reorientation would be caught
AFFINE_3D = np.array([[-1.5, 0, 0, 30.0], [0, 1.0, 0, -12.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def _write_cohort(root: Path, shape: tuple[int, ...], affine: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        vol = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
        if i % 2:
            centre = [int(rng.integers(2, s - 2)) for s in shape]
            vol[tuple(slice(c - 1, c + 2) for c in centre)] += 6.0
        rel = f"images/P{i:03d}.nii.gz"
        (root / "images").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(vol, affine), str(root / rel))
        rows.append({"patient_id": f"P{i:03d}", "image": rel, "label": i % 2})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def _study(root: Path, dims: int) -> tuple[Path, WorkflowConfig, Cohort]:
    from pipeline.study import run_study

    shape, affine = ((7, 8, 9), AFFINE_3D) if dims == 3 else ((17, 23), np.diag([0.5, 0.8, 1.0, 1.0]))
    manifest = _write_cohort(root, shape, affine)
    wf = {
        "study": f"explain{dims}d",
        "manifest": "manifest.csv",
        "task": {"label": "label", "positive": 1},
        "model": {"arch": "resnet10", "spatial_dims": dims, "stem_stride": 1 if dims == 2 else 2},
        "data": {"spatial_size": [16, 16] if dims == 2 else [8, 8, 8], "intensity": {"mode": "zscore"}},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.001, "seed": 0},
        "validation": {"scheme": "kfold", "folds": 2},
        "evaluation": {"aggregate": "mean", "n_bootstrap": 100},
        "report": {"explain": {"cases": 6, "method": "gradcam"}},
        "output_dir": "reports",
    }
    path = manifest.parent / "wf.yaml"
    path.write_text(yaml.safe_dump(wf, sort_keys=False))
    cfg, cohort = validate_workflow(path)
    return run_study(cfg, cohort, progress=False).run_dir, cfg, cohort


@pytest.fixture(scope="module")
def study_2d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkflowConfig, Cohort]:
    return _study(tmp_path_factory.mktemp("explain2d"), 2)


@pytest.fixture(scope="module")
def study_3d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkflowConfig, Cohort]:
    return _study(tmp_path_factory.mktemp("explain3d"), 3)


def with_explain(cfg: WorkflowConfig, **changes: Any) -> WorkflowConfig:
    explain = dataclasses.replace(cfg.report.explain, **changes)
    return dataclasses.replace(cfg, report=dataclasses.replace(cfg.report, explain=explain))


def check_folder(run: Path, record: dict[str, Any]) -> pd.DataFrame:
    folder = run / "explanations"
    assert record["skipped"] is None, record
    assert record["seed"] == 0
    assert record["method"] == "gradcam"
    # auto: the deepest stage at least MIN_GRID voxels wide (or the widest, at these tiny inputs)
    grids = {k: tuple(v) for k, v in record["feature_map"]["stages"].items()}
    assert record["target_layer"] == choose_layer(grids, "auto")
    assert set(record["counts"]) == {"false_positive", "false_negative", "borderline", "true_positive", "true_negative"}
    assert sum(c["requested"] for c in record["counts"].values()) == 6
    cases = pd.read_csv(folder / "cases.csv", dtype={"image_id": str, "patient_id": str, "fold": str})
    assert list(cases.columns) == list(CASE_COLUMNS)
    assert len(cases) == record["n_cases"] == sum(c["found"] for c in record["counts"].values())
    preds = pd.read_csv(run / "predictions.csv", dtype={"image_id": str, "fold": str}).set_index("image_id")
    for row in cases.itertuples():
        assert row.fold == preds.loc[row.image_id, "fold"]  # the fold model that held the case out
        assert row.score == pytest.approx(preds.loc[row.image_id, "score"])
        picture = mpimg.imread(io.BytesIO((folder / row.png).read_bytes()), format="png")
        assert picture.ndim == 3
        assert picture.shape[0] > 100
    assert not list(run.glob(".explanations*"))  # no staging folder left
    return cases


def test_a_2d_run_is_explained_and_a_failing_case_is_recorded(study_2d: tuple[Path, WorkflowConfig, Cohort]) -> None:
    run, cfg, cohort = study_2d
    record = explain_run(run, cfg, cohort, device="cpu")
    cases = check_folder(run, record)
    assert (cases.map_max_voxel.str.count(",") == 1).all()
    text = (run / "explanations" / "explanations.json").read_text()
    assert str(run.parent.parent.parent) not in text  # no path of the cohort or run

    # one image gone (its folder name identifies the patient): recorded, skipped, the others go on
    victim = cases.image_id.iloc[0]
    table = cohort.table.copy()
    table.loc[table.image_id == victim, "path"] = "/exports/DOE_JOHN_1950/scan.nii.gz"
    record = explain_run(run, cfg, dataclasses.replace(cohort, table=table), device="cpu")
    assert [f["image_id"] for f in record["failures"]] == [victim]
    assert "DOE_JOHN" not in (run / "explanations" / "explanations.json").read_text()
    assert record["n_cases"] == len(cases) - 1

    loaded = load_explanations(run)
    assert loaded is not None
    assert loaded["record"]["n_cases"] == len(cases) - 1
    assert [r["image_id"] for r in loaded["cases"]] == [i for i in cases.image_id if i != victim]
    assert set(loaded["figures"]) == {r["image_id"] for r in loaded["cases"]}
    assert all(png.startswith(b"\x89PNG") for png in loaded["figures"].values())


def test_a_3d_run_writes_maps_in_the_source_geometry(study_3d: tuple[Path, WorkflowConfig, Cohort]) -> None:
    run, cfg, cohort = study_3d
    record = explain_run(run, with_explain(cfg, nifti=True), cohort, device="cpu")
    cases = check_folder(run, record)
    assert (cases.map_max_voxel.str.count(",") == 2).all()
    paths = cohort.table.set_index("image_id")["path"]
    for row in cases.itertuples():
        source = nib.load(paths[row.image_id])
        written = nib.load(run / "explanations" / row.nifti)
        assert written.shape == source.shape == (7, 8, 9)
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
        data = written.get_fdata()
        assert data.min() >= 0.0
        assert data.max() <= 1.0


def test_the_inverse_puts_the_map_back_on_the_source_voxels(study_3d: tuple[Path, WorkflowConfig, Cohort]) -> None:
    """A ramp along the first array axis of a flipped image, taken to the model grid and back: a
    missed reorientation or a wrong axis order would anti-correlate or decorrelate it."""
    run, cfg, _ = study_3d
    ramp = np.broadcast_to(np.arange(7, dtype=np.float32)[:, None, None], (7, 8, 9)).copy()
    ramp[:, :4, :] += 3.0  # and a step along the second axis
    path = run.parent / "ramp.nii.gz"
    nib.save(nib.Nifti1Image(ramp, AFFINE_3D), str(path))
    chain = preprocessing(cfg)
    image = chain({KEY: str(path), "image_id": "ramp"})[KEY]
    model_grid = image[0].numpy()
    back, affine = to_source_grid((model_grid - model_grid.min()) / np.ptp(model_grid), image, chain)
    assert back.shape == ramp.shape
    np.testing.assert_allclose(affine, AFFINE_3D)
    assert np.corrcoef(back.ravel(), ramp.ravel())[0, 1] > 0.95


def test_skipped_when_off_or_the_model_is_too_large_for_the_cpu(
    study_3d: tuple[Path, WorkflowConfig, Cohort],
) -> None:
    run, cfg, cohort = study_3d
    record = explain_run(run, with_explain(cfg, cpu_max_parameters=1000), cohort, device="cpu")
    assert "no GPU" in record["skipped"]
    assert "cpu_max_parameters" in record["skipped"]
    assert record["n_parameters"] > 1000
    assert sorted(p.name for p in (run / "explanations").iterdir()) == ["explanations.json"]
    loaded = load_explanations(run)
    assert loaded is not None
    assert loaded["cases"] == []
    assert loaded["figures"] == {}
    assert "cpu_max_parameters" in loaded["record"]["skipped"]

    record = explain_run(run, with_explain(cfg, cases=0), cohort, device="cpu")
    assert record["skipped"] == "report.explain.cases is 0"
    assert load_explanations(run.parent / "no-such-run") is None


def test_a_broken_run_folder_gives_a_record_not_an_exception(tmp_path: Path) -> None:
    record = explain_run(tmp_path, device="cpu")
    assert record["skipped"].startswith("explanations failed: ")
    assert str(tmp_path) not in record["skipped"]
    assert (tmp_path / "explanations" / "explanations.json").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_gpu_gives_the_cpus_maps(study_3d: tuple[Path, WorkflowConfig, Cohort]) -> None:
    run, cfg, cohort = study_3d
    cpu = explain_run(run, cfg, cohort, device="cpu")
    cpu_cases = pd.read_csv(run / "explanations" / "cases.csv", dtype=str)
    gpu = explain_run(run, cfg, cohort, device="cuda")
    assert gpu["device"] == "cuda"
    assert gpu["skipped"] is None
    assert not gpu["failures"]
    gpu_cases = pd.read_csv(run / "explanations" / "cases.csv", dtype=str)
    assert cpu["counts"] == gpu["counts"]
    pd.testing.assert_series_equal(cpu_cases.image_id, gpu_cases.image_id)


def test_the_explained_layer_is_the_deepest_that_can_still_locate() -> None:
    demo = {"layer1": (12, 12, 8), "layer2": (6, 6, 4), "layer3": (3, 3, 2), "layer4": (2, 2, 1)}
    assert choose_layer(demo, "auto") == "layer2"  # layer4 of the demo's 48x48x32 input is 2x2x1
    assert choose_layer({**demo, "layer3": (4, 4, 4)}, "auto") == "layer3"
    assert choose_layer({"layer1": (2, 2), "layer2": (1, 1)}, "auto") == "layer1"  # none wide enough: the widest
    assert choose_layer(demo, "layer4") == "layer4"  # a named stage is used as it is


def test_cases_are_patients_classified_as_the_study_classifies_them() -> None:
    rows = [
        # a true-negative patient whose second image alone would cross the threshold
        ("q1", "Q", 0, 0.30, 0),
        ("q2", "Q", 0, 0.55, 0),
        # a false-positive patient: mean 0.6, shown by its highest-scoring image
        ("r1", "R", 0, 0.50, 1),
        ("r2", "R", 0, 0.70, 1),
        # a true positive and a false negative with one image each
        ("s1", "S", 1, 0.90, 0),
        ("t1", "T", 1, 0.20, 1),
    ]
    df = pd.DataFrame(rows, columns=["image_id", "patient_id", "target", "score", "fold"])
    df["label"] = df["target"].astype(str)
    cases, counts = select_cases(df, threshold=0.5, n_cases=10, aggregate="mean")
    by_patient = cases.set_index("patient_id")
    assert by_patient.loc["R", "category"] == "false_positive"
    assert by_patient.loc["R", "image_id"] == "r2"  # the image that drove the positive call
    assert by_patient.loc["R", "score"] == pytest.approx(0.6)
    assert by_patient.loc["R", "image_score"] == pytest.approx(0.7)
    assert by_patient.loc["Q", "category"] != "false_positive"
    assert by_patient.loc["Q", "predicted"] == 0
    assert by_patient.loc["Q", "image_id"] == "q1"  # a negative call is shown by its lowest-scoring image
    assert counts["false_positive"]["available"] == 1  # one patient, however many images
    assert by_patient.loc["T", "category"] == "false_negative"
    assert cases["patient_id"].is_unique
    assert (
        select_cases(df, threshold=0.5, n_cases=10, aggregate="max")[0].set_index("patient_id").loc["Q", "predicted"]
        == 1
    )  # with max, Q's second image makes the call


def test_a_coronal_images_peak_is_reported_in_ras() -> None:
    from pipeline.explain import ras_world
    from pipeline.io.geometry import plane_affine

    coronal = np.array([[0.0, 0.7, 0, 10], [0, 0, 1, -30], [-0.5, 0, 0, 40], [0, 0, 0, 1]])  # rows along -S
    voxel = np.array([3.0, 4.0, 0.0, 1.0])
    turned = plane_affine(coronal) @ voxel  # what the preprocessed image's affine gives
    ras = ras_world(turned[:3], {"original_affine": coronal}, dims=2)
    assert ras == pytest.approx((coronal @ voxel)[:3])
    assert ras_world(turned[:3], {"original_affine": coronal}, dims=3) == pytest.approx(turned[:3])
