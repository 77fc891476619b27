"""Slice geometry: order planes along the slice normal, validate spacing, build the RAS affine.

Written by hand because no library does it correctly for our inputs: MONAI's PydicomReader sorts
by InstanceNumber (scrambling anatomy after re-numbering and dropping slices without it), takes
spacing from z alone and checks nothing; ITK finds gaps but MONAI drops its warning and ITK
misplaces tilted slices. Everything here is pure NumPy on plane records, with no pixel access,
so ``cohortnet scan`` and ``load_scan`` reach the same verdict.

Conventions: voxel index (i, j, k) = (column, row, slice), slices ascending along the normal
(row cosine x column cosine); affines map voxel index to RAS mm, like nibabel's.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import aff2axcodes

from pipeline.errors import ScanError
from pipeline.io.planes import Plane

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING_REL_TOL = 1e-2  # ITK warns at 1e-4; DICOM IPP written with 2-3 decimals needs ~2e-3 at 0.5 mm
POSITION_TOL_MM = 0.01  # planes closer than this along the normal share a position
TILT_TOL_DEG = 0.05
ORTHONORMAL_TOL = 1e-2
DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
REQUIRES_SPACING = frozenset({"CT", "MR", "PT", "NM"})


@dataclass(frozen=True)
class Geometry:
    """Where each plane goes and the affine of the result.

    ``order``: plane indices volume-major (volume 0 slices 0..n-1, then volume 1 ...);
    ``affine``: (4, 4) voxel (column, row, slice) -> RAS mm; ``spacing``: mm per spatial axis
    (2 values for 2D); ``spacing_deviation``: max |delta - median| / median of slice steps.
    """

    order: tuple[int, ...]
    n_slices: int
    n_volumes: int
    ndim: int
    affine: np.ndarray
    spacing: tuple[float, ...]
    spacing_deviation: float = 0.0
    tilt_deg: float = 0.0
    patient_geometry: bool = True
    warnings: tuple[str, ...] = ()


def orientation_code(affine: np.ndarray) -> str:
    """nibabel's axis codes of an affine, e.g. "LPS" for an axial DICOM series."""
    return "".join(c or "?" for c in aff2axcodes(affine))


def plane_affine(affine: np.ndarray) -> np.ndarray:
    """A 2-D image's affine with the world axes turned into the image's own plane.

    MONAI's 2-D spatial transforms (Orientation, Spacing) read the top-left 2x2 block of the
    affine, i.e. how the columns and rows move in R and A. For a coronal radiograph or a sagittal
    slice that block is singular (rows run along S), so they fail. Here the world is rotated so
    that its first two axes lie in the image plane: the projections of the two world axes the
    plane spans most (R and A for axial, R and S for coronal, A and S for sagittal), made
    orthonormal, and the normal third. The block then holds the in-plane directions and exact
    pixel spacings; "RA" orients a coronal image to R and S, as a radiograph is read. An axial
    image keeps its affine unchanged.
    """
    a = np.asarray(affine, float)
    normal = np.cross(a[:3, 0], a[:3, 1])
    if not np.linalg.norm(normal) > 0:  # no plane (refused when loaded): nothing to turn
        return a.copy()
    normal /= np.linalg.norm(normal)
    first, second = (k for k in range(3) if k != int(np.argmax(np.abs(normal))))
    basis: list[np.ndarray] = []
    for k in (first, second):
        v = np.eye(3)[k] - (np.eye(3)[k] @ normal) * normal  # the world axis projected to the plane
        for b in basis:
            v -= (v @ b) * b
        basis.append(v / np.linalg.norm(v))
    rotation = np.eye(4)
    rotation[:3, :3] = np.stack([*basis, np.cross(basis[0], basis[1])])
    return rotation @ a


