"""``cohortnet convert`` (voxels and affine exactly as loaded) and the ingestion benchmark's smoke run."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline import cli
from pipeline.benchmarks.ingestion import format_ingestion, ingestion_benchmark
from pipeline.io import convert, load_scan


@pytest.mark.parametrize("case", ["d11_oblique", "d10_gantry_tilt", "f01_radiograph_monochrome1", "n02_nifti2"])
def test_convert_writes_exactly_what_load_scan_returns(corpus: dict[str, Path], tmp_path: Path, case: str) -> None:
    out = convert(corpus[case], tmp_path / "out.nii.gz")
    scan, img = load_scan(corpus[case]), nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), scan.array)
    np.testing.assert_allclose(img.header.get_sform(), scan.affine, atol=1e-5)
    assert int(img.header["sform_code"]) == 1
    assert img.header["descrip"].tobytes().strip(b"\x00") == b""


def test_convert_keeps_every_volume_and_colour_as_a_vector(corpus: dict[str, Path], tmp_path: Path) -> None:
    assert nib.load(convert(corpus["d23_multi_volume"], tmp_path / "t.nii")).shape == (7, 8, 5, 2)
    rgb = nib.load(convert(corpus["f11_rgb"], tmp_path / "rgb.nii.gz"))
    assert rgb.shape == (6, 5, 1, 1, 3)
    assert rgb.header.get_intent()[0] == "vector"


def test_convert_command_exit_codes(corpus: dict[str, Path], tmp_path: Path) -> None:
    assert cli.main(["convert", str(corpus["d01_clean"]), str(tmp_path / "a.nii.gz")]) == 0
    assert (tmp_path / "a.nii.gz").is_file()
    assert cli.main(["convert", str(corpus["d07_missing_slice"]), str(tmp_path / "b.nii.gz")]) == 3
    assert not (tmp_path / "b.nii.gz").exists()
    assert cli.main(["convert", str(corpus["d01_clean"]), str(tmp_path / "c.png")]) == 2
    assert cli.main(["convert", str(corpus["d23_multi_volume"]), str(tmp_path / "d.nii"), "--volumes", "first"]) == 0
    assert nib.load(tmp_path / "d.nii").shape == (7, 8, 5)


def test_ingestion_benchmark_smoke(tmp_path: Path) -> None:
    result = ingestion_benchmark(
        n_files=120, workdir=tmp_path, slices_per_series=20, series_slices=12, series_matrix=32, repeats=1
    )
    assert result["n_files"] == 121  # 6 series of 20 slices and a README
    assert result["n_series"] == 6
    assert result["assemble_same_voxel_values"]
    assert result["files_per_s_header_1w"] > 0
    assert "MONAI PydicomReader" in format_ingestion(result)
