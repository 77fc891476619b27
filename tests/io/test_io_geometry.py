"""Series to volume: voxel placement, affines, spacing and pixel values, asserted exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import (
    AXIAL,
    SAGITTAL,
    _oblique,
    _tilted,
    expected_affine,
    pydicom_file,
    ramp,
    write_enhanced,
    write_series,
)

from pipeline.errors import ScanError
from pipeline.io import load_scan
from pipeline.io.geometry import LPS_TO_RAS

SPACING = (0.9, 0.8)  # PixelSpacing: between rows, between columns


def test_clean_series_has_exact_values_affine_and_spacing(corpus: dict[str, Path]) -> None:
    scan = load_scan(corpus["d01_clean"], source="d01")
    assert scan.array.dtype == np.float32
    np.testing.assert_array_equal(scan.array, ramp())
    np.testing.assert_allclose(scan.affine, expected_affine(AXIAL, SPACING, (0, 0, 2), (0, 0, 0)))
    assert scan.meta["spacing"] == pytest.approx((0.8, 0.9, 2.0))
    assert scan.meta["orientation"] == "LPS"
    assert scan.meta["n_files"] == 9


@pytest.mark.parametrize(
    "case",
    [
        "d02_instance_descending",
        "d03_instance_scrambled",
        "d04_instance_missing",
        "d28_copied_file",
        "d29_invalid_is",
        "d20_junk_in_folder",
    ],
)
def test_slices_are_ordered_by_position_not_instance_number(corpus: dict[str, Path], case: str) -> None:
    scan = load_scan(corpus[case], source=case)
    np.testing.assert_array_equal(scan.array, ramp())
    np.testing.assert_allclose(scan.affine, expected_affine(AXIAL, SPACING, (0, 0, 2), (0, 0, 0)))


def test_instance_order_disagreeing_with_position_is_reported(corpus: dict[str, Path]) -> None:
    assert "instance_order_mismatch" in load_scan(corpus["d03_instance_scrambled"]).meta["warnings"]
    assert "missing_instance_number" in load_scan(corpus["d04_instance_missing"]).meta["warnings"]


def test_slices_stored_top_down_come_out_ascending_along_the_normal(tmp_path: Path) -> None:
    positions = [(0.0, 0.0, 2.0 * (8 - k)) for k in range(9)]
    write_series(tmp_path, positions=positions)
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.array, ramp()[:, :, ::-1])
    np.testing.assert_allclose(scan.affine[:3, 2:], [[0, 0], [0, 0], [2, 0]])


def test_gantry_tilt_keeps_every_slice_where_its_header_puts_it(corpus: dict[str, Path]) -> None:
    """Sheared affine: voxel (0, 0, k) maps to slice k's ImagePositionPatient exactly (no resampling)."""
    scan = load_scan(corpus["d10_gantry_tilt"], source="d10")
    assert "gantry_tilt" in scan.meta["warnings"]
    assert scan.meta["tilt_deg"] == pytest.approx(20.0, abs=1e-3)
    for k in range(9):
        centre = scan.affine @ [0, 0, k, 1]
        np.testing.assert_allclose(centre, LPS_TO_RAS @ [0, 0, 2.0 * k, 1], atol=1e-9)
    np.testing.assert_allclose(scan.affine, expected_affine(_tilted(20), SPACING, (0, 0, 2), (0, 0, 0)), atol=1e-9)
    np.testing.assert_array_equal(scan.array, ramp())


def test_oblique_series_and_overlong_ds_strings_give_the_same_exact_affine(corpus: dict[str, Path]) -> None:
    iop = _oblique(30)
    normal = np.cross(iop[:3], iop[3:])
    expected = expected_affine(iop, SPACING, 2 * normal, (0, 0, 0))
    conformant = load_scan(corpus["d11_oblique"])
    long_ds = load_scan(corpus["d12_oblique_long_ds"])
    np.testing.assert_allclose(conformant.affine, expected, atol=1e-6)
    np.testing.assert_allclose(long_ds.affine, expected, atol=1e-12)
    np.testing.assert_array_equal(long_ds.array, ramp())


def test_sagittal_spacing_comes_from_the_normal_not_from_z(corpus: dict[str, Path]) -> None:
    scan = load_scan(corpus["d13_sagittal"])
    assert scan.meta["spacing"] == pytest.approx((0.8, 0.9, 2.0))
    np.testing.assert_allclose(scan.affine[:3, 2], [2.0, 0, 0])  # LPS normal (-1, 0, 0) -> RAS (+1, 0, 0)
    np.testing.assert_allclose(scan.affine, expected_affine(SAGITTAL, SPACING, (-2, 0, 0), (0, 0, 0)))


