"""``cohortnet convert``: what the pipeline sees, as NIfTI to open in any viewer.

The voxels and affine are those of ``load_scan`` (float32, RAS affine in both sform and qform,
code 1 = scanner). A multi-volume series is written whole as (X, Y, Z, T) by default, as dcm2niix
does; a colour image as a vector image (X, Y[, Z], 1, 3). The header carries no text from the
source (descrip, aux_file and db_name stay empty; no extensions).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.io.loader import Scan, load_scan
from pipeline.reporting.artifacts import write_bytes

NIFTI_VECTOR_INTENT = 1007


def to_nifti(scan: Scan) -> nib.Nifti1Image:
    """A NIfTI-1 image of ``scan``; channel-first colour data becomes a 5D vector image."""
    data = scan.array
    if scan.meta.get("channel_dim") == 0:
        data = np.moveaxis(data, 0, -1)
        while data.ndim < 5:
            data = np.expand_dims(data, -2)
    img = nib.Nifti1Image(np.asarray(data, np.float32), scan.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_sform(scan.affine, code=1)
    img.header.set_qform(scan.affine, code=1)
    if scan.meta.get("channel_dim") == 0:
        img.header.set_intent(NIFTI_VECTOR_INTENT)
    return img


def convert(
    src: str | Path,
    out_path: str | Path,
    *,
    volumes: str = "all",
    nonfinite: str = "refuse",
    source: str | None = None,
) -> Path:
    """Load ``src`` (series folder, DICOM file or NIfTI) and write it to ``out_path`` atomically.

    ``out_path`` ends in .nii or .nii.gz. Raises ScanError for unusable inputs.
    """
    out = Path(out_path)
    if not out.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError("the output file must end in .nii or .nii.gz")
    scan = load_scan(src, nonfinite=nonfinite, source=source, volumes=volumes)
    data = to_nifti(scan).to_bytes()
    if out.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return write_bytes(out, data)
