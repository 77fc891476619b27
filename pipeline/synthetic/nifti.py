"""NIfTI output: ``write_nifti`` stores an (X, Y, Z) HU volume and its voxel -> RAS mm affine as .nii.gz.

Values are int16 HU, or uint16 with a scl_inter offset as some converters write them; the gzip
stream has a zero mtime so the same volume gives the same bytes, and the file is written under a
temporary name and renamed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.reporting import artifacts


def write_nifti(volume_hu: np.ndarray, affine_ras: np.ndarray, path: Path, *, intercept: float = 0.0) -> Path:
    """Write ``volume_hu`` ((X, Y, Z) HU, affine voxel -> RAS mm) as .nii.gz.

    Stored as int16 with scl_slope 1, scl_inter 0; a non-zero ``intercept`` stores uint16 values
    HU - intercept with scl_inter = intercept, as some converters do. qform and sform both hold the
    affine with code 1 (scanner), units mm. Written to a temporary name and renamed, so a killed run
    never leaves a truncated file.
    """
    volume = np.asarray(volume_hu)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (X, Y, Z), but it is {volume.ndim}D")
    stored = np.rint(volume.astype(np.float64) - intercept)
    dtype = np.int16 if intercept == 0 else np.uint16
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(f"HU - intercept spans {stored.min():.0f}..{stored.max():.0f}, outside {dtype.__name__}")
    affine = np.asarray(affine_ras, dtype=float)
    img = nib.Nifti1Image(stored.astype(dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, float(intercept))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path = Path(path)
    data = img.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime 0: the same bytes for the same seed
    return artifacts.write_bytes(path, data)
