"""NIfTI: transform choice, NaN/Inf policies, dimensions, size checks before allocation."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from factories import nifti_lying_dims, ramp, write_nifti

from pipeline.errors import ScanError
from pipeline.io import load_scan

AFFINE = np.array([[0.0, -0.9, 0.0, 10.0], [0.8, 0.0, 0.0, -5.0], [0.0, 0.0, 2.0, 3.0], [0, 0, 0, 1]])


def test_values_and_sform_are_nibabels(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "a.nii.gz", ramp().astype(np.int16), AFFINE)
    scan = load_scan(path)
    np.testing.assert_array_equal(scan.array, ramp())
    np.testing.assert_allclose(scan.affine, nib.load(path).affine)
    assert scan.meta["nifti_transform"] == "sform"
    assert scan.meta["nifti_version"] == 1
    assert scan.meta["spacing"] == pytest.approx((0.8, 0.9, 2.0))


def test_qform_is_used_when_the_sform_code_is_zero(tmp_path: Path) -> None:
    scan = load_scan(write_nifti(tmp_path / "q.nii", ramp().astype(np.float32), AFFINE, sform_code=0))
    assert scan.meta["nifti_transform"] == "qform"
    np.testing.assert_allclose(scan.affine, AFFINE, atol=1e-6)


def test_nifti2(tmp_path: Path) -> None:
    scan = load_scan(write_nifti(tmp_path / "n2.nii.gz", ramp().astype(np.float64), AFFINE, version=2))
    assert scan.meta["nifti_version"] == 2
    np.testing.assert_array_equal(scan.array, ramp())


def test_scaled_data_is_returned_in_physical_units(tmp_path: Path) -> None:
    img = nib.Nifti1Image(ramp().astype(np.int16), AFFINE)
    img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, tmp_path / "s.nii")
    np.testing.assert_allclose(load_scan(tmp_path / "s.nii").array, 0.5 * ramp() - 3.0)


def test_nonfinite_voxels_are_refused_or_replaced_by_the_named_policy(corpus: dict[str, Path]) -> None:
    path = corpus["n06_nan_inf"]
    n_bad = int(np.sum(ramp() % 50 == 0)) + 1  # NaN where the ramp is a multiple of 50, one Inf
    with pytest.raises(ScanError, match=f"{n_bad} of 504 voxels are NaN or infinite") as info:
        load_scan(path, source="n06")
    assert info.value.reason == "nonfinite_voxels"
    zero = load_scan(path, nonfinite="zero")
    assert zero.meta["nonfinite_replaced"] == n_bad
    assert np.isfinite(zero.array).all()
    assert zero.array[1, 2, 3] == 0
    low = load_scan(path, nonfinite="min")
    assert low.array[1, 2, 3] == 1.0  # the finite minimum (voxel 0 is NaN: 0 % 50 == 0)


def test_four_d_follows_the_volume_rule(corpus: dict[str, Path]) -> None:
    path = corpus["n04_4d"]
    with pytest.raises(ScanError, match="3 volumes"):
        load_scan(path)
    assert load_scan(path, volumes="all").array.shape == (7, 8, 9, 3)
    np.testing.assert_array_equal(load_scan(path, volumes="first").array, ramp((7, 8, 9, 3))[..., 0])
    np.testing.assert_allclose(load_scan(path, volumes="mean").array, ramp((7, 8, 9, 3)).mean(axis=-1))


def test_trailing_singleton_dimensions_are_dropped(tmp_path: Path) -> None:
    scan = load_scan(write_nifti(tmp_path / "s.nii.gz", ramp((7, 8, 9, 1)).astype(np.int16)))
    assert scan.array.shape == (7, 8, 9)


def test_a_lying_header_is_refused_before_any_allocation(tmp_path: Path) -> None:
    path = nifti_lying_dims(tmp_path / "huge.nii")
    tracemalloc.start()
    with pytest.raises(ScanError, match="20000x20000x20000") as info:
        load_scan(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.reason == "corrupt_header"
    assert peak < 20 * 1024**2


def test_lying_header_in_a_gzip_is_refused_too(tmp_path: Path) -> None:
    raw = nifti_lying_dims(tmp_path / "huge.nii").read_bytes()
    import gzip

    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(ScanError) as info:
        load_scan(tmp_path / "huge.nii.gz")
    assert info.value.reason == "corrupt_header"


def test_truncated_files_name_the_shortfall(corpus: dict[str, Path]) -> None:
    with pytest.raises(ScanError, match="needs 1008 bytes, the file holds 452"):
        load_scan(corpus["n08_truncated_nii"])
    with pytest.raises(ScanError, match="ends early") as info:
        load_scan(corpus["n07_truncated_gz"])
    assert info.value.reason == "truncated"


def test_disagreeing_qform_is_reported_and_the_sform_used(corpus: dict[str, Path]) -> None:
    scan = load_scan(corpus["n09_qform_sform_disagree"])
    assert "qform_sform_disagree" in scan.meta["warnings"]
    np.testing.assert_allclose(scan.affine, np.diag([0.8, 0.9, 2.0, 1.0]))


def test_pixdim_mismatch_keeps_the_affine_not_pixdim(corpus: dict[str, Path]) -> None:
    """MONAI's NibabelReader would rewrite the header from pixdim; the validated sform is kept."""
    scan = load_scan(corpus["n12_pixdim_mismatch"])
    assert "pixdim_mismatch" in scan.meta["warnings"]
    np.testing.assert_allclose(scan.affine, np.diag([0.8, 0.9, 2.0, 1.0]))
