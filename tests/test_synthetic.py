"""The demo-cohort generator: CT-like phantoms, DICOM and NIfTI geometry, the cohort and its manifest.

DICOM files are read back with a short reader written here (sort by IPP along the IOP normal, apply
the rescale, LPS -> RAS), independent of the pipeline's own loader.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.filewriter import dcmwrite

from pipeline import schema
from pipeline import synthetic as syn
from pipeline.errors import ValidationError

SHAPE = (7, 8, 9)  # unequal, so a swapped axis fails
SPACING = (3.0, 4.0, 5.0)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_series(folder: Path) -> tuple[np.ndarray, np.ndarray, list[pydicom.Dataset]]:
    """(X, Y, Z) HU, voxel -> RAS affine and the datasets in spatial order (along the IOP normal)."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda d: float(np.asarray(d.ImagePositionPatient, dtype=float) @ normal))
    hu = np.stack([d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets], axis=-1)
    ipp = np.asarray([d.ImagePositionPatient for d in datasets], dtype=float)
    row_spacing, column_spacing = (float(v) for v in datasets[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = iop[:3] * column_spacing, iop[3:] * row_spacing
    lps[:3, 2] = (ipp[-1] - ipp[0]) / (len(datasets) - 1)
    lps[:3, 3] = ipp[0]
    return hu, LPS @ lps, datasets


def canonical(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine))
    return np.asarray(img.dataobj), img.affine


def assert_same_image(vol_a: np.ndarray, aff_a: np.ndarray, vol_b: np.ndarray, aff_b: np.ndarray) -> None:
    """Same voxels at the same RAS positions, whatever the storage order."""
    a, affine_a = canonical(vol_a, aff_a)
    b, affine_b = canonical(vol_b, aff_b)
    np.testing.assert_allclose(affine_a, affine_b, atol=1e-4)
    np.testing.assert_array_equal(a, b)


def random_volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 3072, size=SHAPE).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# Phantoms
# --------------------------------------------------------------------------------------------------

GRID = (24, 20, 16)
GRID_SPACING = (12.0, 12.0, 10.0)


def test_phantom_is_ct_like() -> None:
    volume, info = syn.make_phantom(np.random.default_rng(3), syn.PhantomSpec(GRID, GRID_SPACING, lesion=False))
    labels = info["labels"]
    assert volume.shape == GRID
    assert volume.dtype == np.int16
    assert {syn.AIR, syn.FAT, syn.LIVER, syn.KIDNEY, syn.BONE, syn.VESSEL} <= set(np.unique(labels))
    assert np.median(volume[labels == syn.AIR]) < -900
    assert -150 < np.median(volume[labels == syn.FAT]) < -40
    assert 70 < np.median(volume[labels == syn.LIVER]) < 140
    assert np.median(volume[labels == syn.BONE]) > 200
    assert info["lesions"] == ()
    assert info["lesion_voxels"] == 0
    assert syn.LESION not in labels


def test_phantom_is_deterministic_for_a_generator_state() -> None:
    spec = syn.PhantomSpec(GRID, GRID_SPACING, lesion=True)
    first, _ = syn.make_phantom(np.random.default_rng(5), spec)
    again, _ = syn.make_phantom(np.random.default_rng(5), spec)
    other, _ = syn.make_phantom(np.random.default_rng(6), spec)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_lesion_only_changes_its_neighbourhood() -> None:
    rng = np.random.default_rng(7)
    anatomy = syn.random_anatomy(rng)
    lesion = syn.random_lesion(rng, anatomy, radius_mm=(14.0, 14.0), contrast_hu=(90.0, 90.0), organs={"liver": 1})
    shape, spacing = (40, 32, 24), (6.0, 6.0, 6.0)
    with_lesion, info = syn.make_phantom(
        np.random.default_rng(1), syn.PhantomSpec(shape, spacing, lesion=lesion, anatomy=anatomy)
    )
    without, _ = syn.make_phantom(
        np.random.default_rng(1), syn.PhantomSpec(shape, spacing, lesion=False, anatomy=anatomy)
    )
    pts = syn.voxel_centers(shape, info["affine"])
    distance = np.linalg.norm(pts - info["lesion_centers_ras"][0], axis=-1)
    diff = with_lesion.astype(float) - without
    assert np.all(diff[distance > 1.2 * max(lesion.axes) + 12.0] == 0)
    core = diff[distance < 0.5 * min(lesion.axes)]
    assert core.size > 0
    assert 50 < core.mean() < 110  # the liver's HU + 90, softened by the edge and the point-spread blur
    assert info["lesions"] == (lesion,)
    assert info["lesion_voxels"] == int((info["labels"] == syn.LESION).sum()) > 10
    center = np.rint(info["lesion_centers_voxel"][0]).astype(int)
    assert info["labels"][tuple(center)] == syn.LESION


