"""Bad input at the command line ends in exit 2 with the file and the problem named: never a
traceback, never a silently wrong result, never a user's file replaced."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import runfolder
from pipeline.cli import main
from pipeline.errors import ValidationError

DIGEST = "0" * 64


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --------------------------------------------------------------------------- demo


def test_demo_never_replaces_a_manifest_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = tmp_path / "real.csv"
    real.write_text("patient_id,image,label\nP1,a.nii.gz,1\n")
    workflow = tmp_path / "w.yaml"
    workflow.write_text("study: mine\nmanifest: real.csv\n")
    assert main(["demo", "--workflow", str(workflow), "--no-run", "--patients", "10"]) == 2
    err = _err(capsys)
    assert str(real) in err
    assert "not written by the demo generator" in err
    assert real.read_text() == "patient_id,image,label\nP1,a.nii.gz,1\n"
    assert not (tmp_path / "real").exists()  # nothing written either


def test_the_generator_replaces_only_its_own_manifest(tmp_path: Path) -> None:
    from pipeline.synthetic import CohortSpec, make_demo_cohort

    spec = CohortSpec(n_patients=4, matrix=16)
    images, manifest = tmp_path / "demo", tmp_path / "demo.csv"
    first = make_demo_cohort(images, manifest, spec)
    pd.testing.assert_frame_equal(first, make_demo_cohort(images, manifest, spec))  # its own: replaced
    # the image folder's marker from before it named the manifest: a CSV with the demo's header is its own
    (images / ".cohortnet-demo").write_text("written by pipeline.synthetic.make_demo_cohort; safe to delete\n")
    make_demo_cohort(images, manifest, spec)
    other = tmp_path / "other.csv"
    for path, text in ((manifest, "patient_id,image,label\n"), (other, first.to_csv(index=False))):
        path.write_text(text)  # the user's file where the marker's manifest was, or another the marker does not name
        with pytest.raises(ValidationError, match="not written by the demo generator"):
            make_demo_cohort(images, path, spec)
        assert path.read_text() == text


def test_the_demo_manifest_is_its_own_after_its_image_folder_was_deleted(tmp_path: Path) -> None:
    """The marker says "safe to delete": deleting the images and rerunning ``make demo`` works, while
    a CSV with the demo's header whose images lie elsewhere is still refused."""
    import shutil

    from pipeline.synthetic import CohortSpec, make_demo_cohort

    spec = CohortSpec(n_patients=4, matrix=16)
    images, manifest = tmp_path / "demo", tmp_path / "demo.csv"
    first = make_demo_cohort(images, manifest, spec)
    shutil.rmtree(images)
    pd.testing.assert_frame_equal(first, make_demo_cohort(images, manifest, spec))
    shutil.rmtree(images)
    moved = first.assign(image="../elsewhere/" + first["image"])
    moved.to_csv(manifest, index=False)
    with pytest.raises(ValidationError, match="not written by the demo generator"):
        make_demo_cohort(images, manifest, spec)


# --------------------------------------------------------------------------- damaged run folders


@pytest.fixture
def run_dir(tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]) -> Path:
    """A finished run folder made by hand (no training): config, patients, splits, predictions,
    the folds' records and the seal, as a study writes them."""
    from pipeline.config import dump_config
    from pipeline.study import _patients_table, make_splits, validate_workflow

    cfg, cohort = validate_workflow(make_workflow(make_cohort(n_patients=8)))
    run = tmp_path / "reports" / "tiny" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    _patients_table(cohort).to_csv(run / "patients.csv", index=False)
    splits = make_splits(cfg, cohort)
    splits.to_csv(run / "splits.csv", index=False)
    rows = cohort.table[["patient_id", "image_id", "label"]].merge(splits, on="patient_id")
    rows = rows[rows["role"].isin(["test", "val"])].reset_index(drop=True)
    rows["score"] = np.linspace(0.1, 0.9, len(rows))
    rows = rows[["patient_id", "image_id", "fold", "label", "score", "role"]]
    for role, name in (("test", "predictions.csv"), ("val", "val_predictions.csv")):
        rows[rows["role"] == role].drop(columns="role").to_csv(run / name, index=False)
    for fold, part in rows.groupby("fold"):
        counts = part["role"].value_counts()
        record = {"fold": int(fold), "seal": DIGEST, "n_test": int(counts.get("test", 0))}
        (run / f"fold_{fold}").mkdir()
        (run / f"fold_{fold}" / "done.json").write_text(json.dumps({**record, "n_val": int(counts.get("val", 0))}))
        (run / f"fold_{fold}" / "model.pt").write_bytes(b"not a model")
    (run / "seal.json").write_text(json.dumps({"digest": DIGEST}))
    metrics = {"task": "binary", "threshold": 0.5, "label_col": "label", "positive": "1"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"image_id": cohort.table["image_id"], "sha256": "0" * 64}).to_csv(run / "data_hashes.csv")
    return run


