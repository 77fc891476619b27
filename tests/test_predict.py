"""`cohortnet predict` and `cohortnet export`: a finished study applied to new cohorts."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cohorts import cohort_factory, copy_of, workflow_factory

from pipeline.cli import main

FOLD_COLS = ["score_fold_0", "score_fold_1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-fold study of 12 patients (one with two scans), trained once for the module."""
    base = tmp_path_factory.mktemp("predict_study")
    manifest = cohort_factory(base)(n_patients=12, second_scan=(0,))
    assert main(["run", str(workflow_factory(base)(manifest)), "--run-id", "s1"]) == 0
    return base


@pytest.fixture
def study(trained: Path, tmp_path: Path) -> Path:
    """The test's own copy of the trained study (its cohort, workflow and run folder s1)."""
    return copy_of(trained, tmp_path) / "reports" / "tiny" / "s1"


def new_cohort(make_cohort: Callable[..., Path], n: int = 6, folder: str = "new", labels: bool = True) -> Path:
    """Other patients (other ids, other images) of the same kind as the study's."""
    manifest = make_cohort(n_patients=n, second_scan=(1,), seed=7, folder=folder)
    df = pd.read_csv(manifest, dtype=str)
    df["patient_id"] = "N" + df["patient_id"]
    if not labels:
        df = df.drop(columns=["label"])
    df.to_csv(manifest, index=False)
    return manifest


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"patient_id": str, "image_id": str})


