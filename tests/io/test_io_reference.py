"""Real data in ../shared/data: dcm2niix reference conversions and the MedMNIST cohorts (skip when absent).

dcm2niix flips the row axis and we do not, so arrays are compared after bringing both images to
nibabel's closest canonical orientation; voxels must be equal and affines agree within 1e-3 mm.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from datapaths import shared_data as shared

from pipeline.errors import ScanError
from pipeline.io import ScanOptions, convert, load_scan, scan_tree

pytestmark = pytest.mark.shared


def _assert_same_image(ours: Path, reference: Path) -> None:
    a = nib.as_closest_canonical(nib.load(ours))
    b = nib.as_closest_canonical(nib.load(reference))
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj).astype(np.float32))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)


def test_ge_epi_series_converts_to_the_dcm2niix_reference(tmp_path: Path) -> None:
    folder = shared("dicom-reference", "dcm_qa_nih_GE_mr_0004")
    out = convert(folder / "dicom", tmp_path / "ge.nii.gz")
    assert nib.load(out).shape == (64, 64, 15, 10)
    _assert_same_image(out, folder / "ref" / "DCM2NIIX_regression_test_4.nii")


def test_ge_epi_series_is_refused_as_a_classifier_input_unless_a_volume_is_chosen() -> None:
    folder = shared("dicom-reference", "dcm_qa_nih_GE_mr_0004", "dicom")
    with pytest.raises(ScanError, match="10 volumes of 15 slice") as info:
        load_scan(folder, source="ge")
    assert info.value.reason == "multi_volume"
    assert load_scan(folder, volumes="first").array.shape == (64, 64, 15)


@pytest.mark.parametrize(
    ("name", "series"), [("12bitUnsigned", 2), ("12bitUnsigned_0x0F0F", 3), ("12bitSigned_0x0F0F", 4)]
)
def test_twelve_bit_mosaics_convert_to_the_dcm2niix_references(tmp_path: Path, name: str, series: int) -> None:
    folder = shared("dicom-reference", "dcm_qa_12bit")
    out = convert(folder / "dicom" / f"{name}.dcm", tmp_path / f"{series}.nii")
    _assert_same_image(out, folder / "ref" / f"{series}.nii")
    data = np.asanyarray(nib.load(out).dataobj)
    if series == 4:
        assert data.min() < 0, "signed 12-bit values take their sign from bit 11"
    else:
        assert data.min() >= 0
        assert data.max() <= 4095, "unsigned 12-bit values ignore the unused high bits"


def test_twelve_bit_series_sharing_one_uid_are_three_images(tmp_path: Path) -> None:
    summary = scan_tree(
        shared("dicom-reference", "dcm_qa_12bit", "dicom"), tmp_path / "m.csv", ScanOptions(progress=False)
    )
    manifest = pd.read_csv(summary.manifest)
    assert summary.exit_code == 0
    assert list(manifest["shape"]) == ["64x64x35"] * 3


def test_monochrome1_radiographs_are_inverted_to_the_monochrome2_convention() -> None:
    cohort = shared("pneumoniamnist-dicom")
    manifest = pd.read_csv(cohort / "manifest.csv").head(300)
    means = {True: [], False: []}
    for image in manifest["image"]:
        scan = load_scan(cohort / image)
        assert scan.array.shape == (28, 28)
        assert scan.array.min() >= 0
        assert scan.array.max() <= 255
        means[scan.meta["inverted"]].append(float(scan.array.mean()))
    assert means[True], "the sample holds MONOCHROME1 files"
    assert abs(np.mean(means[True]) - np.mean(means[False])) < 15, "inverted images look like the others"


def test_pneumonia_subset_scans_clean_and_hides_identifiers(tmp_path: Path) -> None:
    cohort = shared("pneumoniamnist-dicom")
    subset = tmp_path / "subset"
    for folder in sorted((cohort / "dicom").iterdir())[:40]:
        (subset / folder.name).mkdir(parents=True)
        for f in folder.iterdir():
            (subset / folder.name / f.name).write_bytes(f.read_bytes())
    (tmp_path / "key").write_bytes(b"pseudonymisation key 0123")
    summary = scan_tree(
        subset, tmp_path / "out" / "m.csv", ScanOptions(pseudonymize_key_file=tmp_path / "key", progress=False)
    )
    assert summary.exit_code == 0
    assert summary.n_images == 40
    text = (tmp_path / "out" / "m.csv").read_text() + (tmp_path / "out" / "m.exclusions.csv").read_text()
    for identifying in ("Fakename", "Testperson", "ACC0", "19500101", "PNEU0"):
        assert identifying not in text


def test_adrenal_nifti_volumes_load() -> None:
    cohort = shared("adrenalmnist3d-nifti")
    manifest = pd.read_csv(cohort / "manifest.csv").head(5)
    for image in manifest["image"]:
        scan = load_scan(cohort / image)
        assert scan.array.shape == (28, 28, 28)
        assert scan.meta["nifti_transform"] in ("sform", "qform")


@pytest.mark.slow
def test_whole_pneumonia_cohort_scans_clean(tmp_path: Path) -> None:
    cohort = shared("pneumoniamnist-dicom")
    summary = scan_tree(cohort / "dicom", tmp_path / "m.csv", ScanOptions(verify="full", progress=False))
    manifest = pd.read_csv(summary.manifest)
    assert summary.exit_code == 0
    assert len(manifest) == len(pd.read_csv(cohort / "manifest.csv"))
    assert set(manifest["photometric"]) == {"MONOCHROME1", "MONOCHROME2"}