def test_the_hand_made_run_folder_reports(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(run_dir)]) == 0, capsys.readouterr().err
    assert (run_dir / "report.html").is_file()


def _drop_score(path: Path) -> None:
    pd.read_csv(path).drop(columns="score").to_csv(path, index=False)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGE = {
    "empty predictions": ("predictions.csv", lambda p: p.write_bytes(b""), "the file is empty"),
    "empty splits": ("splits.csv", lambda p: p.write_bytes(b""), "the file is empty"),
    "no score column": ("predictions.csv", _drop_score, "no column 'score'"),
    "non-UTF-8 byte": ("predictions.csv", lambda p: p.write_bytes(p.read_bytes() + b"P\xe9,x,0,1,0.5\n"), "UTF-8"),
    "a score that is text": (
        "val_predictions.csv",
        lambda p: p.write_text(p.read_text() + "P0,x,0,1,high\n"),
        "not numbers",
    ),
    "truncated done.json": ("fold_0/done.json", _truncate, "not valid JSON"),
    "truncated seal.json": ("seal.json", _truncate, "not valid JSON"),
    "a patients table without targets": (
        "patients.csv",
        lambda p: p.write_text("patient_id,label\nP000,0\n"),
        "target",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_report_on_a_damaged_run_folder_names_the_file(
    run_dir: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    name, damage, why = DAMAGE[case]
    damage(run_dir / name)
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 2
    err = _err(capsys)
    assert f"run folder {run_dir}: {name} is damaged" in err
    assert why in err
    assert "rerun the study or restore the file" in err


def test_export_of_a_run_with_a_truncated_seal_names_it(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _truncate(run_dir / "seal.json")
    assert main(["export", str(run_dir), str(tmp_path / "model.zip")]) == 2
    assert "seal.json is damaged" in _err(capsys)


def test_a_run_from_before_the_seal_has_its_fold_records_read(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / "seal.json").unlink()
    records = runfolder.check_fold_records(run_dir, [0, 1])
    assert [r["fold"] for r in records] == [0, 1]
    _truncate(run_dir / "fold_1" / "done.json")  # export gets past the missing seal, to the next problem
    assert main(["export", str(run_dir), str(tmp_path / "model.zip")]) == 2
    assert "fold_1/done.json is damaged" in _err(capsys)


# --------------------------------------------------------------------------- workflows


def test_a_workflow_that_is_not_utf8_is_named(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    wf = make_workflow(make_cohort(n_patients=4))
    wf.write_bytes(wf.read_bytes() + b"# caf\xe9\n")
    assert main(["run", str(wf), "--check"]) == 2
    assert f"{wf} is not UTF-8 text (byte 0xe9 at line" in _err(capsys)
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {wf.name}\nstudy: child\n")
    assert main(["run", str(child), "--check"]) == 2
    assert f"{wf.name} is not UTF-8 text" in _err(capsys)


def test_cuda_on_a_machine_without_it_is_refused_before_the_run_folder(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    wf = make_workflow(make_cohort(n_patients=4))
    assert main(["run", str(wf), "--check", "--set", "train.device=cuda"]) == 2
    assert "train.device is cuda but no CUDA device is available" in _err(capsys)
    assert main(["run", str(wf), "--set", "train.device=cuda", "--run-id", "r"]) == 2
    assert "train.device" in _err(capsys)
    assert not (tmp_path / "reports").exists()


def test_check_refuses_the_run_id_the_run_refuses(
    make_cohort: Callable[..., Path], make_workflow: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wf = make_workflow(make_cohort(n_patients=4))
    assert main(["run", str(wf), "--check", "--run-id", "../x"]) == 2
    assert "--run-id must be a plain name" in _err(capsys)


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "is empty"), (b"patient_id,image,label\nP1,a.nii.gz,1\nP2,b.nii.gz,0,extra\n", "line 3 has 4 fields")],
)
def test_an_empty_or_malformed_manifest_says_so(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    why: str,
) -> None:
    manifest = make_cohort(n_patients=4)
    wf = make_workflow(manifest)
    manifest.write_bytes(content)
    assert main(["run", str(wf), "--check"]) == 2
    err = _err(capsys)
    assert why in err
    assert "path is not valid" not in err


# --------------------------------------------------------------------------- evaluate, compare, scan, convert


@pytest.fixture
def scores(tmp_path: Path) -> Path:
    path = tmp_path / "scores.csv"
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 20)
    pd.DataFrame({"label": labels, "score": labels + rng.normal(0, 1, 40), "s2": rng.random(40)}).to_csv(path)
    return path


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--ci-method", "bootstrap", "--seed", "-1"], "--seed must be 0 or more"),
        (["--score-col", "score", "s2"], "give --classes"),
        (["--score-col", "score", "--compare", "score"], "is the --score-col column itself"),
        (["--score-col", "score", "--classes", "0", "1"], "got one --score-col"),
        (["--score-col", "score", "s2", "--classes", "0"], "names 1 classes for 2 --score-col"),
    ],
)
def test_evaluate_refuses_options_that_do_not_name_one_task(
    scores: Path, capsys: pytest.CaptureFixture[str], extra: list[str], why: str
) -> None:
    argv = [str(scores), "--label-col", "label", *(["--score-col", "score"] if "--score-col" not in extra else [])]
    assert main(["evaluate", *argv, *extra]) == 2
    assert why in _err(capsys)


def test_evaluate_and_compare_name_an_output_that_is_a_file(
    scores: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "t.csv"
    taken.write_text("x\n")
    argv = ["evaluate", str(scores), "--label-col", "label", "--score-col", "score", "--out", str(taken)]
    assert main(argv) == 2
    assert f"{taken} exists and is not a folder" in _err(capsys)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(taken)]) == 2
    assert f"{taken} exists and is not a folder" in _err(capsys)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path), "--seed", "-1"]) == 2
    assert "--seed must be 0 or more" in _err(capsys)
    assert taken.read_text() == "x\n"


def test_a_write_below_a_file_names_the_file() -> None:
    from pipeline.reporting.artifacts import explain_os_error

    error = explain_os_error(FileExistsError(17, "File exists"), Path(__file__) / "out" / "metrics.json")
    assert str(error) == f"cannot write {Path(__file__)}/out/metrics.json: {Path(__file__)} exists and is not a folder"


def test_scan_checks_its_output_before_scanning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "adir").mkdir()
    assert main(["scan", str(tmp_path / "tree"), "--out", str(tmp_path / "adir"), "--no-progress"]) == 2
    assert f"--out {tmp_path / 'adir'} is a folder" in _err(capsys)
    assert list((tmp_path / "adir").iterdir()) == []


def test_convert_refuses_to_overwrite_its_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from volumes import write_nifti

    source = write_nifti(tmp_path / "x.nii.gz", np.ones((4, 4, 4), np.float32))
    before = source.read_bytes()
    assert main(["convert", str(source), str(tmp_path / "." / "x.nii.gz")]) == 2
    assert "is the source file itself" in _err(capsys)
    assert source.read_bytes() == before