def test_several_lesions_are_separate() -> None:
    rng = np.random.default_rng(2)
    anatomy = syn.random_anatomy(rng)
    lesions = syn.random_lesions(rng, anatomy, count=(3, 3), radius_mm=(8.0, 10.0), organs={"liver": 1})
    assert len(lesions) == 3
    for i, a in enumerate(lesions):
        for b in lesions[i + 1 :]:
            assert np.linalg.norm(np.subtract(a.center, b.center)) > max(a.axes) + max(b.axes)


# --------------------------------------------------------------------------------------------------
# DICOM series
# --------------------------------------------------------------------------------------------------

DICOM_CASES = [
    ("HFS", (0.0, 0.0, 0.0), 1.0, -1024.0, "im"),
    ("FFS", (0.0, 0.0, 0.0), 1.0, 0.0, "uid"),
    ("HFP", (0.0, 0.0, 0.0), 0.5, -1024.0, "im"),
    ("LAS", (0.0, 0.0, 0.0), 1.0, -1024.0, "im"),  # left-handed: k runs against the slice normal
    ("HFS", (8.0, 0.0, 5.0), 1.0, -1024.0, "uid"),  # oblique
]


@pytest.mark.parametrize("case", DICOM_CASES, ids=lambda c: f"{c[0]}-{c[1][0]:g}-{c[2]:g}-{c[3]:g}-{c[4]}")
def test_dicom_series_round_trip(tmp_path: Path, case: tuple[str, tuple[float, ...], float, float, str]) -> None:
    orientation, oblique, slope, intercept, naming = case
    volume = random_volume()
    affine = syn.scan_affine(SHAPE, SPACING, orientation=orientation, oblique_deg=oblique, center_mm=(5, -7, 30))
    series = syn.SeriesSpec(
        patient_id="DEMO0001", study_uid="1.2.3", series_uid="1.2.3.4", slope=slope, intercept=intercept,
        file_naming=naming,  # type: ignore[arg-type]
    )  # fmt: skip
    paths = syn.write_dicom_series(volume, affine, tmp_path, series, rng=np.random.default_rng(0))
    assert len(paths) == SHAPE[2] == len(list(tmp_path.iterdir()))
    hu, read_affine, datasets = read_series(tmp_path)
    assert_same_image(hu, read_affine, volume, affine)
    for d in datasets:
        assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert d.SOPClassUID == pydicom.uid.CTImageStorage == d.file_meta.MediaStorageSOPClassUID
        assert (d.Modality, d.PhotometricInterpretation, d.Rows, d.Columns) == ("CT", "MONOCHROME2", 8, 7)
        assert [float(v) for v in d.PixelSpacing] == [4.0, 3.0]
    # Slices lie along the IOP normal, one slice spacing apart.
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    ipp = np.asarray([d.ImagePositionPatient for d in datasets], dtype=float)
    steps = np.diff(ipp, axis=0)
    np.testing.assert_allclose(steps, np.outer(np.ones(len(steps)), np.cross(iop[:3], iop[3:]) * 5.0), atol=1e-4)
    # Neither instance numbers nor file names are in spatial order.
    numbers = [int(d.InstanceNumber) for d in datasets]
    assert sorted(numbers) == list(range(1, SHAPE[2] + 1))
    assert numbers not in (sorted(numbers), sorted(numbers, reverse=True))
    by_name = [p.name for p in sorted(paths)]
    assert by_name != [p.name for p in paths]


def test_dicom_files_are_what_dcmwrite_writes(tmp_path: Path) -> None:
    affine = syn.scan_affine(SHAPE, SPACING, orientation="HFS")
    series = syn.SeriesSpec(patient_id="P", study_uid="1.2", series_uid="1.2.3")
    paths = syn.write_dicom_series(random_volume(), affine, tmp_path, series, rng=np.random.default_rng(0))
    for path in paths[:2]:
        buffer = io.BytesIO()
        dcmwrite(buffer, pydicom.dcmread(path), enforce_file_format=True)
        assert buffer.getvalue() == path.read_bytes()


