"""Hostile or unusual DICOM headers: refused from the header, before the allocation they ask for.

Every file here is a few kilobytes and every test runs in well under a second: the sizes a file
claims (codestream dimensions, frame counts, inflated lengths) are what is checked, never paid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from factories import AXIAL, ENHANCED_MR, Raw, patient_tags, pydicom_file, write_dicom, write_enhanced, write_series
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from pipeline import resources
from pipeline.config import DataConfig
from pipeline.errors import ScanError
from pipeline.io import ScanOptions, load_scan, scan_tree
from pipeline.io.dicom import read_header
from pipeline.transforms import deterministic_transforms

DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
GEOMETRY = {"ImageOrientationPatient": list(AXIAL), "ImagePositionPatient": [0, 0, 0], "PixelSpacing": [1, 1]}


def _reason(path: Path, **kw: Any) -> str:
    with pytest.raises(ScanError) as caught:
        load_scan(path, source="case", **kw)
    assert str(caught.value).startswith("case: ")
    return caught.value.reason


def _j2k(shape: tuple[int, int]) -> bytes:
    from openjpeg import encode

    return bytes(encode(np.zeros(shape, np.uint16), bits_stored=16, use_mct=False))


def _encapsulated(path: Path, frames: list[bytes], rows: int, cols: int, ts: str, **tags: Any) -> Path:
    """A file whose header says ``rows`` x ``cols`` over the given encoded frames (not re-encoded)."""
    tags = {**patient_tags(), **GEOMETRY, "Rows": rows, "Columns": cols, "PixelData": encapsulate(frames), **tags}
    if len(frames) > 1 and "NumberOfFrames" not in tags:
        tags["NumberOfFrames"] = len(frames)
    return write_dicom(path, tags, np.zeros((rows, cols), np.uint16), transfer_syntax=ts)


def test_a_codestream_larger_than_the_header_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _encapsulated(tmp_path / "j2k.dcm", [_j2k((256, 256))], 8, 8, JPEG2000Lossless)
    with pytest.raises(ScanError, match="256x256 pixels of 1 component") as caught:
        read_header(path, source="case")  # headers only: what `cohortnet scan --verify header` sees
    assert caught.value.reason == "corrupt_header"
    assert _reason(path) == "corrupt_header"


def test_every_frame_is_checked_before_decoding(tmp_path: Path) -> None:
    path = _encapsulated(tmp_path / "j2k2.dcm", [_j2k((32, 32)), _j2k((128, 128))], 32, 32, JPEG2000Lossless)
    read_header(path, source="case")  # the first frame agrees with the header
    with pytest.raises(ScanError, match="frame 2: the codestream holds 128x128") as caught:
        load_scan(path, source="case", volumes="first")  # all frames are decoded, one is kept
    assert caught.value.reason == "corrupt_header"


def test_a_jpeg_sof_that_disagrees_with_the_header_is_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert load_scan(pydicom_file("SC_rgb_jpeg_dcmtk.dcm")).array.shape[0] == 3  # the control loads
    ds.Rows, ds.Columns = ds.Rows // 2, ds.Columns // 2
    ds.save_as(tmp_path / "jpeg.dcm")
    assert _reason(tmp_path / "jpeg.dcm") == "corrupt_header"


def test_a_deflate_bomb_is_refused_before_it_is_inflated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "dfl.dcm", {**patient_tags(), **GEOMETRY}, np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "OB", b"\0" * 2**21)  # 2 MiB of zeros: about 2 KB deflated
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    assert path.stat().st_size < 2**14
    assert load_scan(path).array.shape == (4, 4)  # under this machine's cap it loads
    monkeypatch.setattr(resources, "image_memory_budget", lambda: 2**20)  # inflate cap: 512 KiB
    with pytest.raises(ScanError, match="inflates past 524288 bytes") as caught:
        read_header(path, source="case")
    assert caught.value.reason == "too_large"


@pytest.mark.parametrize(("frames", "reason"), [(10**6, "too_large"), (50_000, "corrupt_header")])
def test_a_huge_frame_count_is_refused_before_one_plane_per_frame(tmp_path: Path, frames: int, reason: str) -> None:
    """910 bytes claiming a million RLE frames cost 11 s and 500 MiB before the voxel cap."""
    path = _encapsulated(tmp_path / "rle.dcm", [b"\x00" * 16], 4, 4, RLELossless, NumberOfFrames=frames)
    with pytest.raises(ScanError) as caught:
        read_header(path, source="case")
    assert caught.value.reason == reason


def test_frames_past_the_voxel_cap_or_the_memory_budget_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _encapsulated(tmp_path / "big.dcm", [b"\x00" * 16] * 4, 4096, 4096, RLELossless, NumberOfFrames=64)
    with pytest.raises(ScanError, match="exceed 1000000000 voxels") as caught:
        read_header(path, source="case")
    assert caught.value.reason == "too_large"
    path = _encapsulated(tmp_path / "mid.dcm", [b"\x00" * 16] * 4, 512, 512, RLELossless, NumberOfFrames=4)
    monkeypatch.setattr(resources, "image_memory_budget", lambda: 2**20)
    with pytest.raises(ScanError, match="GiB per image") as caught:
        read_header(path, source="case")
    assert caught.value.reason == "too_large"


@pytest.mark.filterwarnings("ignore:The DICOM readers are highly experimental")
def test_a_mosaic_tile_count_past_the_plane_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nibabel.nicom import csareader

    monkeypatch.setattr(csareader, "get_csa_header", lambda ds, kind: {})
    monkeypatch.setattr(csareader, "get_n_mosaic", lambda csa: 448**2)  # a 448x448 grid of 1-pixel tiles
    monkeypatch.setattr(csareader, "get_slice_normal", lambda csa: None)
    path = _encapsulated(
        tmp_path / "mosaic.dcm", [b"\x00" * 16], 448, 448, RLELossless, ImageType=["ORIGINAL", "PRIMARY", "M", "MOSAIC"]
    )
    with pytest.raises(ScanError, match="mosaic of 200704 tiles") as caught:
        read_header(path, source="case")
    assert caught.value.reason == "too_large"


def test_a_single_dimension_index_value_is_read(tmp_path: Path) -> None:
    """DimensionIndexValues with VM 1 comes back from pydicom as an int, not a list."""
    path = write_enhanced(tmp_path / "enh" / "IM1.dcm")
    ds = pydicom.dcmread(path)
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.FrameContentSequence[0].DimensionIndexValues = f + 1
    ds.save_as(path)
    assert load_scan(path).array.shape == (7, 8, 9)
    summary = scan_tree(tmp_path / "enh", tmp_path / "out" / "manifest.csv", ScanOptions(progress=False))
    assert summary.n_images == 1


def test_an_unexpected_exception_is_one_files_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.io import planes

    write_series(tmp_path / "ok")
    write_enhanced(tmp_path / "enh" / "IM1.dcm", PatientName="Secret^Name")

    def broken(ds: Dataset, **kw: Any) -> Any:
        if ds.SOPClassUID == ENHANCED_MR:
            raise TypeError(f"'{ds.PatientName}' is not iterable")
        return real(ds, **kw)

    real = planes.build_planes
    monkeypatch.setattr(planes, "build_planes", broken)
    out = tmp_path / "out"
    summary = scan_tree(tmp_path, out / "manifest.csv", ScanOptions(progress=False))
    assert summary.n_images == 1
    exclusions = (out / "manifest.exclusions.csv").read_text()
    assert "corrupt_header" in exclusions
    assert "TypeError while reading the header" in exclusions
    assert "Secret" not in exclusions


@pytest.mark.parametrize(
    "tags",
    [
        {"RescaleSlope": Raw("DS", b"2,5 ")},
        {"RescaleIntercept": Raw("DS", b"-1024,0 ")},
        {"RescaleIntercept": Raw("DS", b"-1024\\0 ")},
        {"RescaleSlope": Raw("DS", b"NaN ")},
    ],
)
def test_an_unparseable_rescale_is_refused_not_replaced(tmp_path: Path, tags: dict[str, Raw]) -> None:
    write_series(tmp_path / "s", **tags)
    assert _reason(tmp_path / "s") == "invalid_rescale"


def test_a_valid_rescale_is_applied(tmp_path: Path) -> None:
    write_series(tmp_path / "s", RescaleSlope="2.5", RescaleIntercept="-1024")
    assert load_scan(tmp_path / "s").array[1, 1, 1] == pytest.approx(111 * 2.5 - 1024)


def _radiograph(path: Path, iop: list[float] | None) -> Path:
    tags = {**patient_tags(), "Modality": "DX", "SOPClassUID": DX_IMAGE, "PixelSpacing": [0.2, 0.1]}
    if iop is not None:
        tags |= {"ImageOrientationPatient": iop, "ImagePositionPatient": [10.0, -5.0, 30.0]}
    return write_dicom(path, tags, np.arange(30, dtype=np.uint16).reshape(6, 5) ** 2)


def test_coronal_and_sagittal_2d_images_run_through_the_2d_chain(tmp_path: Path) -> None:
    """MONAI's 2-D Orientation/Spacing read the affine's 2x2 block, singular for a coronal image."""
    chain = deterministic_transforms(DataConfig(spatial_size=(10, 6), spacing=(0.1, 0.1)), 2)
    out = {
        name: chain({"image": str(_radiograph(tmp_path / f"{name}.dcm", iop)), "image_id": name})["image"]
        for name, iop in [
            ("none", None),
            ("axial", [1, 0, 0, 0, 1, 0]),
            ("coronal", [1, 0, 0, 0, 0, -1]),  # a PA chest radiograph: rows to the patient's left, columns down
            ("sagittal", [0, 1, 0, 0, 0, -1]),
        ]
    }
    for name in ("axial", "coronal", "sagittal"):  # read as displayed, like the same image without geometry
        np.testing.assert_allclose(np.asarray(out[name]), np.asarray(out["none"]), atol=1e-5)
    assert out["coronal"].shape == (1, 10, 6)


def test_a_mirrored_coronal_image_is_turned_like_the_others(tmp_path: Path) -> None:
    chain = deterministic_transforms(DataConfig(spatial_size=(5, 6), intensity=DataConfig().intensity), 2)
    plain = chain({"image": str(_radiograph(tmp_path / "a.dcm", [1, 0, 0, 0, 0, -1])), "image_id": "a"})["image"]
    mirrored = _radiograph(tmp_path / "b.dcm", [-1, 0, 0, 0, 0, -1])  # stored with the columns reversed
    ds = pydicom.dcmread(mirrored)
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
    ds.save_as(mirrored)
    flipped = chain({"image": str(mirrored), "image_id": "b"})["image"]
    np.testing.assert_allclose(np.asarray(flipped), np.asarray(plain), atol=1e-5)


def _multiframe(path: Path, **tags: Any) -> Path:
    tags = {**patient_tags(), **GEOMETRY, "Modality": "NM", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.20", **tags}
    return write_dicom(path, tags, np.zeros((3, 6, 5), np.uint16))


def test_frames_that_are_slices_without_positions_are_not_averaged_as_time_points(tmp_path: Path) -> None:
    tomo = _multiframe(tmp_path / "tomo.dcm", FrameIncrementPointer=0x00540080, SliceVector=[1, 2, 3])
    assert _reason(tomo, volumes="mean") == "missing_geometry"
    views = _multiframe(tmp_path / "views.dcm", FrameIncrementPointer=0x00540020, DetectorVector=[1, 2, 1])
    assert _reason(views, volumes="mean") == "unsupported_image"
    cine = _multiframe(tmp_path / "cine.dcm", FrameIncrementPointer=0x00181063, FrameTime=40)
    assert _reason(cine) == "multi_volume"
    assert load_scan(cine, volumes="mean").array.shape == (5, 6)
    gated = _multiframe(
        tmp_path / "gated.dcm", FrameIncrementPointer=[0x00540020, 0x00540070], DetectorVector=[1, 1, 1]
    )
    assert load_scan(gated, volumes="first").array.shape == (5, 6)


def test_a_jpeg_sof_is_found_past_fill_bytes_and_standalone_markers() -> None:
    import struct

    from pydicom.uid import JPEGBaseline8Bit

    from pipeline.io.codestream import frame_size

    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 101, 77, 1) + b"\x01\x11\x00"
    fill = b"\xff\xff\xff"  # ISO 10918-1 B.1.1.2: any marker may be preceded by fill bytes
    stream = b"\xff\xd8" + app0 + b"\xff\x01" + fill[:-1] + sof0 + b"\xff\xda"
    assert frame_size(stream, JPEGBaseline8Bit) == (101, 77, 1)
    later = stream.replace(struct.pack(">HBHHB", 11, 8, 101, 77, 1), struct.pack(">HBHHB", 11, 8, 0, 77, 1))
    assert frame_size(later, JPEGBaseline8Bit) == (0, 77, 1)  # height given by a DNL marker later
    with pytest.raises(ValueError, match="scan data before any SOF"):
        frame_size(b"\xff\xd8\xff\xda\x00\x02", JPEGBaseline8Bit)
