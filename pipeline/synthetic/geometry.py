"""Geometry shared by the generator: point grids, soft-edged ellipsoids, patient pose and scan affines.

A volume is an ``(X, Y, Z)`` array indexed ``(i, j, k)``; its affine maps the voxel index
``(i, j, k, 1)`` to RAS+ millimetres (x towards the patient's right, y anterior, z superior), as in
NIfTI. Anatomy lives in patient RAS coordinates; a ``Pose`` places the patient in the scanner, and
``scan_affine`` builds the voxel -> scanner RAS mm affine of a grid in one of the ``ORIENTATIONS``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

Vec3 = tuple[float, float, float]
FloatArray = npt.NDArray[np.float32]

# Voxel-axis directions (columns: RAS unit vectors of i, j, k). DICOM patient positions give the
# axial grid the scanner writes: IOP rows and the slice normal; "RAS"/"LAS"/"LPS" are NIfTI layouts.
ORIENTATIONS: Mapping[str, tuple[float, float, float]] = {
    "RAS": (1.0, 1.0, 1.0),
    "LAS": (-1.0, 1.0, 1.0),
    "LPS": (-1.0, -1.0, 1.0),
    "HFS": (-1.0, -1.0, 1.0),  # IOP 1\0\0\0\1\0, slices ascending towards the head
    "FFS": (1.0, -1.0, -1.0),  # IOP -1\0\0\0\1\0, slice normal points to the feet
    "HFP": (1.0, 1.0, 1.0),  # IOP -1\0\0\0\-1\0
    "FFP": (-1.0, 1.0, -1.0),  # IOP 1\0\0\0\-1\0
}


def _step(t: np.ndarray | float) -> FloatArray:
    """Soft step from 0 to 1 over t in [-2, 2] (linear, so cheaper than a logistic; slope 1/4 at 0)."""
    return np.clip(np.float32(0.5) + np.float32(0.25) * np.asarray(t, dtype=np.float32), 0.0, 1.0)


class Points(NamedTuple):
    """Coordinates (mm) of a grid of points, one contiguous float32 array per axis (fast arithmetic)."""

    x: FloatArray
    y: FloatArray
    z: FloatArray

    @classmethod
    def from_array(cls, xyz: np.ndarray) -> Points:
        """From an (..., 3) array."""
        return cls(*(np.ascontiguousarray(xyz[..., i], dtype=np.float32) for i in range(3)))


def _rotation(deg: Sequence[float]) -> np.ndarray:
    """3x3 rotation: about R (x), then A (y), then S (z), angles in degrees."""
    ax, ay, az = np.deg2rad(np.asarray(deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx)


@dataclass(frozen=True)
class Ellipsoid:
    """A soft-edged ellipsoid in patient RAS mm, rotated by ``yaw_deg`` about the S axis.

    A huge z semi-axis makes an infinite cylinder along z (vessels, spine).
    """

    center: Vec3
    axes: Vec3  # semi-axes, mm
    hu: float
    yaw_deg: float = 0.0

    def radius(self, pts: Points) -> FloatArray:
        """Normalised radius at ``pts`` (mm): < 1 inside."""
        dx, dy = pts.x - np.float32(self.center[0]), pts.y - np.float32(self.center[1])
        c, s = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        u = (dx * np.float32(c / self.axes[0])) + (dy * np.float32(s / self.axes[0]))
        v = (dy * np.float32(c / self.axes[1])) - (dx * np.float32(s / self.axes[1]))
        r2 = u * u + v * v
        if self.axes[2] < 1e3:  # a cylinder skips the z term
            w = (pts.z - np.float32(self.center[2])) * np.float32(1.0 / self.axes[2])
            r2 += w * w
        return np.sqrt(r2)

    def weight(self, pts: Points, edge_mm: float = 0.8) -> FloatArray:
        """Soft membership in [0, 1]; the edge is about ``edge_mm`` wide along the shortest axis."""
        scale = min(self.axes) / edge_mm
        return np.asarray(_step((1.0 - self.radius(pts)) * scale), dtype=np.float32)


@dataclass(frozen=True)
class Pose:
    """Where the patient lies in the scanner: patient point p sits at scanner point ``R @ p + shift``."""

    shift_mm: Vec3 = (0.0, 0.0, 0.0)
    rotation_deg: Vec3 = (0.0, 0.0, 0.0)  # about R, A, S

    def to_patient(self, pts: FloatArray) -> Points:
        """Scanner RAS mm (..., 3) -> patient RAS mm."""
        rot = _rotation(self.rotation_deg).astype(np.float32)
        return Points.from_array((pts - np.asarray(self.shift_mm, dtype=np.float32)) @ rot)

    def to_scanner(self, pts: np.ndarray) -> np.ndarray:
        """Patient RAS mm (..., 3) -> scanner RAS mm (..., 3)."""
        return np.asarray(pts @ _rotation(self.rotation_deg).T + np.asarray(self.shift_mm))


def scan_affine(
    shape: Sequence[int],
    spacing: Sequence[float],
    *,
    orientation: str = "RAS",
    oblique_deg: Sequence[float] = (0.0, 0.0, 0.0),
    center_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """4x4 voxel -> scanner RAS mm affine of a grid centred on ``center_mm``.

    ``orientation`` is a key of ``ORIENTATIONS``; ``oblique_deg`` tilts the grid (about R, A, S) as an
    oblique reconstruction would. ``spacing`` is (i, j, k) in mm.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {sorted(ORIENTATIONS)}, got {orientation!r}")
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"shape and spacing must have 3 entries, got {shape} and {spacing}")
    dirs = _rotation(oblique_deg) @ np.diag(ORIENTATIONS[orientation])
    affine = np.eye(4)
    affine[:3, :3] = dirs @ np.diag(np.asarray(spacing, dtype=float))
    half = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(center_mm, dtype=float) - affine[:3, :3] @ half
    return affine


def voxel_centers(shape: Sequence[int], affine: np.ndarray) -> FloatArray:
    """RAS mm of every voxel centre: (X, Y, Z, 3) float32."""
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), axis=-1)
    return np.asarray(ijk @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32))
