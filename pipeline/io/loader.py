"""``load_scan``: one image (DICOM series folder, DICOM file, NIfTI) -> ``Scan`` or ``ScanError``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from pipeline.errors import ScanError
from pipeline.io import nifti, sniff
from pipeline.io.dicom import DicomHeader, read_header, uid_name
from pipeline.io.geometry import orientation_code
from pipeline.io.series import group_stacks
from pipeline.io.volume import VOLUME_POLICIES, StackPlan, assemble, plan_stack
from pipeline.privacy import plain_digest

NONFINITE_POLICIES = ("refuse", "zero", "min")
SKIP_REASONS = ("not_dicom", "dicomdir")


@dataclass
class Scan:
    """One image as the pipeline sees it.

    ``array``: float32, spatial axes in voxel-index order: (X, Y, Z) for 3D, (X, Y) for 2D, where
    for DICOM X = columns, Y = rows, Z = slices ascending along the slice normal. A leading channel
    axis (C, X, Y[, Z]) only for true multi-channel data (RGB); ``meta["channel_dim"]`` is then 0,
    else None. With ``volumes="all"`` a multi-volume series has a trailing T axis (X, Y, Z, T).
    ``affine``: (4, 4) float64, voxel index -> RAS mm (nibabel's convention), also for 2D.
    ``meta``: whitelisted, non-identifying facts (see ``load_scan``).
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def default_source(path: str | Path) -> str:
    """A label for messages that cannot contain identifying path text: a digest of the path."""
    return "scan-" + plain_digest(str(Path(path).absolute()))[:12]


def load_scan(
    path: str | Path, *, nonfinite: str = "refuse", source: str | None = None, volumes: str = "refuse"
) -> Scan:
    """Read and check one image; raises ScanError(reason, message, source) if it is unusable.

    ``nonfinite``: "refuse" NaN/Inf voxels, or replace them by 0 ("zero") or the finite minimum
    ("min"), recorded in meta. ``volumes``: multi-volume series/4D files are refused, or reduced
    to the "first" volume, the "mean", or kept "all" (trailing T axis).

    meta keys: format, modality, shape, spacing (mm per spatial axis), orientation (axis codes,
    e.g. "LPS"), n_files, n_volumes, transfer_syntax (UID name), photometric, inverted,
    sop_class, series_description (cleaned), spacing_deviation, tilt_deg, patient_geometry,
    nifti_version, nifti_transform ("sform"/"qform"), channel_dim, nonfinite_replaced, warnings.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, not {nonfinite!r}")
    if volumes not in VOLUME_POLICIES:
        raise ValueError(f"volumes must be one of {VOLUME_POLICIES}, not {volumes!r}")
    path = Path(path)
    source = source or default_source(path)
    if not path.exists():
        raise ScanError("not_found", "path does not exist", source)
    if path.is_dir():
        scan = _load_dicom(sorted(p for p in path.iterdir() if p.is_file()), source, volumes, folder=True)
    else:
        kind = sniff.sniff(path)
        if kind in (sniff.NIFTI, sniff.NIFTI_GZ):
            scan = _load_nifti(path, kind, source, volumes)
        elif kind == sniff.EMPTY:
            raise ScanError("empty_file", "zero-byte file", source)
        elif sniff.has_nifti_name(path):
            raise ScanError("corrupt_file", "named like NIfTI but its content is not NIfTI", source)
        else:
            scan = _load_dicom([path], source, volumes, folder=False)
    return _apply_nonfinite(scan, nonfinite, source)


def _read_all(files: list[Path], source: str, folder: bool) -> tuple[list[DicomHeader], dict[Path, Dataset], int]:
    """Headers of ``files``; in a folder, non-DICOM files and DICOMDIRs are skipped and counted."""
    headers, datasets, skipped = [], {}, 0
    for n, f in enumerate(files, 1):
        if folder and sniff.sniff(f) in (sniff.UNKNOWN, sniff.EMPTY):
            skipped += 1  # README, Thumbs.db, 0-byte files: recorded as a count, never by name
            continue
        try:
            header, ds = read_header(f, source=source)
        except ScanError as exc:
            if exc.reason in SKIP_REASONS and folder:
                skipped += 1
                continue
            prefix = f"file {n} of {len(files)}: " if len(files) > 1 else ""
            raise ScanError(exc.reason, prefix + exc.detail, source) from None
        headers.append(header)
        datasets[header.path] = ds
    return headers, datasets, skipped


def _load_dicom(files: list[Path], source: str, volumes: str, folder: bool) -> Scan:
    headers, datasets, skipped = _read_all(files, source, folder)
    if not headers:
        raise ScanError("no_dicom", f"no DICOM image among {len(files)} file(s)", source)
    stacks = group_stacks(headers)
    rejections = {(s.rejection.reason, s.rejection.detail) for s in stacks if s.rejection is not None}
    if len(stacks) > 1 and len(rejections) == 1 and all(s.rejection for s in stacks):
        reason, detail = rejections.pop()  # e.g. a 3-plane localizer: one verdict for the folder
        raise ScanError(reason, detail, source)
    if len(stacks) > 1:
        raise ScanError("multiple_series", f"{len(stacks)} series/stacks; `cohortnet scan` splits them", source)
    plan = plan_stack(stacks[0], source=source, volumes=volumes)
    array = assemble(plan, datasets, source=source)
    meta = dicom_meta(plan)
    if skipped:
        meta["warnings"].append("skipped_files")
    return Scan(array, plan.geometry.affine.copy(), meta)


def dicom_meta(plan: StackPlan) -> dict[str, Any]:
    """Whitelisted meta of a DICOM plan (shared with ``cohortnet scan``'s QC columns)."""
    first, g = plan.stack.first, plan.geometry
    shape = plan.spatial_shape + ((g.n_volumes,) if plan.kept_volumes > 1 else ())
    return {
        "format": "dicom",
        "modality": first.modality,
        "manufacturer": first.manufacturer,
        "shape": shape,
        "spacing": g.spacing[: len(plan.spatial_shape)],
        "orientation": orientation_code(g.affine),
        "n_files": len(plan.stack.headers),
        "n_volumes": g.n_volumes,
        "transfer_syntax": first.ts_name,
        "photometric": first.photometric,
        "inverted": first.photometric == "MONOCHROME1",
        "sop_class": uid_name(first.sop_class) if first.sop_class else "",
        "series_description": first.description,
        "spacing_deviation": g.spacing_deviation,
        "tilt_deg": g.tilt_deg,
        "patient_geometry": g.patient_geometry,
        "channel_dim": 0 if plan.channels > 1 else None,
        "warnings": list(plan.warnings),
    }


def _load_nifti(path: Path, kind: str, source: str, volumes: str) -> Scan:
    nifti.check_extension(path, kind, source)
    info = nifti.inspect_nifti(path, source=source)
    if info.n_volumes > 1 and volumes == "refuse":
        raise ScanError("multi_volume", f"4D NIfTI with {info.n_volumes} volumes; a classifier input needs one", source)
    array = nifti.read_nifti(path, info, source=source)
    if array.ndim == 4 and volumes == "first":
        array = array[..., 0]
    elif array.ndim == 4 and volumes == "mean":
        array = array.mean(axis=-1)
    spatial = min(array.ndim, 3)
    meta = {
        "format": "nifti",
        "modality": "",
        "shape": tuple(array.shape),
        "spacing": tuple(float(x) for x in np.linalg.norm(info.affine[:3, :3], axis=0)[:spatial]),
        "orientation": orientation_code(info.affine),
        "n_files": 1,
        "n_volumes": info.n_volumes,
        "nifti_version": info.version,
        "nifti_transform": info.transform,
        "channel_dim": None,
        "warnings": list(info.warnings),
    }
    return Scan(np.ascontiguousarray(array, dtype=np.float32), info.affine, meta)


def _apply_nonfinite(scan: Scan, policy: str, source: str) -> Scan:
    finite = np.isfinite(scan.array)
    n_bad = int(finite.size - np.count_nonzero(finite))
    scan.meta["nonfinite_replaced"] = 0
    if n_bad == 0:
        return scan
    if policy == "refuse":
        raise ScanError("nonfinite_voxels", f"{n_bad} of {finite.size} voxels are NaN or infinite", source)
    fill = 0.0 if policy == "zero" or not finite.any() else float(scan.array[finite].min())
    scan.array = np.where(finite, scan.array, np.float32(fill))
    scan.meta["nonfinite_replaced"] = n_bad
    scan.meta["warnings"].append(f"nonfinite_replaced_{policy}")
    return scan


def iter_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` (any depth, any name), sorted; directory links not followed."""
    out: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        out.extend(Path(folder) / n for n in sorted(names))
    return out
