"""NIfTI-1/2 (``.nii``, ``.nii.gz``): header checks before any voxel is read, then MONAI's NibabelReader.

NibabelReader is pinned (called directly, never through LoadImage's fallback chain). It passes
NaN/Inf through and rewrites geometry when pixdim and affine disagree (even rebuilding a singular
sform from pixdim), so the transform is chosen and validated here from the header: sform when its
code is set, else qform, else the file is refused; which one was used is recorded.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.errors import ScanError
from pipeline.io.sniff import NIFTI_GZ
from pipeline.resources import MAX_VOXELS, check_load_budget

GZIP_MAX_RATIO = 1032  # deflate cannot expand more: a larger claim is a lying header
DISAGREE_MM = 1.0
DISAGREE_DEG = 1.0


@dataclass(frozen=True)
class NiftiInfo:
    """Header facts: ``shape`` after dropping trailing singleton dims beyond the third."""

    shape: tuple[int, ...]
    dtype: str
    affine: np.ndarray
    transform: str  # "sform" or "qform"
    version: int
    warnings: tuple[str, ...] = field(default=())

    @property
    def n_volumes(self) -> int:
        return self.shape[3] if len(self.shape) == 4 else 1


def _load_header(path: Path, source: str) -> nib.Nifti1Image | nib.Nifti2Image:
    try:
        img = nib.load(path)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ScanError("truncated", f"NIfTI header cannot be read ({type(exc).__name__})", source) from None
    except Exception as exc:
        raise ScanError("corrupt_file", f"not a readable NIfTI file ({type(exc).__name__})", source) from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ScanError("corrupt_file", f"{type(img).__name__} is not NIfTI", source)
    return img


def _check_size(img: nib.Nifti1Image, path: Path, shape: tuple[int, ...], source: str) -> None:
    """Header dimensions against the file size, before anything is allocated."""
    n_voxels = float(np.prod(shape, dtype=np.float64))
    needed = int(n_voxels * img.header.get_data_dtype().itemsize)
    size = path.stat().st_size
    compressed = path.name.lower().endswith(".gz")
    ceiling = size * GZIP_MAX_RATIO if compressed else size - int(img.header["vox_offset"])
    dims = "x".join(map(str, shape))
    if needed > ceiling:
        if n_voxels > MAX_VOXELS:
            raise ScanError(
                "corrupt_header",
                f"header claims {dims} voxels ({needed} bytes) in a {size}-byte file",
                source,
            )
        held = f"at most {ceiling}" if compressed else str(max(ceiling, 0))
        raise ScanError("truncated", f"voxel data needs {needed} bytes, the file holds {held}", source)
    if n_voxels > MAX_VOXELS:
        raise ScanError("too_large", f"{dims} voxels exceed the cap of {MAX_VOXELS}", source)
    # the stored voxels, their float32 copy and one working copy of the chain (a ".gz" that
    # inflates to gigabytes is refused here, before it is decompressed)
    check_load_budget(dims, n_voxels, img.header.get_data_dtype().itemsize + 8, source)


def _transform(img: nib.Nifti1Image, source: str) -> tuple[np.ndarray, str, list[str]]:
    header = img.header
    sform, s_code = header.get_sform(coded=True)
    qform, q_code = header.get_qform(coded=True)
    if s_code:
        affine, used = sform, "sform"
    elif q_code:
        affine, used = qform, "qform"
    else:
        raise ScanError("no_transform", "qform_code and sform_code are both 0: no usable transform", source)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanError("singular_transform", f"the {used} is singular or non-finite", source)
    warn = []
    if s_code and q_code and _disagree(sform, qform):
        warn.append("qform_sform_disagree")
    zooms = np.asarray(header.get_zooms()[:3], float)
    norms = np.linalg.norm(affine[:3, :3], axis=0)[: len(zooms)]
    if not np.allclose(zooms[: len(norms)], norms, rtol=1e-3, atol=1e-4):
        warn.append("pixdim_mismatch")
    return np.asarray(affine, np.float64), used, warn


def _disagree(a: np.ndarray, b: np.ndarray) -> bool:
    shift = np.linalg.norm(a[:3, 3] - b[:3, 3])
    ua = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)
    ub = b[:3, :3] / np.linalg.norm(b[:3, :3], axis=0)
    angle = np.degrees(np.arccos(np.clip(np.sum(ua * ub, axis=0), -1, 1))).max()
    return bool(shift > DISAGREE_MM or angle > DISAGREE_DEG)


def check_extension(path: Path, kind: str, source: str) -> None:
    """nibabel picks the format from the file name, so content and name must agree."""
    gz_name = path.name.lower().endswith(".nii.gz")
    plain_name = path.name.lower().endswith(".nii")
    if not (gz_name if kind == NIFTI_GZ else plain_name):
        raise ScanError("wrong_extension", "NIfTI content under another file name; rename it (.nii/.nii.gz)", source)


def inspect_nifti(path: str | Path, *, source: str) -> NiftiInfo:
    """Validate a NIfTI header (size, dimensions, transform) without reading voxels."""
    path = Path(path)
    img = _load_header(path, source)
    raw_shape = tuple(int(d) for d in img.shape)
    if not raw_shape or min(raw_shape) < 1:
        raise ScanError("corrupt_header", f"dimensions {raw_shape} are not positive", source)
    _check_size(img, path, raw_shape, source)
    shape = raw_shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4 or len(shape) < 2:
        raise ScanError("unsupported_dimensions", f"{len(shape)}D data {shape}; expected 2D, 3D or 4D (time)", source)
    dtype = img.header.get_data_dtype()
    if dtype.fields is not None or dtype.kind == "c":
        raise ScanError("unsupported_dimensions", f"voxel type {dtype} (vector/complex) is not a scalar image", source)
    affine, used, warn = _transform(img, source)
    version = 2 if isinstance(img, nib.Nifti2Image) else 1
    return NiftiInfo(shape, str(dtype), affine, used, version, tuple(warn))


def read_nifti(path: str | Path, info: NiftiInfo, *, source: str) -> np.ndarray:
    """Voxels through MONAI's NibabelReader, pinned: float32 in the file's axis order, ``info.shape``."""
    from monai.data import NibabelReader  # here, so that scanning a cohort never imports torch

    reader = NibabelReader(channel_dim=None, as_closest_canonical=False, squeeze_non_spatial_dims=False)
    try:
        data, _meta = reader.get_data(reader.read(str(path)))
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ScanError("truncated", f"voxel data ends early ({type(exc).__name__})", source) from None
    except OSError as exc:  # nibabel: "Expected N bytes, got M bytes"
        raise ScanError("truncated", f"voxel data cannot be read ({type(exc).__name__})", source) from None
    except Exception as exc:
        raise ScanError("corrupt_file", f"voxel data cannot be read ({type(exc).__name__})", source) from None
    return np.asarray(data, dtype=np.float32).reshape(info.shape)