def test_monochrome1_is_inverted_after_rescale_over_the_stored_range(corpus: dict[str, Path]) -> None:
    np.testing.assert_array_equal(load_scan(corpus["d17_monochrome1"]).array, 65535 - ramp())
    radiograph = load_scan(corpus["f01_radiograph_monochrome1"])
    assert radiograph.meta["inverted"]
    np.testing.assert_array_equal(radiograph.array, 255 - ramp((6, 5)))  # 8 bits stored


def test_rescale_is_applied_per_slice(corpus: dict[str, Path]) -> None:
    array = load_scan(corpus["d18_rescale_per_slice"]).array
    for k in range(9):
        np.testing.assert_array_equal(array[:, :, k], (1 + k) * ramp()[:, :, k] - 10 * k)


def test_twelve_bit_signed_values_take_their_sign_from_the_high_bit(corpus: dict[str, Path]) -> None:
    np.testing.assert_array_equal(load_scan(corpus["d30_12bit_signed"]).array, ramp((7, 8, 3)) - 150)


def test_enhanced_multiframe_is_placed_by_its_functional_groups(corpus: dict[str, Path], tmp_path: Path) -> None:
    scan = load_scan(corpus["d19_enhanced_multiframe"])
    np.testing.assert_array_equal(scan.array, ramp())
    np.testing.assert_allclose(scan.affine, expected_affine(AXIAL, SPACING, (0, 0, 2), (0, 0, 0)))
    order = [2, 0, 1, 4, 3, 6, 5, 8, 7]
    path = write_enhanced(tmp_path / "e.dcm", frame_order=order, slopes=[2.0] * 9, iop=_oblique(10))
    rescaled = load_scan(path)
    np.testing.assert_array_equal(rescaled.array, 2 * ramp())


def test_multi_volume_series_follows_the_volume_rule(corpus: dict[str, Path]) -> None:
    full = ramp((7, 8, 10))
    with pytest.raises(ScanError, match=r"2 volumes of 5 slice") as info:
        load_scan(corpus["d23_multi_volume"])
    assert info.value.reason == "multi_volume"
    all_volumes = load_scan(corpus["d23_multi_volume"], volumes="all")
    assert all_volumes.array.shape == (7, 8, 5, 2)
    np.testing.assert_array_equal(all_volumes.array[..., 1], full[:, :, 5:])
    np.testing.assert_array_equal(load_scan(corpus["d23_multi_volume"], volumes="first").array, full[:, :, :5])
    mean = load_scan(corpus["d23_multi_volume"], volumes="mean").array
    np.testing.assert_allclose(mean, (full[:, :, :5] + full[:, :, 5:]) / 2)


def test_rgb_has_a_leading_channel_axis(corpus: dict[str, Path]) -> None:
    scan = load_scan(corpus["f11_rgb"])
    assert scan.array.shape == (3, 6, 5)
    assert scan.meta["channel_dim"] == 0
    stored = np.arange(90).reshape(5, 6, 3)  # rows, columns, samples
    np.testing.assert_array_equal(scan.array, stored.transpose(2, 1, 0))


def test_radiograph_without_patient_geometry_gets_the_default_lps_plane(corpus: dict[str, Path]) -> None:
    scan = load_scan(corpus["f01_radiograph_monochrome1"])
    assert scan.array.shape == (6, 5)
    assert not scan.meta["patient_geometry"]
    np.testing.assert_allclose(scan.affine, np.diag([-0.2, -0.2, 1.0, 1.0]))


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_expb.dcm",
    ],
)
def test_lossless_encodings_decode_to_the_same_values(name: str) -> None:
    reference = load_scan(pydicom_file("MR_small.dcm"))
    scan = load_scan(pydicom_file(name))
    np.testing.assert_array_equal(scan.array, reference.array)
    np.testing.assert_allclose(scan.affine, reference.affine)


def test_missing_slice_message_states_the_gap(corpus: dict[str, Path]) -> None:
    with pytest.raises(ScanError, match=r"1 slice\(s\) missing: step 2 mm") as info:
        load_scan(corpus["d07_missing_slice"], source="P007/ct")
    assert str(info.value).startswith("P007/ct: ")