def test_run_folder_and_archive_predict_alike_with_the_locked_threshold(
    study: Path, tmp_path: Path, make_cohort: Callable[..., Path]
) -> None:
    manifest = new_cohort(make_cohort)
    assert main(["predict", str(study), str(manifest), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["export", str(study), str(tmp_path / "model.zip")]) == 0
    assert main(["export", "--verify", str(tmp_path / "model.zip")]) == 0
    assert (
        main(["predict", str(tmp_path / "model.zip"), str(manifest), "--out", str(tmp_path / "b"), "--no-progress"])
        == 0
    )
    a, b = read(tmp_path / "a" / "predictions.csv"), read(tmp_path / "b" / "predictions.csv")
    assert len(a) == 7
    assert a["image_id"].tolist() == b["image_id"].tolist()
    np.testing.assert_array_equal(a[["score", *FOLD_COLS]].to_numpy(), b[["score", *FOLD_COLS]].to_numpy())
    np.testing.assert_allclose(a["score"], a[FOLD_COLS].mean(axis=1))
    study_metrics = json.loads((study / "metrics.json").read_text())
    threshold = study_metrics["threshold"]
    assert (a["decision"] == (a["score"] >= threshold)).all()
    pp = read(tmp_path / "a" / "per_patient.csv")
    assert len(pp) == 6
    assert (pp["decision"] == (pp["score"] >= threshold)).all()
    two = a[a["patient_id"] == "NP001"]["score"].mean()  # the patient with two images: the study's mean
    assert pp.set_index("patient_id").loc["NP001", "score"] == pytest.approx(two)
    external = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert external["threshold"] == pytest.approx(threshold)
    assert external["threshold_source"] == "fixed"
    assert external["n_patients"] == 6
    prov = json.loads((tmp_path / "a" / "provenance.json").read_text())
    assert {"model_sha256", "config_sha256", "manifest_sha256", "created", "code"} <= set(prov)
    assert (a["predict_id"] == prov["predict_id"]).all()
    assert (pp["predict_id"] == prov["predict_id"]).all()


def test_one_fold_or_the_best_fold_can_be_chosen(study: Path, tmp_path: Path, make_cohort: Callable[..., Path]) -> None:
    manifest = new_cohort(make_cohort)
    out = tmp_path / "one"
    assert main(["predict", str(study), str(manifest), "--out", str(out), "--folds", "1", "--no-progress"]) == 0
    one = read(out / "predictions.csv")
    assert "score_fold_0" not in one.columns
    assert (one["score"] == one["score_fold_1"]).all()
    x = tmp_path / "x"
    assert main(["predict", str(study), str(manifest), "--out", str(x), "--folds", "7", "--no-progress"]) == 2
    assert not (x / "predict.json").exists()  # refused before the folder is stamped with fold 7
    assert main(["predict", str(study), str(manifest), "--out", str(x), "--folds", "0", "--no-progress"]) == 0


def test_study_patients_are_refused_unless_allowed(
    study: Path, tmp_path: Path, make_cohort: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.privacy import plain_digest

    own = tmp_path / "cohort" / "manifest.csv"
    assert main(["predict", str(study), str(own), "--out", str(tmp_path / "p")]) == 2
    assert "12 patient(s), 13 image(s) of this cohort trained or validated the study's models" in caplog.text
    assert f"manifest lines 2-14 of {own}" in caplog.text  # named by line, never by id or digest
    assert plain_digest("P000") not in caplog.text
    assert "P000" not in caplog.text
    assert "P011" not in caplog.text
    assert not (tmp_path / "p" / "predictions.csv").exists()
    assert main(["predict", str(study), str(own), "--out", str(tmp_path / "p"), "--allow-study-patients"]) == 0
    assert json.loads((tmp_path / "p" / "provenance.json").read_text())["study_patients_predicted"] == 12
    # the same images under new ids are still the study's images
    renamed = pd.read_csv(own, dtype=str).assign(patient_id=lambda d: "R" + d["patient_id"])
    renamed.to_csv(tmp_path / "cohort" / "renamed.csv", index=False)
    assert main(["predict", str(study), str(tmp_path / "cohort" / "renamed.csv"), "--out", str(tmp_path / "r")]) == 2


def test_a_holdout_studys_test_patients_are_not_study_patients(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    """Only training and validation count as leakage: the held-out test split can be predicted."""
    manifest = make_cohort(n_patients=16, split=True)
    workflow = make_workflow(manifest, validation={"scheme": "holdout"})
    assert main(["run", str(workflow), "--run-id", "h"]) == 0
    run = tmp_path / "reports" / "tiny" / "h"
    table = pd.read_csv(manifest, dtype=str)
    for split, code in (("test", 0), ("val", 2), ("train", 2)):
        part = manifest.parent / f"{split}.csv"
        table[table["split"] == split].to_csv(part, index=False)
        assert main(["predict", str(run), str(part), "--out", str(tmp_path / f"p_{split}"), "--no-progress"]) == code
    study = read(run / "predictions.csv").sort_values("image_id")
    again = read(tmp_path / "p_test" / "predictions.csv").sort_values("image_id")
    assert again["image_id"].tolist() == study["image_id"].tolist()
    # the study may score in bf16 autocast (a CPU with native bf16); predict scores in fp32
    np.testing.assert_allclose(again["score"], study["score"], atol=2e-3)


def test_a_bad_scan_is_skipped_and_a_rerun_resumes(
    study: Path, tmp_path: Path, make_cohort: Callable[..., Path]
) -> None:
    manifest = new_cohort(make_cohort)
    bad = manifest.parent / "images" / "P003_0.nii.gz"
    good = bad.read_bytes()
    bad.write_bytes(good[:100])
    out = tmp_path / "p"
    args = ["predict", str(study), str(manifest), "--out", str(out), "--chunk", "2", "--no-progress"]
    assert main(args) == 8
    excluded = read(out / "excluded.csv")
    assert excluded["image_id"].tolist() == ["NP003#1"]
    assert excluded["reason"].iloc[0]
    assert len(read(out / "predictions.csv")) == 6
    parts = sorted((out / "parts").iterdir())
    assert main(args) == 8  # nothing redone: the failure is not retried without --retry-failed
    assert sorted((out / "parts").iterdir()) == parts
    bad.write_bytes(good)
    assert main([*args, "--retry-failed"]) == 0
    assert len(read(out / "predictions.csv")) == 7
    assert read(out / "excluded.csv").empty


def test_a_crash_mid_run_loses_at_most_one_chunk(study: Path, tmp_path: Path, make_cohort: Callable[..., Path]) -> None:
    manifest = new_cohort(make_cohort)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for out in (whole, cut):
        assert main(["predict", str(study), str(manifest), "--out", str(out), "--chunk", "3", "--no-progress"]) == 0
    lines = (cut / "ledger.jsonl").read_text().splitlines()
    (cut / "ledger.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:17])  # a crash inside an append
    for p in sorted((cut / "parts").iterdir())[1:]:
        p.unlink()
    (cut / "predictions.csv").unlink()
    assert main(["predict", str(study), str(manifest), "--out", str(cut), "--chunk", "3", "--no-progress"]) == 0
    cols = ["image_id", "score", *FOLD_COLS]
    pd.testing.assert_frame_equal(read(whole / "predictions.csv")[cols], read(cut / "predictions.csv")[cols])


def test_a_folder_is_refused_for_another_model_or_manifest(
    study: Path, tmp_path: Path, make_cohort: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "p"
    assert main(["predict", str(study), str(new_cohort(make_cohort)), "--out", str(out), "--no-progress"]) == 0
    other = new_cohort(make_cohort, n=4, folder="other")
    assert main(["predict", str(study), str(other), "--out", str(out), "--no-progress"]) == 1
    assert "another manifest_sha256" in caplog.text


def test_unlabelled_cohort_and_raw_folder(study: Path, tmp_path: Path, make_cohort: Callable[..., Path]) -> None:
    manifest = new_cohort(make_cohort, labels=False)
    out = tmp_path / "u"
    assert main(["predict", str(study), str(manifest), "--out", str(out), "--no-progress"]) == 0
    assert "label" not in read(out / "predictions.csv").columns
    assert not (out / "metrics.json").exists()
    folder = tmp_path / "raw"
    (manifest.parent / "images").rename(folder)
    raw_out = tmp_path / "r"
    assert main(["predict", str(study), str(folder), "--out", str(raw_out), "--no-progress"]) == 0
    assert len(read(raw_out / "predictions.csv")) == 7
    assert (raw_out / "scan" / "manifest.csv").is_file()


def test_a_one_class_or_partly_labelled_cohort_is_scored(
    study: Path, tmp_path: Path, make_cohort: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The study's label rules do not apply to a new cohort: every image is scored, and the metrics
    come from the labelled patients when they hold both classes (a warning says why otherwise)."""
    manifest = new_cohort(make_cohort)
    table = pd.read_csv(manifest, dtype=str)
    table.assign(label="0").to_csv(manifest.parent / "one.csv", index=False)
    out = tmp_path / "one"
    assert main(["predict", str(study), str(manifest.parent / "one.csv"), "--out", str(out), "--no-progress"]) == 0
    assert len(read(out / "predictions.csv")) == 7
    assert not (out / "metrics.json").exists()
    assert "no external-validation metrics: 6 of 6 scored patient(s) have a label (6 labelled '0')" in (
        capsys.readouterr().err
    )
    blank = table["patient_id"].isin(["NP002", "NP003"]) | table.index.isin(
        [table.index[table["patient_id"] == "NP001"][1]]
    )
    table.assign(label=table["label"].where(~blank, "")).to_csv(manifest.parent / "part.csv", index=False)
    out = tmp_path / "part"
    assert main(["predict", str(study), str(manifest.parent / "part.csv"), "--out", str(out), "--no-progress"]) == 0
    assert len(read(out / "predictions.csv")) == 7
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n_patients"], metrics["n_images"]) == (4, 5)  # NP001's unlabelled scan is NP001's
    assert "on the 4 of 6 scored patients that have a label" in capsys.readouterr().err
    pp = read(out / "per_patient.csv").set_index("patient_id")
    assert pp.loc["NP001", "label"] == 1
    assert pp.loc[["NP002", "NP003"], "label"].isna().all()


def test_a_damaged_or_altered_archive_is_refused(study: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = tmp_path / "model.zip"
    assert main(["export", str(study), str(archive)]) == 0
    with zipfile.ZipFile(archive) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    altered = tmp_path / "altered.zip"
    with zipfile.ZipFile(altered, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data.replace(b'"threshold": ', b'"threshold": 1') if name == "model.json" else data)
        zf.writestr("../evil.py", b"import os")
    assert main(["export", "--verify", str(altered)]) == 2
    assert "model.json does not match its recorded SHA-256" not in caplog.text  # names are checked first
    assert "unexpected member '../evil.py'" in caplog.text
    caplog.clear()
    with zipfile.ZipFile(altered, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data.replace(b'"threshold": ', b'"threshold": 1') if name == "model.json" else data)
    assert main(["export", "--verify", str(altered)]) == 2
    assert "model.json does not match its recorded SHA-256" in caplog.text
    (tmp_path / "plain.zip").write_text("not a zip")
    assert main(["predict", str(tmp_path / "plain.zip"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    from pipeline.predict.archive import write_archive

    info = json.loads(members.pop("model.json"))
    members.pop("archive.json")
    write_archive({**members, "model.json": json.dumps({**info, "calibrator": "platt"}).encode()}, altered)
    caplog.clear()
    assert main(["predict", str(altered), str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "records a calibrator (platt), which this version of cohortnet cannot apply" in caplog.text


def test_shards_split_by_patient_and_merge_to_the_single_run(
    study: Path, tmp_path: Path, make_cohort: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    manifest = new_cohort(make_cohort, n=8)
    single = tmp_path / "single"
    assert main(["predict", str(study), str(manifest), "--out", str(single), "--no-progress"]) == 0
    shards = [tmp_path / f"s{i}" for i in range(3)]
    for i, folder in enumerate(shards):
        assert (
            main(["predict", str(study), str(manifest), "--out", str(folder), "--shard", f"{i}/3", "--no-progress"])
            == 0
        )
    ids = [set(read(f / "predictions.csv")["patient_id"]) for f in shards]
    assert sum(len(s) for s in ids) == 8
    assert not (ids[0] & ids[1])
    assert not (ids[1] & ids[2])
    assert not (ids[0] & ids[2])
    merged = tmp_path / "merged"
    assert main(["predict", "--merge", *map(str, shards[:2]), "--out", str(merged)]) == 2
    assert "shard 2/3 is missing" in caplog.text
    assert main(["predict", "--merge", *map(str, shards), "--out", str(merged)]) == 0
    cols = ["image_id", "score", *FOLD_COLS]
    a = read(single / "predictions.csv")[cols].sort_values("image_id").reset_index(drop=True)
    b = read(merged / "predictions.csv")[cols].sort_values("image_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    m1, m2 = (json.loads((f / "metrics.json").read_text()) for f in (single, merged))
    assert m1["auc"] == m2["auc"]
    assert m1["sensitivity"] == m2["sensitivity"]
    merged_id = json.loads((merged / "provenance.json").read_text())["predict_id"]
    for name in ("predictions.csv", "per_patient.csv", "excluded.csv"):
        assert (read(merged / name)["predict_id"] == merged_id).all()
    assert m2["predict_id"] == merged_id
    # a shard rerun with --retry-failed, killed after predictions.csv and before excluded.csv
    kept = {f: {n: (f / n).read_bytes() for n in ("predictions.csv", "excluded.csv")} for f in shards}
    images = read(shards[0] / "predictions.csv")
    images.assign(predict_id="0123456789abcdef").to_csv(shards[0] / "predictions.csv", index=False)
    stale = pd.DataFrame({"image_id": [read(shards[2] / "predictions.csv")["image_id"].iloc[0]]})
    prov2 = json.loads((shards[2] / "provenance.json").read_text())["predict_id"]
    stale.assign(reason="corrupt_file", message="cut", predict_id=prov2).to_csv(shards[2] / "excluded.csv", index=False)
    caplog.clear()
    assert main(["predict", "--merge", *map(str, shards), "--out", str(merged)]) == 2
    assert f"{shards[0]}: shard 0/3: predictions.csv is not from the run that wrote provenance.json" in caplog.text
    assert f"{shards[2]}: shard 2/3: 1 image(s) are both in predictions.csv and excluded.csv" in caplog.text
    assert "rerun that shard" in caplog.text
    for folder, tables in kept.items():
        for name, data in tables.items():
            (folder / name).write_bytes(data)
    # a shard that has not finished is refused
    (shards[1] / "provenance.json").unlink()
    assert main(["predict", "--merge", *map(str, shards), "--out", str(merged)]) == 2
    assert "shard 1/3 is incomplete" in caplog.text


def test_shard_index_from_a_slurm_array() -> None:
    from pipeline.commands.predict import parse_shard
    from pipeline.errors import ValidationError

    assert parse_shard("2/4", {}) == (2, 4)
    assert parse_shard("auto/4", {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1"}) == (3, 4)
    for bad in ("4/4", "auto/4", "x/2", "1/0"):
        with pytest.raises(ValidationError):
            parse_shard(bad, {})


def test_dask_fan_out_equals_the_single_run_after_a_worker_is_killed(
    study: Path, tmp_path: Path, make_cohort: Callable[..., Path]
) -> None:
    import os
    import signal
    import threading
    import time

    distributed = pytest.importorskip("distributed")
    from pipeline.predict.fanout import dask_predict
    from pipeline.predict.run import PredictOptions

    manifest = new_cohort(make_cohort, n=8)
    single = tmp_path / "single"
    assert main(["predict", str(study), str(manifest), "--out", str(single), "--no-progress"]) == 0
    out = tmp_path / "fanned"
    options = PredictOptions(chunk=1, workers=0, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result: dict[str, object] = {}
        worker = threading.Thread(
            target=lambda: result.update(r=dask_predict(study, manifest, out, options, cluster.scheduler_address, 4))
        )
        worker.start()
        deadline = time.monotonic() + 120
        while not list(out.glob("shards/*/ledger.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        with distributed.Client(cluster) as client:
            victim = next(iter(client.run(os.getpid).values()))
        os.kill(victim, signal.SIGKILL)  # a worker lost mid-run: its task is retried and resumes
        worker.join(timeout=300)
    assert "r" in result
    cols = ["image_id", "score", *FOLD_COLS]
    a = read(single / "predictions.csv")[cols].sort_values("image_id").reset_index(drop=True)
    b = read(out / "predictions.csv")[cols].sort_values("image_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert len(list(out.glob("shards/*/provenance.json"))) == 4
