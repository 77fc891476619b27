"""``cohortnet scan``: manifest and exclusions, layout, labels, pseudonyms, exit codes."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories import positions_along, ramp, write_dicom, write_nifti, write_series
from pydicom.uid import generate_uid

from pipeline import cli
from pipeline.errors import ValidationError
from pipeline.io import ScanOptions, load_scan, scan_tree
from pipeline.io.scan import EXIT_NOTHING_USABLE, EXIT_OK, EXIT_PARTIAL, QC_COLUMNS
from pipeline.schema import IMAGE, LABEL, PATIENT_ID, SERIES_ID, STUDY_ID


def _cohort(root: Path) -> dict[str, list[Path]]:
    """Two patients in nested, oddly named folders: P1 with a CT and a NIfTI, P2 with an MR."""
    study = generate_uid()
    ct = write_series(
        root / "export" / "a b" / "1",
        PatientID="P1",
        StudyInstanceUID=study,
        AccessionNumber="A1",
        Manufacturer="ACME",
        ManufacturerModelName="Scan 64",
    )
    mr = write_series(
        root / "export" / "x" / "y" / "z",
        ramp((5, 6, 3)),
        PatientID="P2",
        Modality="MR",
        AccessionNumber="A2",
        names=["1", "2", "3"],
    )
    nii = write_nifti(root / "nifti" / "P1.nii.gz", ramp().astype(np.int16))
    return {"ct": ct, "mr": mr, "nii": [nii]}


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_manifest_rows_are_ready_for_run_and_load_back_exactly(tmp_path: Path) -> None:
    _cohort(tmp_path / "data")
    summary = scan_tree(tmp_path / "data", tmp_path / "out" / "manifest.csv", ScanOptions(progress=False))
    assert summary.exit_code == EXIT_OK
    manifest = _read(tmp_path / "out" / "manifest.csv")
    assert list(manifest.columns[:5]) == [PATIENT_ID, IMAGE, LABEL, STUDY_ID, SERIES_ID]
    assert set(QC_COLUMNS) <= set(manifest.columns)
    assert sorted(manifest[PATIENT_ID]) == ["P1", "P1", "P2"]
    dicom = manifest[manifest["format"] == "dicom"]
    by_shape = dict(zip(dicom["shape"], dicom[IMAGE], strict=True))
    ct = load_scan(tmp_path / "out" / by_shape["7x8x9"])
    np.testing.assert_array_equal(ct.array, ramp())
    mr = load_scan(tmp_path / "out" / by_shape["5x6x3"])
    np.testing.assert_array_equal(mr.array, ramp((5, 6, 3)))
    row = dicom.set_index("shape").loc["7x8x9"]
    assert (row["modality"], row["spacing"], row["orientation"], row["n_files"]) == (
        "CT",
        "0.8x0.9x2",
        "LPS",
        "9",
    )
    assert row["transfer_syntax"] == "Explicit VR Little Endian"
    assert row["manufacturer"] == "ACME Scan 64"  # the scanner make and model, for Table 1
    assert manifest.loc[manifest["format"] == "nifti", "manufacturer"].tolist() == [""]
    assert not any("export" in p or "a b" in p for p in manifest[IMAGE]), "paths never come from the export"
    assert _read(summary.exclusions).empty


def test_exit_codes_partial_and_nothing_usable(tmp_path: Path) -> None:
    _cohort(tmp_path / "data")
    (tmp_path / "data" / "broken.dcm").write_bytes(b"")
    partial = scan_tree(tmp_path / "data", tmp_path / "o1" / "m.csv", ScanOptions(progress=False))
    assert partial.exit_code == EXIT_PARTIAL
    assert partial.counts[("error", "empty_file", "file")] == 1
    (tmp_path / "empty").mkdir()
    nothing = scan_tree(tmp_path / "empty", tmp_path / "o2" / "m.csv", ScanOptions(progress=False))
    assert nothing.exit_code == EXIT_NOTHING_USABLE
    assert "0 usable image(s)" in nothing.format_table()


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cohort(tmp_path / "data")
    assert cli.main(["scan", str(tmp_path / "data"), "--out", str(tmp_path / "o" / "m.csv"), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "ok" in table
    assert "3 usable image(s)" in table
    (tmp_path / "data" / "junk.dcm").write_text("not dicom")
    assert cli.main(["scan", str(tmp_path / "data"), "--out", str(tmp_path / "o" / "m.csv"), "--no-progress"]) == 8
    assert cli.main(["scan", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o" / "m.csv")]) == 2
    with pytest.raises(SystemExit) as usage:
        cli.main(["scan", str(tmp_path / "data")])  # --out missing: argparse usage error
    assert usage.value.code == 2


def test_every_argument_problem_is_listed_at_once(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"short")
    with pytest.raises(ValidationError) as info:
        scan_tree(
            tmp_path / "nowhere",
            tmp_path / "o" / "m.csv",
            ScanOptions(
                pseudonymize_key_file=tmp_path / "key",
                reid_table=tmp_path / "o" / "reid.csv",
                label_col="y",
                layout="teleport",
            ),
        )
    assert len(info.value.problems) == 5
    assert info.value.exit_code == 2


def test_one_uid_holding_several_stacks_is_split(tmp_path: Path) -> None:
    uid = generate_uid()
    write_series(tmp_path / "d", names=[f"a{k}" for k in range(9)], SeriesInstanceUID=uid, AcquisitionNumber=1)
    far = positions_along(4, origin=(0, 0, 100))
    write_series(
        tmp_path / "d",
        ramp((7, 8, 4)),
        positions=far,
        names=[f"b{k}" for k in range(4)],
        SeriesInstanceUID=uid,
        AcquisitionNumber=1,
        EchoNumbers=2,
    )
    write_series(
        tmp_path / "d",
        ramp((7, 8, 3)),
        iop=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        step=3.0,
        names=[f"c{k}" for k in range(3)],
        SeriesInstanceUID=uid,
        AcquisitionNumber=1,
    )
    summary = scan_tree(tmp_path / "d", tmp_path / "o" / "m.csv", ScanOptions(progress=False))
    assert sorted(_read(summary.manifest)["shape"]) == ["7x8x3", "7x8x4", "7x8x9"]
    assert _read(summary.manifest)[SERIES_ID].nunique() == 3


def test_acquisitions_at_different_positions_are_separate_images(tmp_path: Path) -> None:
    uid = generate_uid()
    write_series(tmp_path / "d", names=[f"a{k}" for k in range(9)], SeriesInstanceUID=uid, AcquisitionNumber=1)
    write_series(
        tmp_path / "d",
        ramp((7, 8, 6)),
        names=[f"b{k}" for k in range(6)],
        SeriesInstanceUID=uid,
        AcquisitionNumber=2,
        positions=positions_along(6, step=3.0),
    )
    manifest = _read(scan_tree(tmp_path / "d", tmp_path / "o" / "m.csv", ScanOptions(progress=False)).manifest)
    assert sorted(manifest["shape"]) == ["7x8x6", "7x8x9"]


def test_labels_join_by_patient_or_by_study(tmp_path: Path) -> None:
    _cohort(tmp_path / "data")
    pd.DataFrame({"patient_id": ["P1", "P2", "P9"], "dx": ["1", "0", "1"]}).to_csv(tmp_path / "l.csv", index=False)
    summary = scan_tree(
        tmp_path / "data",
        tmp_path / "o" / "m.csv",
        ScanOptions(labels_csv=tmp_path / "l.csv", label_col="dx", progress=False),
    )
    manifest = _read(summary.manifest)
    assert dict(zip(manifest[PATIENT_ID], manifest[LABEL], strict=False)) == {"P1": "1", "P2": "0"}
    assert summary.labels_unmatched == 1
    pd.DataFrame({"study_id": ["A2"], "label": ["1"]}).to_csv(tmp_path / "s.csv", index=False)  # accession
    by_study = _read(
        scan_tree(
            tmp_path / "data", tmp_path / "o2" / "m.csv", ScanOptions(labels_csv=tmp_path / "s.csv", progress=False)
        ).manifest
    )
    assert sorted(by_study[LABEL]) == ["", "", "1"]


def test_conflicting_labels_are_a_validation_error(tmp_path: Path) -> None:
    _cohort(tmp_path / "data")
    pd.DataFrame({"patient_id": ["P1", "P1"], "label": ["1", "0"]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(ValidationError, match="conflicting labels"):
        scan_tree(tmp_path / "data", tmp_path / "o" / "m.csv", ScanOptions(labels_csv=tmp_path / "l.csv"))


def test_pseudonyms_are_keyed_hmacs_stable_for_the_same_key(tmp_path: Path) -> None:
    _cohort(tmp_path / "data")
    key = b"0123456789abcdef-secret"
    (tmp_path / "key").write_bytes(key + b"\n")
    (tmp_path / "key2").write_bytes(b"another key of enough length")
    runs = [
        _read(
            scan_tree(
                tmp_path / "data", tmp_path / f"o{i}" / "m.csv", ScanOptions(pseudonymize_key_file=k, progress=False)
            ).manifest
        )
        for i, k in enumerate([tmp_path / "key", tmp_path / "key", tmp_path / "key2"])
    ]
    expected = hmac.new(key, b"P2", hashlib.sha256).hexdigest()[:16]
    assert expected in set(runs[0][PATIENT_ID])
    assert runs[0][[PATIENT_ID, STUDY_ID, SERIES_ID]].equals(runs[1][[PATIENT_ID, STUDY_ID, SERIES_ID]])
    assert not set(runs[0][PATIENT_ID]) & set(runs[2][PATIENT_ID])
    assert "P1" not in set(runs[0][PATIENT_ID])


def test_reidentification_table_lives_outside_the_outputs(tmp_path: Path) -> None:
    _cohort(tmp_path / "data")
    (tmp_path / "key").write_bytes(b"0123456789abcdef")
    reid = tmp_path / "controller" / "reid.csv"
    scan_tree(
        tmp_path / "data",
        tmp_path / "o" / "m.csv",
        ScanOptions(pseudonymize_key_file=tmp_path / "key", reid_table=reid, progress=False),
    )
    table = _read(reid)
    assert {"P1", "P2"} <= set(table["original_patient_id"])
    assert "export/a b/1" in set(table["relative_paths"])
    with pytest.raises(ValidationError, match="outside the manifest's folder"):
        scan_tree(tmp_path / "data", tmp_path / "o" / "m.csv", ScanOptions(reid_table=tmp_path / "o" / "r.csv"))


@pytest.mark.parametrize("layout", ["symlink", "hardlink", "copy"])
def test_layouts_hold_loadable_images_and_rescans_replace_them(tmp_path: Path, layout: str) -> None:
    _cohort(tmp_path / "data")
    out = tmp_path / "o" / "m.csv"
    scan_tree(tmp_path / "data", out, ScanOptions(layout=layout, progress=False))
    for image in _read(out)[IMAGE]:
        entry = tmp_path / "o" / image
        assert entry.exists()
        assert load_scan(entry).array.size > 0
    (tmp_path / "data" / "nifti" / "P1.nii.gz").unlink()
    scan_tree(tmp_path / "data", out, ScanOptions(layout=layout, progress=False))
    assert len(os.listdir(tmp_path / "o" / "images")) == 2, "the old layout is replaced, not merged"


def test_scanning_into_the_scanned_tree_does_not_rescan_outputs(tmp_path: Path) -> None:
    _cohort(tmp_path / "data")
    first = scan_tree(tmp_path / "data", tmp_path / "data" / "out" / "m.csv", ScanOptions(progress=False))
    second = scan_tree(tmp_path / "data", tmp_path / "data" / "out" / "m.csv", ScanOptions(progress=False))
    assert first.n_images == second.n_images == 3
    assert second.exit_code == EXIT_OK


def test_systematic_failures_raise_an_alarm(tmp_path: Path) -> None:
    for i in range(4):
        write_dicom(tmp_path / "d" / f"{i}.dcm", {"SeriesInstanceUID": generate_uid()}, None)
    write_series(tmp_path / "d" / "ok")
    summary = scan_tree(tmp_path / "d", tmp_path / "o" / "m.csv", ScanOptions(progress=False))
    assert len(summary.alarms) == 1
    assert "no_pixel_data" in summary.alarms[0]
    assert "ALARM" in summary.format_table()


def test_nifti_files_of_one_name_in_patient_folders_are_separate_patients(tmp_path: Path) -> None:
    """patA/ct.nii.gz, patB/ct.nii.gz, patC/ct.nii.gz: three patients, not one called ct."""
    for name in ("patA", "patB", "patC"):
        write_nifti(tmp_path / "data" / name / "ct.nii.gz", ramp().astype(np.int16))
    summary = scan_tree(tmp_path / "data", tmp_path / "out" / "manifest.csv", ScanOptions(progress=False))
    assert summary.exit_code == EXIT_OK
    assert sorted(_read(tmp_path / "out" / "manifest.csv")[PATIENT_ID]) == ["patA", "patB", "patC"]