def _unit_axes(orientation: Sequence[float], source: str) -> tuple[np.ndarray, np.ndarray]:
    o = np.asarray(orientation, float)
    if not np.all(np.isfinite(o)):
        raise ScanError("invalid_geometry", "non-finite ImageOrientationPatient", source)
    row, col = o[:3], o[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if abs(nr - 1) > ORTHONORMAL_TOL or abs(nc - 1) > ORTHONORMAL_TOL or abs(row @ col) > ORTHONORMAL_TOL:
        raise ScanError("invalid_geometry", "ImageOrientationPatient is not two orthogonal unit vectors", source)
    return row / nr, col / nc


def _pixel_spacing(planes: Sequence[Plane], modality: str, ndim: int, source: str) -> tuple[np.ndarray, list[str]]:
    spacing = planes[0].spacing
    if spacing is None:
        if ndim == 3 or modality in REQUIRES_SPACING:
            raise ScanError("missing_pixel_spacing", f"PixelSpacing missing for a {modality or 'DICOM'} image", source)
        return np.ones(2), ["assumed_pixel_spacing"]
    s = np.asarray(spacing, float)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ScanError("invalid_geometry", "PixelSpacing is not positive and finite", source)
    return s, []


def _ras(row: np.ndarray, col: np.ndarray, step: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """(i=column, j=row, k=slice) -> LPS, then to RAS; PixelSpacing is (between rows, between columns)."""
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]
    lps[:3, 1] = col * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def plan_geometry(planes: Sequence[Plane], *, modality: str, source: str, same_file: bool) -> Geometry:
    """Validate and order ``planes`` (one stack: same orientation, matrix and pixel spacing).

    ``same_file``: all planes come from one multi-frame file (unplaced frames are then time points).
    Raises ScanError: missing_geometry, invalid_geometry, missing_pixel_spacing, duplicate_slices,
    missing_slices, nonuniform_spacing.
    """
    placed = [p.position is not None and p.orientation is not None for p in planes]
    if len(planes) == 1 or (not any(placed) and same_file):
        return _plane_2d(planes, modality, source)
    if not all(placed):
        raise ScanError(
            "missing_geometry",
            f"{placed.count(False)} of {len(planes)} slices lack ImagePositionPatient or ImageOrientationPatient",
            source,
        )
    return _volume_3d(planes, modality, source, check_instances=not same_file)


def _plane_2d(planes: Sequence[Plane], modality: str, source: str) -> Geometry:
    """A single plane (or unplaced frames of one file, as time points): (X, Y) with a 4x4 affine."""
    first = planes[0]
    spacing, warn = _pixel_spacing(planes, modality, 2, source)
    patient = first.orientation is not None and first.position is not None
    row, col = _unit_axes(first.orientation if patient else DEFAULT_ORIENTATION, source)  # type: ignore[arg-type]
    origin = np.asarray(first.position if patient else (0.0, 0.0, 0.0), float)
    if not np.all(np.isfinite(origin)):
        raise ScanError("invalid_geometry", "non-finite ImagePositionPatient", source)
    step = np.cross(row, col) * (first.thickness or 1.0)
    order = tuple(sorted(range(len(planes)), key=lambda i: planes[i].order))
    return Geometry(
        order=order,
        n_slices=1,
        n_volumes=len(planes),
        ndim=2,
        affine=_ras(row, col, step, spacing, origin),
        spacing=(float(spacing[1]), float(spacing[0])),
        patient_geometry=patient,
        warnings=tuple(warn),
    )


def _positions(planes: Sequence[Plane], source: str) -> np.ndarray:
    pos = np.array([p.position for p in planes], float)
    if not np.all(np.isfinite(pos)):
        raise ScanError("invalid_geometry", "non-finite ImagePositionPatient", source)
    return pos


def _cluster(d: np.ndarray) -> list[list[int]]:
    """Plane indices grouped by position along the normal, ascending."""
    idx = np.argsort(d, kind="stable")
    clusters: list[list[int]] = [[int(idx[0])]]
    for a, b in itertools.pairwise(idx):
        if d[b] - d[a] > POSITION_TOL_MM:
            clusters.append([])
        clusters[-1].append(int(b))
    return clusters


def _volumes(planes: Sequence[Plane], clusters: list[list[int]], source: str) -> list[list[int]]:
    """Slices per volume: one plane per position, or k planes per position = k volumes (time points)."""
    counts = {len(c) for c in clusters}
    if counts == {1}:
        return [[c[0] for c in clusters]]
    if len(counts) > 1:
        dup = sum(len(c) - 1 for c in clusters if len(c) > 1)
        n_dup_pos = sum(1 for c in clusters if len(c) > 1)
        raise ScanError("duplicate_slices", f"{dup} extra slice(s) at {n_dup_pos} already occupied position(s)", source)
    by_order = [sorted(c, key=lambda i: planes[i].order) for c in clusters]
    return [[c[t] for c in by_order] for t in range(counts.pop())]


def _check_steps(d_sorted: np.ndarray, source: str) -> float:
    """Relative deviation of slice steps; raises for gaps (integer multiples) or irregular steps."""
    if len(d_sorted) < 3:
        return 0.0
    steps = np.diff(d_sorted)
    median = float(np.median(steps))
    deviation = float(np.max(np.abs(steps - median)) / median)
    if deviation <= SPACING_REL_TOL:
        return deviation
    ratio = steps / median
    whole = np.abs(ratio - np.round(ratio)) <= SPACING_REL_TOL * np.round(ratio)
    if np.all(whole) and np.any(np.round(ratio) >= 2):
        missing = int(np.sum(np.round(ratio) - 1))
        where = [int(i) for i in np.nonzero(np.round(ratio) >= 2)[0]]
        raise ScanError(
            "missing_slices",
            f"{missing} slice(s) missing: step {median:.4g} mm, gap(s) after sorted slice(s) {where}",
            source,
        )
    raise ScanError(
        "nonuniform_spacing",
        f"slice steps range {steps.min():.4g}-{steps.max():.4g} mm (median {median:.4g}, "
        f"deviation {deviation:.1%} > {SPACING_REL_TOL:.0%})",
        source,
    )


def _instance_warnings(planes: Sequence[Plane], volume: list[int]) -> list[str]:
    instances = [planes[i].instance for i in volume]
    if any(n is None for n in instances):
        return ["missing_instance_number"]
    if len(instances) > 1 and len(set(instances)) == 1:
        return []  # the tiles of one mosaic share their file's number
    diffs = np.diff(np.asarray(instances, float))
    if len(diffs) and not (np.all(diffs > 0) or np.all(diffs < 0)):
        return ["instance_order_mismatch"]
    return []


def _volume_3d(planes: Sequence[Plane], modality: str, source: str, *, check_instances: bool) -> Geometry:
    row, col = _unit_axes(planes[0].orientation, source)  # type: ignore[arg-type]
    normal = np.cross(row, col)
    pos = _positions(planes, source)
    volumes = _volumes(planes, _cluster(pos @ normal), source)
    first = volumes[0]
    d = pos[first] @ normal
    deviation = _check_steps(d, source)
    spacing, warn = _pixel_spacing(planes, modality, 3, source)
    n = len(first)
    # the mean step between first and last slice: exact placement, sheared when the gantry is tilted
    one_slice = normal * (planes[first[0]].thickness or 1.0)
    step = (pos[first[-1]] - pos[first[0]]) / (n - 1) if n > 1 else one_slice
    residual = pos[first] - (pos[first[0]] + np.outer(np.arange(n), step))
    if n > 2 and np.abs(residual).max() > max(POSITION_TOL_MM, SPACING_REL_TOL * np.linalg.norm(step)):
        raise ScanError(
            "invalid_geometry",
            f"slice positions are not on a line (off by {np.abs(residual).max():.3g} mm)",
            source,
        )
    cos_tilt = abs(step @ normal) / np.linalg.norm(step)
    tilt = float(np.degrees(np.arccos(min(1.0, cos_tilt))))
    if check_instances:  # frames of one file are ordered by their functional groups, not numbers
        warn += _instance_warnings(planes, first)
    if tilt > TILT_TOL_DEG:
        warn.append("gantry_tilt")
    affine = _ras(row, col, step, spacing, pos[first[0]])
    return Geometry(
        order=tuple(i for v in volumes for i in v),
        n_slices=n,
        n_volumes=len(volumes),
        ndim=3,
        affine=affine,
        spacing=tuple(float(x) for x in np.linalg.norm(affine[:3, :3], axis=0)),
        spacing_deviation=deviation,
        tilt_deg=tilt,
        warnings=tuple(warn),
    )
