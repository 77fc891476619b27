"""MONAI integration: LoadScand feeds Orientationd/Spacingd/Resized, DICOM and NIfTI agree, no fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from factories import SAGITTAL, _oblique, expected_affine, ramp, write_nifti, write_series
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, LoadImage, Orientationd, Resized, Spacingd

from pipeline.errors import ScanError
from pipeline.io import CohortnetDicomReader, LoadScand

SPACING = (0.9, 0.8)


def _pipeline_3d() -> Compose:
    return Compose(
        [
            LoadScand(keys=("image",)),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=(1.0, 1.0, 1.5), mode="bilinear"),
        ]
    )


@pytest.mark.parametrize("iop", [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), SAGITTAL, _oblique(30)])
def test_same_image_as_dicom_series_and_nifti_gives_the_same_tensor(tmp_path: Path, iop: tuple) -> None:
    volume = ramp().astype(np.float32)
    origin = (-12.5, 30.0, 7.25)
    normal = np.cross(iop[:3], iop[3:])
    positions = [tuple(np.add(origin, 2.0 * k * normal)) for k in range(9)]
    order = [4, 0, 8, 2, 6, 1, 7, 3, 5]  # files in a scrambled order, instance numbers scrambled too
    write_series(
        tmp_path / "dcm",
        volume[:, :, order],
        iop=iop,
        positions=[positions[k] for k in order],
        instances=[9 - k for k in order],
    )
    affine = expected_affine(iop, SPACING, 2.0 * normal, origin)
    write_nifti(tmp_path / "img.nii.gz", volume, affine)
    chain = _pipeline_3d()
    from_dicom = chain({"image": str(tmp_path / "dcm"), "image_id": "a"})["image"]
    from_nifti = chain({"image": str(tmp_path / "img.nii.gz"), "image_id": "b"})["image"]
    assert isinstance(from_dicom, MetaTensor)
    assert from_dicom.shape == from_nifti.shape
    assert from_dicom.shape[0] == 1
    torch.testing.assert_close(from_dicom.affine, from_nifti.affine)
    torch.testing.assert_close(from_dicom.as_tensor(), from_nifti.as_tensor(), atol=1e-3, rtol=0)


def test_same_radiograph_as_dicom_and_2d_nifti_gives_the_same_tensor(corpus: dict[str, Path], tmp_path: Path) -> None:
    inverted = (255 - ramp((6, 5))).astype(np.float32)
    write_nifti(tmp_path / "xr.nii.gz", inverted, np.diag([-0.2, -0.2, 1.0, 1.0]))
    chain = Compose(
        [
            LoadScand(keys=("image",)),
            Orientationd(keys="image", axcodes="RA"),
            Spacingd(keys="image", pixdim=(0.1, 0.1)),
            Resized(keys="image", spatial_size=(16, 12)),
        ]
    )
    dicom = chain({"image": str(corpus["f01_radiograph_monochrome1"]), "image_id": "xr"})["image"]
    nifti = chain({"image": str(tmp_path / "xr.nii.gz"), "image_id": "xr2"})["image"]
    assert dicom.shape == (1, 16, 12)
    torch.testing.assert_close(dicom.as_tensor(), nifti.as_tensor(), atol=1e-4, rtol=0)
    torch.testing.assert_close(dicom.affine, nifti.affine)


def test_meta_names_the_image_by_id_and_carries_no_path(corpus: dict[str, Path]) -> None:
    out = LoadScand()({"image": str(corpus["d01_clean"]), "image_id": "P001-ct"})["image"]
    assert out.meta["filename_or_obj"] == "P001-ct"
    assert str(corpus["d01_clean"].parent) not in repr(dict(out.meta))
    assert out.meta["space"] == "RAS"
    assert out.meta["format"] == "dicom"
    np.testing.assert_allclose(out.meta["spacing"], (0.8, 0.9, 2.0))
    np.testing.assert_array_equal(out.as_tensor()[0].numpy(), ramp())


def test_loaded_items_collate_into_a_batch(corpus: dict[str, Path]) -> None:
    load = LoadScand()
    items = [load({"image": str(corpus[c]), "image_id": c}) for c in ("d01_clean", "d02_instance_descending")]
    batch = list_data_collate(items)
    assert batch["image"].shape == (2, 1, 7, 8, 9)
    assert list(batch["image"].meta["filename_or_obj"]) == ["d01_clean", "d02_instance_descending"]


def test_no_silent_fallback_to_another_reader(corpus: dict[str, Path]) -> None:
    load = LoadScand()
    with pytest.raises(ScanError) as wrong_name:
        load({"image": str(corpus["n15_nifti_named_dcm"]), "image_id": "n15"})
    assert wrong_name.value.reason == "wrong_extension"
    with pytest.raises(ScanError) as corrupt:
        load({"image": str(corpus["p15_no_meta_broken"]), "image_id": "p15"})
    assert corrupt.value.reason == "corrupt_file"
    assert str(corpus["p15_no_meta_broken"]) not in str(corrupt.value)


def test_time_points_never_become_channels(corpus: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="keeps one volume"):
        LoadScand(volumes="all")
    with pytest.raises(ScanError, match="volumes"):
        LoadScand()({"image": str(corpus["n04_4d"]), "image_id": "n04"})
    first = LoadScand(volumes="first")({"image": str(corpus["n04_4d"]), "image_id": "n04"})["image"]
    assert first.shape == (1, 7, 8, 9)


def test_dicom_reader_pinned_in_load_image_matches_loadscand(corpus: dict[str, Path]) -> None:
    path = str(corpus["d11_oblique"])
    via_monai = LoadImage(image_only=True, ensure_channel_first=True)(path, reader=CohortnetDicomReader())
    ours = LoadScand()({"image": path, "image_id": "x"})["image"]
    torch.testing.assert_close(via_monai.as_tensor(), ours.as_tensor())
    torch.testing.assert_close(via_monai.affine, ours.affine)
