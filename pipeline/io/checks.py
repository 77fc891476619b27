"""Per-image checks and QC columns used by ``cohortnet scan`` (same rules as ``load_scan``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ScanError
from pipeline.io import nifti, pixels
from pipeline.io.dicom import read_header
from pipeline.io.geometry import orientation_code
from pipeline.io.volume import StackPlan, assemble


def _fmt(values: Sequence[float], digits: int = 4) -> str:
    return "x".join(f"{v:.{digits}g}" for v in values)


def check_nifti(path: Path, kind: str, *, source: str, verify: str, nonfinite: str) -> nifti.NiftiInfo:
    """Header checks; with ``verify`` other than "header" also reads voxels to count NaN/Inf."""
    nifti.check_extension(path, kind, source)
    info = nifti.inspect_nifti(path, source=source)
    if info.n_volumes > 1:
        raise ScanError("multi_volume", f"4D NIfTI with {info.n_volumes} volumes; a classifier input needs one", source)
    if verify != "header":
        data = nifti.read_nifti(path, info, source=source)
        n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if n_bad and nonfinite == "refuse":
            raise ScanError("nonfinite_voxels", f"{n_bad} of {data.size} voxels are NaN or infinite", source)
    return info


def nifti_qc(info: nifti.NiftiInfo) -> dict[str, Any]:
    spatial = min(len(info.shape), 3)
    spacing = np.linalg.norm(info.affine[:3, :3], axis=0)[:spatial]
    return {
        "format": "nifti",
        "modality": "",
        "manufacturer": "",
        "shape": _fmt(info.shape),
        "spacing": _fmt(spacing),
        "orientation": orientation_code(info.affine),
        "slice_spacing_deviation": 0.0,
        "n_files": 1,
        "n_volumes": info.n_volumes,
        "series_description": "",
        "transfer_syntax": f"NIfTI-{info.version} {info.transform}",
        "photometric": "",
        "qc_warnings": ";".join(info.warnings),
    }


def dicom_qc(meta: dict[str, Any]) -> dict[str, Any]:
    """QC columns from ``loader.dicom_meta``."""
    return {
        "format": "dicom",
        "modality": meta["modality"],
        "manufacturer": meta.get("manufacturer", ""),
        "shape": _fmt(meta["shape"]),
        "spacing": _fmt(meta["spacing"]),
        "orientation": meta["orientation"],
        "slice_spacing_deviation": round(float(meta["spacing_deviation"]), 6),
        "n_files": meta["n_files"],
        "n_volumes": meta["n_volumes"],
        "series_description": meta["series_description"],
        "transfer_syntax": meta["transfer_syntax"],
        "photometric": meta["photometric"],
        "qc_warnings": ";".join(meta["warnings"]),
    }


def verify_stack(plan: StackPlan, *, mode: str, nonfinite: str, source: str) -> None:
    """ "sample": decode the first file; "full": assemble the whole stack and count NaN/Inf."""
    if mode == "header":
        return
    headers = plan.stack.headers if mode == "full" else [plan.stack.items[plan.geometry.order[0]][0]]
    datasets = {}
    for h in headers:
        header, ds = read_header(h.path, source=source)
        datasets[h.path] = ds
        if mode == "sample":
            pixels.decode(ds, header, source=source)
    if mode == "full":
        array = assemble(plan, datasets, source=source)
        n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if n_bad and nonfinite == "refuse":
            raise ScanError("nonfinite_voxels", f"{n_bad} of {array.size} voxels are NaN or infinite", source)


def verify_job(job: tuple[StackPlan, str, str, str]) -> tuple[str, str] | None:
    """``verify_stack`` for a worker process: (reason, detail) of the problem, or None."""
    plan, mode, nonfinite, source = job
    try:
        verify_stack(plan, mode=mode, nonfinite=nonfinite, source=source)
    except ScanError as exc:
        return exc.reason, exc.detail
    return None