def test_dicom_carries_fake_identifying_tags(tmp_path: Path) -> None:
    affine = syn.scan_affine(SHAPE, SPACING, orientation="HFS")
    series = syn.SeriesSpec(
        patient_id="P", study_uid="1.2", series_uid="1.2.3",
        extra_tags={"PatientName": "DOE^JANE", "SeriesDescription": "X"},
    )  # fmt: skip
    paths = syn.write_dicom_series(random_volume(), affine, tmp_path, series, rng=np.random.default_rng(0))
    ds = pydicom.dcmread(paths[0])
    for keyword in syn.IDENTIFYING_TAGS:
        assert str(ds.data_element(keyword).value), keyword
    assert ds.PatientName == "DOE^JANE"
    assert ds.SeriesDescription == "X"
    assert ds.PatientID == "P"


def test_dicom_rejects_a_sheared_affine(tmp_path: Path) -> None:
    affine = syn.scan_affine(SHAPE, SPACING)
    affine[0, 2] += 1.0  # gantry tilt: slices no longer stack along their normal
    series = syn.SeriesSpec(patient_id="P", study_uid="1", series_uid="2")
    with pytest.raises(ValueError, match="orthogonal"):
        syn.write_dicom_series(random_volume(), affine, tmp_path, series, rng=np.random.default_rng(0))


