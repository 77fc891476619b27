"""What a shared `model.zip` discloses: no patient id, no guessable digest of one, no path of the
study machine; the patient check keyed by the leakage key kept beside the archive, and refusals
that name manifest lines, never patients."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from volumes import blob_volume, write_nifti

from pipeline.cli import main

PATIENTS = [f"MRN{k:04d}" for k in range(12)]  # a small, guessable id space
SITES = ("Hospital North", "Hospital South")  # the filter's values: they must not travel
HEX16 = re.compile(r"[0-9a-f]{16}")


def write_cohort(root: Path, ids: Sequence[str], seed: int, second_scan: Sequence[int] = ()) -> Path:
    """A manifest of fresh NIfTI images (new content) for ``ids``, labels alternating."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for i, pid in enumerate(ids):
        for scan in range(2 if i in second_scan else 1):
            rel = f"images/{pid}_{scan}.nii.gz"
            write_nifti(root / rel, blob_volume(rng, (7, 8, 9), bool(i % 2)))
            rows.append({"patient_id": pid, "image": rel, "label": i % 2, "site": SITES[(i // 2) % 2]})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@dataclasses.dataclass(frozen=True)
class Study:
    root: Path
    manifest: Path
    run: Path
    archive: Path
    key: Path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A tiny study with a filter, absolute image roots and pretrained weights, and its export."""
    import torch

    from pipeline.config import ModelConfig
    from pipeline.models import build_model

    root = tmp_path_factory.mktemp("privacy")
    manifest = write_cohort(root / "cohort", PATIENTS, seed=0, second_scan=(0,))
    model = {"arch": "resnet10", "spatial_dims": 3, "stem_stride": 2}
    weights = root / "weights" / "init.pt"
    weights.parent.mkdir()
    torch.save(build_model(ModelConfig(**model)).state_dict(), weights)
    workflow = {
        "study": "tiny",
        "manifest": "cohort/manifest.csv",
        "task": {"label": "label", "positive": 1},
        "model": {**model, "pretrained": "weights/init.pt"},
        "data": {"spatial_size": [8, 8, 8], "image_roots": [str(root / "cohort")]},
        "train": {"epochs": 1, "batch_size": 4, "seed": 0},
        "validation": {"scheme": "kfold", "folds": 2},
        "evaluation": {"n_bootstrap": 200},
        "report": {"explain": {"cases": 0}},
        "filter": {"site": list(SITES)},
        "output_dir": "reports",
    }
    (root / "wf.yaml").write_text(yaml.safe_dump(workflow, sort_keys=False))
    assert main(["run", str(root / "wf.yaml"), "--run-id", "s1"]) == 0
    run = root / "reports" / "tiny" / "s1"
    archive = root / "share" / "model.zip"
    assert main(["export", str(run), str(archive)]) == 0
    weights.unlink()  # predict never opens the training machine's pretrained weights
    return Study(root, manifest, run, archive, archive.with_name("model.zip.leakage-key"))


def members(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def predict(model: Path, manifest: Path, out: Path, *extra: str) -> int:
    return main(["predict", str(model), str(manifest), "--out", str(out), "--workers", "0", "--no-progress", *extra])


def mixed_cohort(folder: Path) -> Path:
    """New patients and, on manifest lines 4 and 6, two study patients with new images: only the
    patient-id check can recognise them."""
    return write_cohort(folder, ["N000", "N001", PATIENTS[3], "N002", PATIENTS[5], "N003"], seed=11)


def assert_names_no_patient(text: str) -> None:
    for pid in PATIENTS:
        assert pid not in text
    assert not HEX16.search(text), "no digest of a patient id (nor any other 16-hex run) is shown"


def test_the_archive_holds_keyed_digests_and_its_key_lies_beside_it(study: Study) -> None:
    files = members(study.archive)
    assert study.key.name not in files
    assert not any(n.endswith(".leakage-key") for n in files)
    leakage = json.loads(files["leakage.json"])
    assert leakage["patient_digest"] == "hmac-sha256"
    assert len(leakage["patients"]) == 12
    text = b"".join(files[n] for n in ("config.yaml", "model.json", "leakage.json", "archive.json")).decode()
    for pid in PATIENTS:
        assert hashlib.sha256(pid.encode()).hexdigest() not in leakage["patients"]
        assert hashlib.sha256(pid.encode()).hexdigest()[:16] not in text
        assert pid not in text
    assert json.loads(files["model.json"])["format_version"] == 2
    assert stat.S_IMODE(study.key.stat().st_mode) == 0o600
    key_text = study.key.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key_text)
    assert key_text not in text
    key = bytes.fromhex(key_text)  # the digests are the keyed ones, and the check value is the key's
    assert sorted(hmac.new(key, p.encode(), hashlib.sha256).hexdigest() for p in PATIENTS) == leakage["patients"]
    assert leakage["key_check"] == hmac.new(key, b"cohortnet-leakage-key-check", hashlib.sha256).hexdigest()


def test_export_says_where_the_key_is_and_who_keeps_it(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "again.zip"
    assert main(["export", str(study.run), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out.with_name('again.zip.leakage-key')}" in printed
    assert "data controller" in printed
    assert "can be shared without it" in printed
    # every export draws its own key
    assert (tmp_path / "again.zip.leakage-key").read_text() != study.key.read_text()


def test_the_archived_config_has_no_paths_filter_or_output_folder(study: Study) -> None:
    text = members(study.archive)["config.yaml"].decode()
    for secret in (*SITES, str(study.root), "manifest.csv", "init.pt", "reports"):
        assert secret not in text
    config = yaml.safe_load(text)
    assert not {"filter", "output_dir", "tracking", "search", "report"} & set(config)
    assert config["model"]["pretrained"] is None
    assert config["data"]["image_roots"] == []

    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    assert not [s for s in strings(config) if s.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", s)]


def test_the_archive_and_its_run_folder_predict_alike_without_the_study_machines_files(
    study: Study, tmp_path: Path
) -> None:
    from pipeline.errors import ValidationError
    from pipeline.predict.run import open_model, read_cohort

    manifest = write_cohort(tmp_path / "new", [f"N{k:03d}" for k in range(6)], seed=5)
    assert predict(study.run, manifest, tmp_path / "a") == 0
    assert predict(study.archive, manifest, tmp_path / "b") == 0
    a, b = (pd.read_csv(tmp_path / d / "predictions.csv") for d in "ab")
    np.testing.assert_array_equal(a["score"].to_numpy(), b["score"].to_numpy())
    # a manifest pointing into the study's image root: a run folder on its machine allows it,
    # an archive (the study machine's roots mean nothing elsewhere) keeps to the manifest's folder
    outside = tmp_path / "elsewhere" / "manifest.csv"
    outside.parent.mkdir()
    pd.DataFrame({"patient_id": ["X1"], "image": [str(study.root / "cohort" / "images" / "MRN0001_0.nii.gz")]}).to_csv(
        outside, index=False
    )
    assert len(read_cohort(outside, open_model(study.run)).table) == 1
    with pytest.raises(ValidationError, match="image outside the manifest's folder"):
        read_cohort(outside, open_model(study.archive))


def test_a_study_patient_with_a_new_image_is_refused_by_line_not_by_id(
    study: Study, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = mixed_cohort(tmp_path / "mixed")
    assert predict(study.archive, manifest, tmp_path / "p") == 2  # the key beside the archive is found
    text = caplog.text
    assert "2 patient(s), 2 image(s) of this cohort trained or validated the study's models" in text
    assert f"manifest lines 4, 6 of {manifest}" in text
    assert "2 image(s) recognised by patient id" in text
    assert_names_no_patient(text)
    assert not (tmp_path / "p" / "predictions.csv").exists()
    caplog.clear()
    assert predict(study.run, manifest, tmp_path / "r") == 2  # a run folder: keyed in memory, always checked
    assert "manifest lines 4, 6" in caplog.text
    caplog.clear()
    assert predict(study.archive, manifest, tmp_path / "o", "--allow-study-patients") == 0
    assert "leakage guard overridden: 2 patient(s), 2 image(s)" in caplog.text
    assert_names_no_patient(caplog.text)
    assert json.loads((tmp_path / "o" / "provenance.json").read_text())["study_patients_predicted"] == 2


def test_without_the_key_only_the_images_are_checked(
    study: Study, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "received" / "model.zip"  # the archive as shared: its key stayed behind
    shared.parent.mkdir()
    shutil.copy(study.archive, shared)
    manifest = mixed_cohort(tmp_path / "mixed")
    assert predict(shared, manifest, tmp_path / "p") == 0
    assert "the patient-id check was not run: the leakage key of this model archive is not available" in caplog.text
    assert "--leakage-key-file" in caplog.text
    # the study's images under new ids are still recognised, by content, on lines 2-3
    images = tmp_path / "copies"
    table = pd.read_csv(study.manifest, dtype=str).head(2)
    for rel in table["image"]:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(study.manifest.parent / rel, images / rel)
    table.assign(patient_id=["C1", "C2"]).to_csv(images / "manifest.csv", index=False)
    caplog.clear()
    assert predict(shared, images / "manifest.csv", tmp_path / "c") == 2
    assert "0 image(s) recognised by patient id, 2 by image content" in caplog.text
    assert "manifest lines 2-3" in caplog.text
    caplog.clear()
    assert predict(shared, manifest, tmp_path / "k", "--leakage-key-file", str(study.key)) == 2
    assert "manifest lines 4, 6" in caplog.text
    assert "was not run" not in caplog.text


def test_a_key_file_that_is_not_the_archives_is_refused_naming_it(
    study: Study, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = mixed_cohort(tmp_path / "mixed")
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    assert predict(study.archive, manifest, tmp_path / "p", "--leakage-key-file", str(bad)) == 2
    assert f"{bad} is not a cohortnet leakage key (expected 64 hexadecimal characters" in caplog.text
    other = tmp_path / "other.key"
    other.write_text(os.urandom(32).hex() + "\n")
    caplog.clear()
    assert predict(study.archive, manifest, tmp_path / "p", "--leakage-key-file", str(other)) == 2
    assert f"{other} is not the leakage key of this model" in caplog.text
    caplog.clear()
    assert predict(study.archive, manifest, tmp_path / "p", "--leakage-key-file", str(tmp_path / "none")) == 2
    assert f"{tmp_path / 'none'}: no such leakage key file" in caplog.text
    beside = tmp_path / "b" / "model.zip"  # a damaged key beside the archive is not silently skipped
    beside.parent.mkdir()
    shutil.copy(study.archive, beside)
    (tmp_path / "b" / "model.zip.leakage-key").write_text(study.key.read_text()[:40])
    caplog.clear()
    assert predict(beside, manifest, tmp_path / "p") == 2
    assert f"{tmp_path / 'b' / 'model.zip.leakage-key'} is not a cohortnet leakage key" in caplog.text
    assert not (tmp_path / "p").exists()


def test_a_format_1_archive_still_predicts_with_a_warning(
    study: Study, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An archive of the first format lists plain SHA-256 digests: still checked, with advice."""
    from pipeline.predict.archive import write_archive

    files = members(study.archive)
    files.pop("archive.json")
    leakage = json.loads(files["leakage.json"])
    plain = sorted(hashlib.sha256(p.encode()).hexdigest() for p in PATIENTS)
    files["leakage.json"] = json.dumps({"patients": plain, "images": leakage["images"]}).encode()
    files["model.json"] = json.dumps({**json.loads(files["model.json"]), "format_version": 1}).encode()
    old = tmp_path / "old.zip"
    write_archive(files, old)
    assert predict(old, mixed_cohort(tmp_path / "mixed"), tmp_path / "p") == 2
    assert "is a format-1 model archive" in caplog.text
    assert "re-export it" in caplog.text
    assert "manifest lines 4, 6" in caplog.text
    assert_names_no_patient(caplog.text.replace(str(tmp_path), ""))
    caplog.clear()
    clean = write_cohort(tmp_path / "clean", ["N000", "N001"], seed=3)
    assert predict(old, clean, tmp_path / "q") == 0
    assert "is a format-1 model archive" in caplog.text
    assert "was not run" not in caplog.text


def test_line_ranges_are_listed_up_to_twenty() -> None:
    from pipeline.predict.run import line_ranges

    assert line_ranges([2, 3, 4, 9, 12, 12]) == "2-4, 9, 12"
    many = line_ranges(list(range(2, 100, 2)))  # 49 single lines
    assert many.startswith("2, 4, 6")
    assert many.endswith("40, ... and 29 more")


def test_a_scanned_folder_is_named_by_the_lines_of_its_scan_manifest(
    study: Study, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for k, name in enumerate(("MRN0001_0.nii.gz", "MRN0002_0.nii.gz")):  # study images under new file names
        shutil.copy(study.manifest.parent / "images" / name, raw / f"scan{k}.nii.gz")
    assert predict(study.archive, raw, tmp_path / "p") == 2
    scan_manifest = tmp_path / "p" / "scan" / "manifest.csv"
    assert f"manifest lines 2-3 of {scan_manifest}" in caplog.text


def shared_copy(study: Study, folder: Path, key: bool = False) -> Path:
    """The archive copied into ``folder`` (with its key beside it when ``key``)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(study.archive, folder / "model.zip")
    if key:
        shutil.copy(study.key, folder / "model.zip.leakage-key")
    return folder / "model.zip"


def provenance(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "provenance.json").read_text()))


def test_a_series_is_refused_by_the_legacy_hash_an_older_model_holds(study: Study, tmp_path: Path) -> None:
    """Models made before the name-free series hash hold the old one (names and hashes at every
    depth): a series they used is still recognised."""
    from pipeline.predict.archive import write_archive
    from pipeline.provenance import content_hash, legacy_content_hash

    cohort = tmp_path / "cohort"
    series = cohort / "series1"
    (series / "sub").mkdir(parents=True)
    (series / "IM1.dcm").write_bytes(b"slice one")
    (series / "sub" / "IM2.dcm").write_bytes(b"slice two")
    pd.DataFrame({"patient_id": ["Z1"], "image": ["series1"], "label": [1]}).to_csv(cohort / "m.csv", index=False)
    assert legacy_content_hash(series) != content_hash(series)
    files = members(study.archive)
    files.pop("archive.json")
    leakage = json.loads(files["leakage.json"])
    files["leakage.json"] = json.dumps(
        {**leakage, "images": [*leakage["images"], legacy_content_hash(series)]}
    ).encode()
    old = tmp_path / "old" / "model.zip"
    write_archive(files, old)
    shutil.copy(study.key, tmp_path / "old" / "model.zip.leakage-key")
    from pipeline.predict.run import leakage as find_leakage
    from pipeline.predict.run import open_model, read_cohort

    model = open_model(old)
    found = find_leakage(model, read_cohort(cohort / "m.csv", model))
    assert list(found["why"]) == ["image"]
    assert predict(old, cohort / "m.csv", tmp_path / "p") == 2


def test_the_patient_check_is_recorded_reported_and_compared(
    study: Study, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.reporting.compare import RunResults, _independence, _study_patients

    clean = write_cohort(tmp_path / "clean", ["N000", "N001", "N002", "N003"], seed=21)
    shared = shared_copy(study, tmp_path / "received")
    assert predict(shared, clean, tmp_path / "p") == 0
    assert provenance(tmp_path / "p")["patient_check"] == "not run (no leakage key)"
    assert "patient-id check was not run (not run (no leakage key))" in (tmp_path / "p" / "report.html").read_text()
    assert predict(study.archive, clean, tmp_path / "k") == 0
    assert provenance(tmp_path / "k")["patient_check"] == "run"
    assert "patient-check" not in (tmp_path / "k" / "report.html").read_text()

    def run_of(folder: Path) -> RunResults:
        return RunResults(
            "B", "x/y", "prediction", {}, "label", "1", 0.5, {}, pd.DataFrame(), **_study_patients(folder)
        )

    checks, problems, warnings = _independence([run_of(tmp_path / "p")], False)
    assert not problems
    assert not checks[0]["passed"]
    assert "held-out patients only" not in checks[0]["detail"]
    assert any("cannot be confirmed by id" in w for w in warnings)
    checks, problems, warnings = _independence([run_of(tmp_path / "k")], False)
    assert checks[0]["passed"]
    assert checks[0]["detail"] == "held-out patients only"
    assert not warnings


def test_merged_shards_carry_their_patient_check_and_must_agree_on_it(study: Study, tmp_path: Path) -> None:
    clean = write_cohort(tmp_path / "clean", [f"N{k:03d}" for k in range(6)], seed=22)
    shared = shared_copy(study, tmp_path / "received")
    assert predict(shared, clean, tmp_path / "s0", "--shard", "0/2") == 0
    assert predict(shared, clean, tmp_path / "s1", "--shard", "1/2") == 0
    assert predict(shared, clean, tmp_path / "k1", "--shard", "1/2", "--leakage-key-file", str(study.key)) == 0
    assert provenance(tmp_path / "k1")["patient_check"] == "run"
    merge = ["predict", "--merge", str(tmp_path / "s0"), str(tmp_path / "k1"), "--out", str(tmp_path / "bad")]
    assert main(merge) == 2
    assert not (tmp_path / "bad" / "provenance.json").exists()
    assert main(["predict", "--merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 0
    assert provenance(tmp_path / "m")["patient_check"] == "not run (no leakage key)"


def test_an_unreadable_key_beside_the_archive_is_taken_as_absent_but_a_given_one_is_an_error(
    study: Study, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's key (mode 0600): a PermissionError, simulated (tests may run as root)."""
    import builtins

    archive = shared_copy(study, tmp_path / "b", key=True)
    key = archive.with_name("model.zip.leakage-key")
    real_open = builtins.open

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(key):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    clean = write_cohort(tmp_path / "clean", ["N000", "N001"], seed=23)
    assert predict(archive, clean, tmp_path / "p") == 0
    assert f"the patient-id check was not run: the leakage key beside the archive, {key}, cannot be read" in caplog.text
    assert provenance(tmp_path / "p")["patient_check"] == "not run (no leakage key)"
    caplog.clear()
    assert predict(archive, clean, tmp_path / "q", "--leakage-key-file", str(key)) == 2
    assert f"{key}: the leakage key file cannot be read (Permission denied)" in caplog.text


def test_a_failed_export_leaves_the_old_archive_and_its_key(
    study: Study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.errors import CohortnetError
    from pipeline.predict import archive as archive_module

    archive = shared_copy(study, tmp_path / "share", key=True)
    before = {p.name: p.read_bytes() for p in archive.parent.iterdir()}

    def broken(files: dict[str, bytes], out: Path) -> dict[str, str]:
        raise CohortnetError(f"{out}: no space left on device")

    monkeypatch.setattr(archive_module, "write_archive", broken)
    assert main(["export", str(study.run), str(archive)]) != 0
    assert {p.name: p.read_bytes() for p in archive.parent.iterdir()} == before  # no new key, no temporary


def test_a_dask_shard_after_the_drivers_check_neither_reads_the_key_nor_checks_again(
    study: Study, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The driver ran the guard (``leakage_checked``): a worker without the driver's key path (here
    a damaged key beside the archive, and a key path that does not exist) scores its share, quietly."""
    import torch

    from pipeline.predict.fanout import predict_share
    from pipeline.predict.run import PredictOptions, leakage, open_model, read_cohort

    manifest = mixed_cohort(tmp_path / "mixed")
    driver = open_model(study.archive)  # the driver's check, with the key
    found = leakage(driver, read_cohort(manifest, driver))
    assert len(found) == 2
    archive = shared_copy(study, tmp_path / "w")
    archive.with_name("model.zip.leakage-key").write_text("damaged\n")
    options = PredictOptions(
        workers=0,
        progress=False,
        shard=(0, 1),
        allow_study_patients=True,
        leakage_key_file=tmp_path / "driver-only.key",
        leakage_checked=True,
        patient_check="run",
        study_images=frozenset(found["image_id"]),
    )
    threads = torch.get_num_threads()
    try:
        predict_share(str(archive), str(manifest), str(tmp_path / "s"), options)
    finally:
        torch.set_num_threads(threads)
    assert "was not run" not in caplog.text
    assert "leakage guard" not in caplog.text
    prov = provenance(tmp_path / "s")
    assert prov["patient_check"] == "run"
    assert prov["study_patients_predicted"] == 2


def test_image_root_lets_a_manifest_point_outside_its_folder(
    study: Study, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cohort(tmp_path / "imgs", ["N100", "N101"], seed=24)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    images = [str(tmp_path / "imgs" / "images" / f"{p}_0.nii.gz") for p in ("N100", "N101")]
    pd.DataFrame({"patient_id": ["N100", "N101"], "image": images}).to_csv(elsewhere / "m.csv", index=False)
    assert predict(study.archive, elsewhere / "m.csv", tmp_path / "p") == 2
    assert "give its folder with --image-root DIR to allow it" in caplog.text
    assert "data.image_roots" not in caplog.text
    monkeypatch.chdir(tmp_path)  # relative to the working directory
    assert predict(study.archive, elsewhere / "m.csv", tmp_path / "p", "--image-root", "imgs") == 0
    assert predict(study.run, elsewhere / "m.csv", tmp_path / "r", "--image-root", "imgs") == 0
    caplog.clear()
    assert predict(study.archive, elsewhere / "m.csv", tmp_path / "x", "--image-root", "nowhere") == 2
    assert "--image-root " in caplog.text  # the path itself may be redacted by an earlier test's roots
    assert ": no such folder" in caplog.text
