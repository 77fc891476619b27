"""No identifying DICOM text reaches any output of a study: a canary planted in every identifying
tag and in the export's folder names is searched for in everything that scan and run write."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from pipeline.cli import main
from pipeline.privacy import REDACTOR
from pipeline.synthetic import CohortSpec, make_demo_cohort

sys.path.insert(0, str(Path(__file__).parent / "io"))
from factories import find_canary  # tests/io is not a package (see tests/io/conftest.py)

CANARY = "ZZCANARYZZ"
RENDERED_DATES = ("2021-03-04", "01.01.1970")
PLANTED = {
    "PatientName": f"{CANARY}^JANE",
    "PatientBirthDate": "19700101",
    "StudyDate": "20210304",
    "SeriesDescription": "CT 2021-03-04 DOB 01.01.1970",  # the header's dates, written otherwise
    "AccessionNumber": f"{CANARY}ACC",
    "InstitutionName": f"{CANARY} Hospital",
    "ReferringPhysicianName": f"{CANARY}^REF",
    "OperatorsName": f"{CANARY}^OP",
    "StationName": CANARY,
    "ImageComments": f"{CANARY} comment",
    "StudyDescription": f"{CANARY} study",
}


@pytest.fixture
def canary_export(tmp_path: Path) -> tuple[Path, Path]:
    """A small demo cohort whose DICOM headers and folder names carry the canary; returns
    (export root, manifest of the export with paths through the canary-named folders)."""
    root = tmp_path / "export"
    spec = CohortSpec(n_patients=14, seed=3, matrix=24, lesion_radius_mm=(8, 10), dicom_fraction=0.75)
    table = make_demo_cohort(root, root / "demo.csv", spec)
    for dcm in root.rglob("*"):
        if dcm.is_file() and dcm.suffix not in (".csv", ".gz") and pydicom.misc.is_dicom(dcm):
            ds = pydicom.dcmread(dcm)
            for keyword, value in PLANTED.items():
                setattr(ds, keyword, value)
            ds.save_as(dcm)
    for patient_dir in sorted((root / "dicom").iterdir()):
        patient_dir.rename(patient_dir.with_name(f"{CANARY}_DOE_{patient_dir.name}"))
    # dicom/<patient>/... -> dicom/<canary>_DOE_<patient>/...
    table["image"] = table["image"].str.replace(r"^dicom/", f"dicom/{CANARY}_DOE_", regex=True)
    table.to_csv(root / "demo.csv", index=False)
    planted = find_canary([root], CANARY)
    assert len(planted) > 20, "the canary must be planted for this test to prove anything"
    return root, root / "demo.csv"


def test_a_study_on_the_raw_export_writes_no_identifying_text(
    canary_export: tuple[Path, Path],
    tmp_path: Path,
    make_workflow: Callable[..., Path],
    capfd: pytest.CaptureFixture[str],
) -> None:
    _, manifest = canary_export
    wf = make_workflow(
        manifest,
        data={"spatial_size": [12, 12, 8], "intensity": {"mode": "ct_window"}},
        evaluation={"subgroups": ["site"], "n_bootstrap": 100},
    )
    assert main(["run", str(wf)]) == 0
    for planted in (CANARY, *RENDERED_DATES):
        assert find_canary([tmp_path / "reports"], planted) == []
    assert not any(v in "".join(capfd.readouterr()) for v in (CANARY, "19700101", *RENDERED_DATES))


def test_scan_pseudonymise_then_study_leaks_nothing(
    canary_export: tuple[Path, Path],
    tmp_path: Path,
    make_workflow: Callable[..., Path],
    capfd: pytest.CaptureFixture[str],
) -> None:
    root, demo_manifest = canary_export
    labels = tmp_path / "labels.csv"
    pd.read_csv(demo_manifest)[["patient_id", "label"]].drop_duplicates().to_csv(labels, index=False)
    key = tmp_path / "secret" / "key"
    key.parent.mkdir()
    key.write_bytes(b"a study key of more than sixteen bytes")
    out = tmp_path / "scanned"
    # NIfTI files carry no patient id, so labels join through the DICOM headers: scan the DICOM part
    code = main(
        [
            "scan",
            str(root / "dicom"),
            "--out",
            str(out / "manifest.csv"),
            "--labels",
            str(labels),
            "--pseudonymize-key-file",
            str(key),
            "--reid-table",
            str(tmp_path / "secret" / "reid.csv"),
            "--no-progress",
        ]
    )
    assert code == 0
    scanned = pd.read_csv(out / "manifest.csv")
    raw = pd.read_csv(demo_manifest)
    assert len(scanned) == raw["image"].str.startswith("dicom/").sum()
    assert set(scanned["label"]) == {0, 1}
    wf = make_workflow(
        out / "manifest.csv",
        data={"spatial_size": [12, 12, 8], "intensity": {"mode": "ct_window"}},
        evaluation={"n_bootstrap": 100},
    )
    assert main(["run", str(wf)]) == 0
    REDACTOR.clear()
    for planted in (CANARY, *RENDERED_DATES):
        assert find_canary([out, tmp_path / "reports"], planted) == []
    assert set(scanned["series_description"]) == {"[redacted]"}
    streams = "".join(capfd.readouterr())
    for planted in (CANARY, "19700101", *RENDERED_DATES):
        assert planted not in streams
    assert CANARY in (tmp_path / "secret" / "reid.csv").read_text()  # the controller's table maps back