# --------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("orientation", "intercept"), [("RAS", 0.0), ("LPS", 0.0), ("LAS", -1024.0)])
def test_nifti_round_trip(tmp_path: Path, orientation: str, intercept: float) -> None:
    volume = random_volume()
    affine = syn.scan_affine(SHAPE, SPACING, orientation=orientation, oblique_deg=(3.0, 0.0, 0.0))
    path = syn.write_nifti(volume, affine, tmp_path / "scan.nii.gz", intercept=intercept)
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image)
    np.testing.assert_array_equal(img.get_fdata(), volume)
    assert img.get_data_dtype() == (np.int16 if intercept == 0 else np.uint16)
    assert img.dataobj.inter == intercept  # type: ignore[attr-defined]
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    for get in (img.get_qform, img.get_sform):
        matrix, code = get(coded=True)
        assert code == 1
        np.testing.assert_allclose(matrix, affine, atol=1e-4)
    np.testing.assert_allclose(img.header.get_zooms(), SPACING, rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii.gz"]  # no temporary left behind


def test_dicom_and_nifti_of_one_scan_are_the_same_image(tmp_path: Path) -> None:
    volume = random_volume()
    affine = syn.scan_affine(SHAPE, SPACING, orientation="FFS")
    series = syn.SeriesSpec(patient_id="P", study_uid="1", series_uid="2")
    syn.write_dicom_series(volume, affine, tmp_path / "dcm", series, rng=np.random.default_rng(0))
    nifti = nib.load(syn.write_nifti(volume, affine, tmp_path / "x.nii.gz"))
    hu, read_affine, _ = read_series(tmp_path / "dcm")
    assert_same_image(hu, read_affine, nifti.get_fdata(), nifti.affine)


# --------------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------------

COHORT = {"n_patients": 6, "seed": 3, "second_scan_fraction": 0.5, "matrix": 32}
SPEC = syn.CohortSpec(**COHORT)  # type: ignore[arg-type]


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("cohort")
    table = syn.make_demo_cohort(root / "demo", root / "manifests" / "demo.csv", SPEC)
    return root, table


def test_manifest_columns_labels_and_files(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, table = cohort
    manifest = pd.read_csv(root / "manifests" / "demo.csv")
    pd.testing.assert_frame_equal(manifest, table, check_dtype=False)
    assert tuple(table.columns) == syn.MANIFEST_COLUMNS
    assert set(schema.REQUIRED_MANIFEST_COLUMNS) <= set(table.columns)
    per_patient = table.groupby(schema.PATIENT_ID)
    assert (per_patient[schema.LABEL].nunique() == 1).all()  # a follow-up keeps the patient's label
    assert per_patient[schema.LABEL].first().sum() == round(0.4 * COHORT["n_patients"])
    assert per_patient.size().max() == 2
    assert table[schema.STUDY_ID].is_unique
    assert table[schema.SERIES_ID].is_unique
    for column in (syn.SITE, syn.SEX, syn.AGE, syn.FORMAT):
        assert (per_patient[column].nunique() == 1).all(), column
    assert set(table[syn.FORMAT]) == {"dicom", "nifti"}
    for image, fmt in zip(table[schema.IMAGE], table[syn.FORMAT], strict=True):
        path = root / "manifests" / image
        assert not Path(image).is_absolute()
        if fmt == "nifti":
            assert path.is_file()
            assert image.endswith(".nii.gz")
        else:
            assert path.is_dir()
            assert len(list(path.iterdir())) >= 24


def test_cohort_is_byte_identical_for_a_seed(cohort: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, table = cohort
    again = syn.make_demo_cohort(tmp_path / "demo", tmp_path / "manifests" / "demo.csv", SPEC)
    pd.testing.assert_frame_equal(again, table)
    assert file_hashes(tmp_path / "demo") == file_hashes(root / "demo")


def test_cohort_files_hold_the_rendered_scans(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, table = cohort
    plans = {p.series_id: p for p in syn.plan_cohort(SPEC)}
    for fmt in ("dicom", "nifti"):
        row = table[table[syn.FORMAT] == fmt].iloc[0]
        volume, affine, _ = syn.render_scan(plans[row[schema.SERIES_ID]])
        path = root / "manifests" / row[schema.IMAGE]
        if fmt == "dicom":
            hu, read_affine, datasets = read_series(path)
            assert datasets[0].PatientID == row[schema.PATIENT_ID]
            for keyword in syn.IDENTIFYING_TAGS:
                assert str(datasets[0].data_element(keyword).value), keyword
        else:
            img = nib.load(path)
            hu, read_affine = img.get_fdata(), img.affine
        assert_same_image(hu, read_affine, volume, affine)


def test_lesion_iff_positive_and_visible_in_every_scan() -> None:
    plans = syn.plan_cohort(syn.CohortSpec(n_patients=10, seed=1, second_scan_fraction=0.5, matrix=32))
    assert sum(p.label for p in plans if p.visit == 0) == 4
    for plan in plans:
        assert bool(plan.lesions) == bool(plan.label)
        if plan.label:
            assert all(spec.organ in syn.LESION_ORGANS for spec in plan.lesions)
            _, _, info = syn.render_scan(plan)
            assert info["lesion_voxels"] > 0
    follow_ups = [p for p in plans if p.visit == 1]
    assert follow_ups
    for follow_up in follow_ups:
        baseline = next(p for p in plans if p.patient_id == follow_up.patient_id and p.visit == 0)
        assert follow_up.label == baseline.label
        assert follow_up.study_uid != baseline.study_uid
        assert follow_up.study_date > baseline.study_date
        assert len(follow_up.lesions) == len(baseline.lesions)
        for before, after in zip(baseline.lesions, follow_up.lesions, strict=True):
            assert 0 < np.linalg.norm(np.subtract(after.center, before.center)) < 15


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    spec = syn.CohortSpec(n_patients=4, matrix=16)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "precious.txt").write_text("keep me")
    with pytest.raises(ValidationError, match="refusing"):
        syn.make_demo_cohort(tmp_path / "demo", tmp_path / "demo.csv", spec)
    assert (tmp_path / "demo" / "precious.txt").read_text() == "keep me"


def test_plan_cohort_reports_every_bad_argument() -> None:
    with pytest.raises(ValueError, match="n_patients") as excinfo:
        syn.plan_cohort(syn.CohortSpec(n_patients=1, prevalence=1.5, dicom_fraction=-0.1))
    assert "prevalence" in str(excinfo.value)
    assert "dicom_fraction" in str(excinfo.value)


def test_generator_imports_neither_torch_nor_monai() -> None:
    code = "import sys, pipeline.synthetic; print(sorted({'torch', 'monai'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_nifti_cohort_rewritten_as_dicom_reads_back_to_the_same_voxels_and_geometry(tmp_path: Path) -> None:
    from pipeline.io import load_scan
    from pipeline.synthetic.reformat import main as reformat

    rng = np.random.default_rng(0)
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.9, 0.0, 0.0, -4.0], [0.0, 0.0, 1.5, 2.0], [0, 0, 0, 1]])
    rows = []
    for k, split in enumerate(("train", "test", "test")):
        path = tmp_path / f"V{k}.nii.gz"
        nib.save(nib.Nifti1Image(rng.integers(0, 256, size=(7, 8, 9)).astype(np.uint8), affine), path)
        rows.append((f"P{k}", path.name, k % 2, split))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["patient_id", "image", "label", "split"]).to_csv(manifest, index=False)
    assert reformat([str(manifest), str(tmp_path / "dcm"), "--split", "test"]) == 0
    table = pd.read_csv(tmp_path / "dcm" / "manifest.csv", dtype=str)
    assert table["patient_id"].tolist() == ["P1", "P2"]
    for patient, folder in zip(table["patient_id"], table["image"], strict=True):
        dicom = load_scan(tmp_path / "dcm" / folder)
        nifti = load_scan(tmp_path / f"V{patient[1:]}.nii.gz")
        np.testing.assert_array_equal(dicom.array, nifti.array)
        np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-5)
