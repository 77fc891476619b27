"""The demo cohort: seeded CT-like phantoms written as real DICOM series and NIfTI files.

``make_demo_cohort`` writes a cohort that looks like a PACS export: abdominal CT volumes with a body
outline, fat, muscle, liver, spleen, kidneys, vessels, spine, ribs, lung bases and bowel gas, smooth
intensity inhomogeneity and correlated noise. Positive patients carry one or two soft-edged lesions
(liver by default; kidney or spleen on request) whose size, contrast and position vary. Three sites
differ in noise, slice spacing, DICOM storage conventions and file naming; some patients have a
follow-up scan. Nothing here imports torch or MONAI.

Conventions
-----------
A volume is an ``(X, Y, Z)`` array indexed ``(i, j, k)``; its affine maps the voxel index
``(i, j, k, 1)`` to RAS+ millimetres (x towards the patient's right, y anterior, z superior), as in
NIfTI. DICOM uses LPS, so ``lps = diag(-1, -1, 1) @ ras``. In a DICOM slice, ``i`` is the column index
(along the first IOP vector, spacing ``PixelSpacing[1]``) and ``j`` the row index (second IOP vector,
spacing ``PixelSpacing[0]``), so ``pixel_array == volume[:, :, k].T``. Anatomy lives in patient RAS
coordinates (origin: the body centre at the upper-abdominal reference level); a ``Pose`` places the
patient in the scanner, and the scan affine maps voxels to scanner RAS mm.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds
from scipy import ndimage

from pipeline import schema
from pipeline.reporting import artifacts
from pipeline.reporting.artifacts import write_csv

Vec3 = tuple[float, float, float]
FloatArray = npt.NDArray[np.float32]


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


# Extra manifest columns (patient-level except VISIT); the required ones come from pipeline.schema.
SITE, SCANNER, SEX, AGE, VISIT, FORMAT = "site", "scanner", "sex", "age", "visit", "format"
MANIFEST_COLUMNS = (
    schema.PATIENT_ID, schema.IMAGE, schema.LABEL, schema.STUDY_ID, schema.SERIES_ID,
    SITE, SCANNER, SEX, AGE, VISIT, FORMAT,
)  # fmt: skip

# DICOM keywords whose (fake) values identify a person; outputs must never contain them.
IDENTIFYING_TAGS = (
    "PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "OperatorsName", "StationName", "DeviceSerialNumber",
)  # fmt: skip

# Default lesion difficulty. A plain 3D ResNet trained from scratch on ~80 patients for a few epochs
# (the demo's budget) stayed near chance (AUC 0.45-0.55) for lesions of radius 8-15 mm at +40..+120 HU; it needs a
# conspicuous finding: lesions 3-5 cm across, +150..+300 HU above the host (a calcified or
# contrast-retaining lesion), sometimes two. Lower these to make the task harder.
LESION_RADIUS_MM = (15.0, 25.0)  # equivalent-sphere radius, uniform range
LESION_CONTRAST_HU = (150.0, 300.0)  # above the host organ, uniform range; negative = hypodense
LESION_ORGANS: Mapping[str, float] = {"liver": 1.0}  # host weights; "kidney" and "spleen" also work
LESION_COUNT = (1, 2)  # lesions per positive patient, low and high

_MARKER = ".cohortnet-demo"
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

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

# Tissue labels painted alongside HU; lesions are placed by label.
AIR, FAT, MUSCLE, SOFT, LIVER, SPLEEN, KIDNEY, VESSEL, BONE, LUNG, GAS, HEART, STOMACH, COUCH, LESION = range(15)
_ORGAN_LABEL = {"liver": LIVER, "kidney": KIDNEY, "spleen": SPLEEN}


# --------------------------------------------------------------------------------------------------
# Geometry primitives
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """One patient's body in patient RAS mm. Drawn by ``random_anatomy``; painted by ``make_phantom``."""

    body_axes: tuple[float, float]  # LR and AP semi-axes of the skin outline at z = 0
    body_taper: tuple[float, float]  # relative change of those semi-axes per 100 mm towards the head
    body_power: float  # superellipse exponent: 2 is an ellipse, larger is boxier
    fat_mm: float  # subcutaneous fat
    wall_mm: float  # abdominal wall muscle
    couch_gap_mm: float
    spine_y: float  # AP position of the vertebral body centre
    vertebra_radius: float
    bone_hu: float  # cancellous bone; the cortex is brighter
    disc_period_mm: float
    disc_phase_mm: float
    diaphragm_z: tuple[float, float]  # right and left dome tops
    dome_radius_mm: float
    liver: Ellipsoid
    spleen: Ellipsoid
    kidneys: tuple[Ellipsoid, Ellipsoid]  # right, left
    stomach: Ellipsoid
    heart: Ellipsoid
    aorta: Ellipsoid
    ivc: Ellipsoid
    paraspinal: tuple[Ellipsoid, Ellipsoid]
    gas: tuple[Ellipsoid, ...]
    waves: tuple[tuple[float, float, float, float], ...]  # texture: wave vector (rad/mm) and phase


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _draw_gas(rng: np.random.Generator, ai: float, bi: float, z_top: float) -> tuple[Ellipsoid, ...]:
    """Bowel gas pockets in the anterior and left abdomen, below ``z_top``."""
    pockets = []
    for _ in range(int(rng.integers(2, 6))):
        center = (_u(rng, -0.6, 0.25) * ai, _u(rng, 0.0, 0.6) * bi, _u(rng, -90.0, z_top))
        axes = (_u(rng, 5, 14), _u(rng, 5, 12), _u(rng, 5, 14))
        pockets.append(Ellipsoid(center, axes, -950.0, _u(rng, 0, 180)))
    return tuple(pockets)


def _draw_waves(rng: np.random.Generator, n: int = 6) -> tuple[tuple[float, float, float, float], ...]:
    waves = []
    for _ in range(n):
        direction = rng.normal(size=3)
        k = direction / np.linalg.norm(direction) * 2 * np.pi / _u(rng, 25.0, 70.0)
        waves.append((float(k[0]), float(k[1]), float(k[2]), _u(rng, 0, 2 * np.pi)))
    return tuple(waves)


def random_anatomy(rng: np.random.Generator, *, sex: str = "F", age: float = 60.0) -> Anatomy:
    """Draw one patient's body: sizes (mm), organ positions and enhancement (HU) vary per patient."""
    a = _u(rng, 105, 125) if sex == "M" else _u(rng, 95, 115)
    b = a * _u(rng, 0.68, 0.82)
    fat = _u(rng, 6, 18) if sex == "M" else _u(rng, 9, 24)
    wall = _u(rng, 7, 12)
    ai, bi = a - fat, b - fat
    rv = _u(rng, 15, 19)
    spine_y = -bi + rv + _u(rng, 18, 24)
    z_right = _u(rng, 45, 60)
    z_left = z_right - _u(rng, 0, 12)
    liver_axes = (_u(rng, 0.5, 0.6) * ai, _u(rng, 0.6, 0.75) * bi, _u(rng, 65, 85))
    liver_center = (0.3 * ai + _u(rng, -5, 5), _u(rng, 0.0, 0.15) * bi, z_right - 0.75 * liver_axes[2])
    kz = _u(rng, -50, -35)
    kidneys = tuple(
        Ellipsoid(
            (side * _u(rng, 50, 62), spine_y + _u(rng, 5, 15), kz + (0.0 if side > 0 else _u(rng, 5, 15))),
            (_u(rng, 22, 27), _u(rng, 20, 25), _u(rng, 45, 55)),
            _u(rng, 150, 190),
            -side * _u(rng, 20, 35),
        )
        for side in (1.0, -1.0)
    )
    aorta_hu = _u(rng, 150, 210)
    vessel_y = spine_y + rv + 12
    return Anatomy(
        body_axes=(a, b),
        body_taper=(_u(rng, -0.05, 0.05), _u(rng, -0.05, 0.05)),
        body_power=_u(rng, 2.0, 2.6),
        fat_mm=fat,
        wall_mm=wall,
        couch_gap_mm=_u(rng, 1, 6),
        spine_y=spine_y,
        vertebra_radius=rv,
        bone_hu=_u(rng, 230, 290) - 1.2 * (age - 50),
        disc_period_mm=_u(rng, 28, 34),
        disc_phase_mm=_u(rng, 0, 34),
        diaphragm_z=(z_right, z_left),
        dome_radius_mm=_u(rng, 120, 180),
        liver=Ellipsoid(liver_center, liver_axes, _u(rng, 95, 115), _u(rng, -15, 10)),
        spleen=Ellipsoid(
            (-0.55 * ai, -0.25 * bi, z_left - _u(rng, 25, 40)),
            (_u(rng, 20, 28), _u(rng, 40, 55), _u(rng, 40, 55)),
            _u(rng, 100, 120),
            _u(rng, -40, -20),
        ),
        kidneys=(kidneys[0], kidneys[1]),
        stomach=Ellipsoid(
            (-0.3 * ai, 0.3 * bi, z_left - _u(rng, 20, 35)),
            (_u(rng, 30, 45), _u(rng, 25, 35), _u(rng, 30, 40)),
            _u(rng, 5, 25),
            _u(rng, -20, 20),
        ),
        heart=Ellipsoid(
            (-0.15 * ai, 0.2 * bi, z_left + _u(rng, 45, 60)),
            (_u(rng, 50, 60), _u(rng, 40, 48), _u(rng, 45, 55)),
            aorta_hu * 0.8,
            _u(rng, 20, 40),
        ),
        aorta=Ellipsoid((-12.0, vessel_y, 0.0), (r := _u(rng, 9, 13), r, 1e4), aorta_hu),
        ivc=Ellipsoid((22.0, vessel_y + 4, 0.0), (_u(rng, 10, 13), _u(rng, 8, 11), 1e4), aorta_hu * 0.7),
        paraspinal=tuple(  # type: ignore[arg-type]
            Ellipsoid((side * (rv + 10), spine_y - rv - 8, 0.0), (_u(rng, 18, 24), _u(rng, 16, 22), 1e4), 55.0)
            for side in (1.0, -1.0)
        ),
        gas=_draw_gas(rng, ai, bi, z_left - 40),
        waves=_draw_waves(rng),
    )


def followup_anatomy(rng: np.random.Generator, anatomy: Anatomy) -> Anatomy:
    """The same patient months later: bowel gas moved, contrast timing (organ HU) slightly different."""

    def jitter(e: Ellipsoid) -> Ellipsoid:
        return replace(e, hu=e.hu + _u(rng, -6, 6))

    a, b = anatomy.body_axes
    return replace(
        anatomy,
        liver=jitter(anatomy.liver),
        spleen=jitter(anatomy.spleen),
        kidneys=(jitter(anatomy.kidneys[0]), jitter(anatomy.kidneys[1])),
        aorta=jitter(anatomy.aorta),
        gas=_draw_gas(rng, a - anatomy.fat_mm, b - anatomy.fat_mm, anatomy.diaphragm_z[1] - 40),
    )


# --------------------------------------------------------------------------------------------------
# Painting: HU and tissue labels on points in patient RAS mm
# --------------------------------------------------------------------------------------------------


class _Canvas:
    """HU and tissue-label arrays painted back to front; a later structure covers an earlier one."""

    def __init__(self, pts: Points) -> None:
        self.pts = pts
        self.hu = np.full(pts.x.shape, -1000.0, dtype=np.float32)
        self.label = np.full(pts.x.shape, AIR, dtype=np.int8)

    def paint(self, weight: FloatArray, hu: float | FloatArray, label: int) -> None:
        self.hu += weight * (hu - self.hu)
        self.label[weight > 0.5] = label


def _texture(pts: Points, waves: Sequence[tuple[float, float, float, float]]) -> FloatArray:
    """Smooth random field with mean 0 and SD about 1 (sum of plane waves, wavelengths 25-70 mm)."""
    out = np.zeros(pts.x.shape, dtype=np.float32)
    for kx, ky, kz, phase in waves:
        out += np.cos(pts.x * np.float32(kx) + pts.y * np.float32(ky) + pts.z * np.float32(kz) + np.float32(phase))
    return np.asarray(out * np.float32(math.sqrt(2.0 / max(len(waves), 1))))


def _body_weight(pts: Points, anatomy: Anatomy, shrink_mm: float = 0.0) -> FloatArray:
    """Soft membership of the skin outline shrunk by ``shrink_mm`` (a superellipse varying along z)."""
    (a0, b0), (ta, tb) = anatomy.body_axes, anatomy.body_taper
    z = pts.z / np.float32(100.0)
    a = a0 * (1 + ta * z) - shrink_mm
    b = b0 * (1 + tb * z) - shrink_mm
    p = anatomy.body_power
    r = (np.abs(pts.x / a) ** p + np.abs(pts.y / b) ** p) ** (1.0 / p)
    return np.asarray(_step((1.0 - r) * b / 0.8), dtype=np.float32)


def _paint_trunk(canvas: _Canvas, anatomy: Anatomy) -> FloatArray:
    """Skin with fat, the muscular wall and the abdominal cavity; returns the cavity weight."""
    pts = canvas.pts
    canvas.paint(_body_weight(pts, anatomy), -100.0, FAT)
    canvas.paint(_body_weight(pts, anatomy, anatomy.fat_mm), 50.0, MUSCLE)
    cavity = _body_weight(pts, anatomy, anatomy.fat_mm + anatomy.wall_mm)
    # Mesenteric fat and bowel: a smooth mixture of soft tissue and fat.
    fat_fraction = np.clip(0.45 + 0.3 * _texture(pts, anatomy.waves), 0.0, 0.95)
    canvas.paint(cavity, 40.0 * (1 - fat_fraction) - 95.0 * fat_fraction, SOFT)
    return cavity


def _paint_organs(canvas: _Canvas, anatomy: Anatomy, cavity: FloatArray, prone: bool) -> None:
    """Liver, spleen, stomach (air-fluid level on the non-dependent side) and kidneys with sinus fat."""
    pts = canvas.pts
    parenchyma = 5.0 * _texture(Points(pts.z, pts.y, pts.x), anatomy.waves)
    canvas.paint(anatomy.liver.weight(pts) * cavity, anatomy.liver.hu + parenchyma, LIVER)
    canvas.paint(anatomy.spleen.weight(pts) * cavity, anatomy.spleen.hu + parenchyma, SPLEEN)
    stomach = anatomy.stomach
    canvas.paint(stomach.weight(pts) * cavity, stomach.hu, STOMACH)
    level = stomach.center[1] + (-0.4 if prone else 0.4) * stomach.axes[1]
    above = _step(((level - pts.y) if prone else (pts.y - level)) / 0.8)
    canvas.paint(stomach.weight(pts) * cavity * above.astype(np.float32), -950.0, GAS)
    for kidney in anatomy.kidneys:
        canvas.paint(kidney.weight(pts), kidney.hu, KIDNEY)
        medial = -math.copysign(8.0, kidney.center[0])
        sinus = replace(
            kidney,
            center=(kidney.center[0] + medial, kidney.center[1], kidney.center[2]),
            axes=(kidney.axes[0] * 0.4, kidney.axes[1] * 0.45, kidney.axes[2] * 0.55),
            hu=-60.0,
        )
        canvas.paint(sinus.weight(pts), sinus.hu, FAT)


def _paint_thorax(canvas: _Canvas, anatomy: Anatomy) -> None:
    """Lung bases above the diaphragm domes (which also shape the liver dome), then the heart."""
    pts = canvas.pts
    ai = anatomy.body_axes[0] - anatomy.fat_mm
    inside_ribs = _body_weight(pts, anatomy, anatomy.fat_mm + anatomy.wall_mm + 3.0)
    right = pts.x > 0
    top = np.where(right, anatomy.diaphragm_z[0], anatomy.diaphragm_z[1])
    dx = pts.x - np.where(right, 0.45, -0.45) * ai
    dome = top - (dx**2 + pts.y**2) / (2 * anatomy.dome_radius_mm)
    lateral = _step((np.abs(pts.x) - 20.0) / 1.5)  # mediastinum between the lungs
    lung = inside_ribs * _step((pts.z - dome) / 1.5) * lateral
    canvas.paint(lung.astype(np.float32), -850.0 + 25.0 * _texture(pts, anatomy.waves), LUNG)
    canvas.paint(anatomy.heart.weight(pts), anatomy.heart.hu, HEART)


def _paint_spine(canvas: _Canvas, anatomy: Anatomy) -> None:
    """Paraspinal muscles, vertebral bodies with discs, the neural arch and the spinal canal."""
    pts = canvas.pts
    for muscle in anatomy.paraspinal:
        canvas.paint(muscle.weight(pts), muscle.hu, MUSCLE)
    rv, y0 = anatomy.vertebra_radius, anatomy.spine_y
    column = Ellipsoid((0.0, y0, 0.0), (rv, rv, 1e4), 650.0)
    canvas.paint(column.weight(pts), 650.0, BONE)
    canvas.paint(replace(column, axes=(rv - 2.5, rv - 2.5, 1e4)).weight(pts), anatomy.bone_hu, BONE)
    phase = 2 * np.pi * (pts.z - anatomy.disc_phase_mm) / anatomy.disc_period_mm
    disc = _step((np.cos(phase) - math.cos(np.pi * 7.0 / anatomy.disc_period_mm)) * 12.0)
    canvas.paint(column.weight(pts) * disc.astype(np.float32), 80.0, SOFT)
    canal_y = y0 - rv - 9.0
    arch = Ellipsoid((0.0, canal_y, 0.0), (13.0, 13.0, 1e4), 600.0)
    posterior = _step((canal_y + 3.0 - pts.y) / 0.8).astype(np.float32)
    canvas.paint(arch.weight(pts) * posterior, 600.0, BONE)
    canvas.paint(Ellipsoid((0.0, canal_y, 0.0), (8.0, 8.0, 1e4), 20.0).weight(pts), 20.0, SOFT)
    canvas.paint(Ellipsoid((0.0, canal_y - 20.0, 0.0), (5.0, 13.0, 1e4), 600.0).weight(pts), 600.0, BONE)


def _paint_ribs(canvas: _Canvas, anatomy: Anatomy) -> None:
    """Lower ribs: a thin bony shell inside the wall, striped along z and sloping down anteriorly."""
    pts = canvas.pts
    shell = _body_weight(pts, anatomy, anatomy.fat_mm + 2.0) * (1.0 - _body_weight(pts, anatomy, anatomy.fat_mm + 8.0))
    stripes = _step((np.cos(2 * np.pi * (pts.z + 0.8 * pts.y) / 28.0) - 0.6) * 8.0)
    upper = _step((pts.z - (anatomy.kidneys[0].center[2] + 20.0)) / 3.0)
    cartilage_gap = _step((np.abs(pts.x) - 30.0) / 2.0) + _step(-pts.y / 2.0)
    ribs = shell * stripes * upper * np.clip(cartilage_gap, 0.0, 1.0)
    canvas.paint(ribs.astype(np.float32), 500.0, BONE)


def _paint_anatomy(pts: Points, anatomy: Anatomy, *, prone: bool = False) -> _Canvas:
    """Noise-free HU and tissue labels of ``anatomy`` at ``pts``, patient RAS mm."""
    canvas = _Canvas(pts)
    cavity = _paint_trunk(canvas, anatomy)
    _paint_organs(canvas, anatomy, cavity, prone)
    _paint_thorax(canvas, anatomy)
    for vessel in (anatomy.aorta, anatomy.ivc):
        canvas.paint(vessel.weight(pts), vessel.hu, VESSEL)
    _paint_spine(canvas, anatomy)
    _paint_ribs(canvas, anatomy)
    for pocket in anatomy.gas:
        canvas.paint(pocket.weight(pts, edge_mm=1.5) * cavity, pocket.hu, GAS)
    return canvas


def _paint_couch(canvas: _Canvas, pts_table: Points, anatomy: Anatomy, prone: bool) -> None:
    """The scanner table under the patient (``pts_table``: scanner mm relative to the patient shift)."""
    # Distance downwards (towards the floor): posterior when supine, anterior when prone.
    x, down = pts_table.x, pts_table.y if prone else -pts_table.y
    top = anatomy.body_axes[1] + anatomy.couch_gap_mm - x**2 / 1000.0
    slab = _step((down - top) / 0.7) * _step((top + 7.0 - down) / 0.7)
    width = _step((0.9 * anatomy.body_axes[0] - np.abs(x)) / 1.0)
    canvas.paint((slab * width).astype(np.float32), 200.0, COUCH)


# --------------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LesionSpec:
    """A lesion in patient RAS mm; it is painted at the host organ's HU plus ``contrast_hu``."""

    organ: str  # a key of LESION_ORGANS: "liver" or "kidney" (or "spleen")
    center: Vec3
    axes: Vec3  # semi-axes, mm
    yaw_deg: float
    contrast_hu: float

    @property
    def radius_mm(self) -> float:
        """Equivalent-sphere radius (geometric mean of the semi-axes)."""
        return float(np.prod(self.axes) ** (1.0 / 3.0))


def _host_hu(anatomy: Anatomy, organ: str) -> float:
    if organ == "kidney":
        return float(np.mean([k.hu for k in anatomy.kidneys]))
    if organ not in ("liver", "spleen"):
        raise ValueError(f"lesion organ must be liver, kidney or spleen, got {organ!r}")
    return float(getattr(anatomy, organ).hu)


def _organ_grid(anatomy: Anatomy, organ: str, z_range: tuple[float, float], step: float) -> Points:
    """Grid points (patient mm) over the host organ's bounding box within ``z_range``."""
    parts = anatomy.kidneys if organ == "kidney" else (getattr(anatomy, organ),)
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for e in parts:
        c, s = math.cos(math.radians(e.yaw_deg)), math.sin(math.radians(e.yaw_deg))
        half = np.array([math.hypot(e.axes[0] * c, e.axes[1] * s), math.hypot(e.axes[0] * s, e.axes[1] * c), e.axes[2]])
        lo, hi = (
            np.minimum(lo, np.asarray(e.center) - half - 6),
            np.maximum(hi, np.asarray(e.center) + half + 6),
        )
    lo[2], hi[2] = max(lo[2], z_range[0]), min(hi[2], z_range[1])
    axes = [np.arange(lo[i], hi[i], step, dtype=np.float32) for i in range(3)]
    return Points(*np.meshgrid(*axes, indexing="ij"))


def random_lesion(
    rng: np.random.Generator,
    anatomy: Anatomy,
    *,
    radius_mm: tuple[float, float] = LESION_RADIUS_MM,
    contrast_hu: tuple[float, float] = LESION_CONTRAST_HU,
    organs: Mapping[str, float] = LESION_ORGANS,
    z_range: tuple[float, float] = (-50.0, 50.0),
    avoid: Sequence[LesionSpec] = (),
) -> LesionSpec:
    """Draw a lesion inside a host organ, at least its radius (where the organ allows) from the organ's edge.

    The host is drawn by the ``organs`` weights (another host is used when it has no room);
    ``z_range`` (patient mm) is the slab every scan of the patient covers; the lesion keeps 4 mm
    away from the lesions in ``avoid``. Candidate centres come from a 3 mm tissue-label map of the
    painted anatomy, so the lesion avoids the spine, vessels, lungs and organs that cover the host.
    """
    names = sorted(organs)
    weights = np.asarray([organs[n] for n in names], dtype=float)
    order = [names[int(rng.choice(len(names), p=weights / weights.sum()))]]
    order += [n for n in names if n not in order]
    r = _u(rng, *radius_mm)
    axes = tuple(float(x) for x in r * np.exp(rng.uniform(-0.15, 0.15, size=3)))
    yaw, contrast, step = _u(rng, 0, 180), _u(rng, *contrast_hu), 3.0
    for organ in order:
        pts = _organ_grid(anatomy, organ, z_range, step)
        host = _paint_anatomy(pts, anatomy).label == _ORGAN_LABEL[organ]
        host_z = host & (pts.z >= z_range[0] + r) & (pts.z <= z_range[1] - r)
        for other in avoid:
            gap = np.sqrt(sum((c - o) ** 2 for c, o in zip(pts, other.center, strict=True)))
            host_z &= gap >= r + max(other.axes) + 4.0
        if not host_z.any():
            continue
        depth = ndimage.distance_transform_edt(host, sampling=step)
        need = min(r + 3.0, 0.8 * float(depth[host_z].max()))
        candidates = np.argwhere(host_z & (depth >= need))
        index = tuple(candidates[int(rng.integers(len(candidates)))])
        center = np.array([c[index] for c in pts]) + rng.uniform(-step / 2, step / 2, size=3)
        return LesionSpec(organ, tuple(map(float, center)), axes, yaw, contrast)  # type: ignore[arg-type]
    raise ValueError(f"no room for a lesion in {names} within z {z_range} mm")


def random_lesions(
    rng: np.random.Generator,
    anatomy: Anatomy,
    *,
    count: tuple[int, int] = (1, 1),
    radius_mm: tuple[float, float] = LESION_RADIUS_MM,
    contrast_hu: tuple[float, float] = LESION_CONTRAST_HU,
    organs: Mapping[str, float] = LESION_ORGANS,
    z_range: tuple[float, float] = (-50.0, 50.0),
) -> tuple[LesionSpec, ...]:
    """Between ``count[0]`` and ``count[1]`` separate lesions (as metastases are often several); at
    least one, fewer than drawn when the organs have no room left. Arguments as for ``random_lesion``."""
    if not 1 <= count[0] <= count[1]:
        raise ValueError(f"lesion count must satisfy 1 <= low <= high, got {count}")
    lesions: list[LesionSpec] = []
    knobs = {"radius_mm": radius_mm, "contrast_hu": contrast_hu, "organs": organs, "z_range": z_range}
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        try:
            lesions.append(random_lesion(rng, anatomy, avoid=lesions, **knobs))  # type: ignore[arg-type]
        except ValueError:
            if not lesions:
                raise
            break
    return tuple(lesions)


def followup_lesion(rng: np.random.Generator, lesion: LesionSpec) -> LesionSpec:
    """The same lesion at a follow-up: a few mm away (registration, breathing), grown or shrunk."""
    center = np.asarray(lesion.center) + rng.normal(0.0, 2.0, size=3)
    return replace(
        lesion,
        center=tuple(map(float, center)),  # type: ignore[arg-type]
        axes=tuple(float(x) * _u(rng, 0.85, 1.3) for x in lesion.axes),  # type: ignore[arg-type]
        contrast_hu=lesion.contrast_hu * _u(rng, 0.85, 1.15),
    )


def _lesion_weight(pts: Points, lesion: LesionSpec) -> FloatArray:
    """Soft lesion membership: a 2 mm blurred edge, as real lesions rarely have a crisp margin."""
    return Ellipsoid(lesion.center, lesion.axes, 0.0, lesion.yaw_deg).weight(pts, edge_mm=2.0)


# --------------------------------------------------------------------------------------------------
# One volume
# --------------------------------------------------------------------------------------------------


def _inhomogeneity(rng: np.random.Generator, pts: Points, anatomy: Anatomy, amplitude_hu: float) -> FloatArray:
    """Smooth bias inside the body: beam-hardening cupping (darker centre) plus a linear gradient."""
    a, b = anatomy.body_axes
    cup = _u(rng, 0.0, amplitude_hu) * np.clip(1.0 - (pts.x / a) ** 2 - (pts.y / b) ** 2, 0, 1)
    slope = rng.normal(0.0, amplitude_hu / 2.0, size=3).astype(np.float32)
    field = (pts.x * slope[0] + pts.y * slope[1] + pts.z * slope[2]) / np.float32(100.0) - cup
    return np.asarray(field * _body_weight(pts, anatomy), dtype=np.float32)


def _ct_noise(rng: np.random.Generator, shape: tuple[int, ...], sd_hu: float) -> FloatArray:
    """Gaussian noise with the fine in-plane grain of filtered back-projection, scaled to ``sd_hu``."""
    white = rng.standard_normal(shape, dtype=np.float32)
    grain = ndimage.gaussian_filter(white, sigma=(0.6, 0.6, 0.0))
    return np.asarray(grain * np.float32(sd_hu / max(float(grain.std()), 1e-6)), dtype=np.float32)


def _check_affine(affine: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.allclose(norms, spacing, rtol=1e-5):
        raise ValueError(f"affine column norms {norms.round(4).tolist()} do not match spacing {list(spacing)}")
    return affine


def make_phantom(
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: Sequence[float],
    *,
    lesion: bool | LesionSpec | Sequence[LesionSpec],
    affine: np.ndarray | None = None,
    anatomy: Anatomy | None = None,
    pose: Pose | None = None,
    prone: bool = False,
    noise_sd_hu: float = 15.0,
    inhomogeneity_hu: float = 8.0,
    psf_sigma_vox: float = 0.5,
    lesion_radius_mm: tuple[float, float] = LESION_RADIUS_MM,
    lesion_contrast_hu: tuple[float, float] = LESION_CONTRAST_HU,
    lesion_organs: Mapping[str, float] = LESION_ORGANS,
    lesion_count: tuple[int, int] = LESION_COUNT,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One abdominal CT-like volume.

    ``shape`` (X, Y, Z) voxels and ``spacing`` (mm) define the grid; ``affine`` (voxel -> scanner RAS
    mm, default ``scan_affine(shape, spacing)``) places it. ``lesion``: False, True (draw
    ``lesion_count`` lesions with the ``lesion_*`` ranges), a ``LesionSpec`` or several. ``rng`` draws,
    in order: the anatomy (when None), the lesions (when True), the inhomogeneity and the noise.

    Returns ``volume_hu``: (X, Y, Z) int16 HU in [-1024, 3071], and ``info`` (for tests; never written
    to a manifest): ``affine``, ``anatomy``, ``pose``, ``labels`` ((X, Y, Z) int8 tissue labels,
    ``LESION`` = 14), ``lesions`` (tuple of LesionSpec: organ, radius_mm, contrast_hu, patient-mm
    centre), ``lesion_voxels`` (voxels more than half lesion), ``lesion_centers_ras`` ((n, 3) scanner
    RAS mm) and ``lesion_centers_voxel`` ((n, 3) voxel indices).
    """
    shape = tuple(int(n) for n in shape)
    affine = scan_affine(shape, spacing) if affine is None else _check_affine(affine, spacing)
    pose = pose or Pose()
    anatomy = anatomy or random_anatomy(rng)
    pts = voxel_centers(shape, affine)
    pts_patient = pose.to_patient(pts)
    specs: tuple[LesionSpec, ...] = ()
    if lesion is True:
        z = pts_patient.z
        specs = random_lesions(
            rng, anatomy, count=lesion_count, radius_mm=lesion_radius_mm, contrast_hu=lesion_contrast_hu,
            organs=lesion_organs, z_range=(float(z.min()), float(z.max())),
        )  # fmt: skip
    elif lesion is not False:
        specs = (lesion,) if isinstance(lesion, LesionSpec) else tuple(lesion)
    canvas = _paint_anatomy(pts_patient, anatomy, prone=prone)
    _paint_couch(canvas, Points.from_array(pts - np.asarray(pose.shift_mm, dtype=np.float32)), anatomy, prone)
    lesion_w = np.zeros(shape, dtype=np.float32)
    for spec in specs:
        weight = _lesion_weight(pts_patient, spec)
        canvas.paint(weight, _host_hu(anatomy, spec.organ) + spec.contrast_hu, LESION)
        lesion_w = np.maximum(lesion_w, weight)
    hu = canvas.hu + _inhomogeneity(rng, pts_patient, anatomy, inhomogeneity_hu)
    # The point-spread function gives organ edges the partial-volume look of real reconstructions.
    hu = ndimage.gaussian_filter(hu, sigma=psf_sigma_vox) + _ct_noise(rng, shape, noise_sd_hu)
    volume = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    centers = pose.to_scanner(np.asarray([spec.center for spec in specs]).reshape(-1, 3))
    info: dict[str, Any] = {
        "affine": affine, "anatomy": anatomy, "pose": pose, "labels": canvas.label, "lesions": specs,
        "lesion_voxels": int((lesion_w > 0.5).sum()), "lesion_centers_ras": centers,
        "lesion_centers_voxel": (centers - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T,
    }  # fmt: skip
    return volume, info


# --------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------


def seeded_uid(*parts: object) -> str:
    """A UUID-derived UID (``2.25.<128-bit integer>``) that depends only on ``parts``.

    pydicom's ``generate_uid(prefix=None)`` ignores its entropy sources and is random, which would
    break byte-identical cohorts.
    """
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


def _ds(value: float, decimals: int = 8) -> str:
    """A DICOM decimal string (16 characters at most) without float noise such as 6e-17 or -0."""
    return format_number_as_ds(float(round(float(value), decimals)) + 0.0)


def _dicom_grid(affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS affine, spacing (i, j, k) mm and unit LPS directions (columns) of an orthogonal grid."""
    lps = _LPS @ np.asarray(affine_ras, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    dirs = lps[:3, :3] / spacing
    normal = np.cross(dirs[:, 0], dirs[:, 1])
    if abs(dirs[:, 0] @ dirs[:, 1]) > 1e-6 or abs(abs(normal @ dirs[:, 2]) - 1.0) > 1e-6:
        raise ValueError("a DICOM series needs an affine with orthogonal axes (no shear or gantry tilt)")
    return lps, spacing, dirs


def _stored_values(volume_hu: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, int]:
    """Stored pixel values ``round((HU - intercept) / slope)`` in the smallest fitting 16-bit type."""
    if slope <= 0:
        raise ValueError(f"RescaleSlope must be positive, got {slope}")
    stored = np.rint((np.asarray(volume_hu, dtype=np.float64) - intercept) / slope)
    lo, hi = float(stored.min()), float(stored.max())
    if lo >= 0 and hi < 2**16:
        return stored.astype(np.uint16), max(12, int(hi).bit_length())
    if lo >= -(2**15) and hi < 2**15:
        return stored.astype(np.int16), 16
    raise ValueError(f"stored values {lo:.0f}..{hi:.0f} do not fit 16 bits with slope {slope}, intercept {intercept}")


def fake_identity(rng: np.random.Generator) -> dict[str, str]:
    """Obviously fake identifying DICOM values (see ``IDENTIFYING_TAGS``), for privacy tests to catch."""
    surnames = ("MUSTERMANN", "TESTPERSON", "BLOGGS", "DOE", "ROE", "NOBODY", "PLACEHOLDER", "EXAMPLE")
    given = ("ERIKA", "MAX", "JANE", "JOHN", "JOE", "MARY", "ALEX", "SAM")
    born = date(1935, 1, 1) + timedelta(days=int(rng.integers(0, 60 * 365)))
    return {
        "PatientName": f"{surnames[int(rng.integers(len(surnames)))]}^{given[int(rng.integers(len(given)))]}",
        "PatientBirthDate": born.strftime("%Y%m%d"),
        "AccessionNumber": f"ACC{int(rng.integers(10**7, 10**8))}",
        "InstitutionName": "Nowhere General Hospital (FAKE)",
        "InstitutionAddress": "1 Nowhere Street, Fakeville",
        "ReferringPhysicianName": "HOUSE^GREGORY",
        "OperatorsName": "TECH^FAKE",
        "StationName": "CTFAKE01",
        "DeviceSerialNumber": f"SN{int(rng.integers(10**5, 10**6))}",
    }


def _series_tags(
    *, patient_id: str, study_uid: str, series_uid: str, frame_uid: str, thickness: float, series_number: int
) -> dict[str, Any]:
    """Tags shared by every slice of a CT series (identity defaults are added by the caller)."""
    return {
        "SpecificCharacterSet": "ISO_IR 100", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SOPClassUID": CTImageStorage, "Modality": "CT", "Manufacturer": "SYNTHETICA",
        "ManufacturerModelName": "Synth CT 64", "StudyDate": "20240101", "StudyTime": "093000",
        "SeriesDate": "20240101", "SeriesTime": "093512", "AcquisitionDate": "20240101",
        "ContentDate": "20240101", "PatientID": patient_id, "PatientSex": "O", "PatientAge": "060Y",
        "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "StudyID": "1",
        "SeriesNumber": series_number, "AcquisitionNumber": 1, "FrameOfReferenceUID": frame_uid,
        "PositionReferenceIndicator": "", "StudyDescription": "CT ABDOMEN WITH CONTRAST",
        "SeriesDescription": "ABD PORTAL VENOUS", "BodyPartExamined": "ABDOMEN", "PatientPosition": "HFS",
        "KVP": "120", "ConvolutionKernel": "STANDARD", "SliceThickness": _ds(thickness),
        "RescaleType": "HU", "WindowCenter": "40", "WindowWidth": "400",
    }  # fmt: skip


# Elements that differ between the slices of a series, in ascending tag order.
_PER_SLICE = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData")


def _encode(ds: Dataset) -> bytes:
    """Explicit VR Little Endian encoding of a dataset's elements (no preamble, no file meta)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


class _SeriesEncoder:
    """Encodes the ~60 elements that a series' slices share once, then each slice's own five.

    ``dcmwrite`` would re-encode every element of every file (most of the demo's writing time); the
    bytes are the same as ``dcmwrite(..., enforce_file_format=True)`` writes (a test checks this).
    """

    def __init__(self, tags: Mapping[str, Any]) -> None:
        shared = Dataset()
        for keyword, value in tags.items():
            if keyword not in _PER_SLICE:
                setattr(shared, keyword, value)
        self.runs: list[bytes] = []
        start = 0
        for cut in [*(int(Tag(kw)) for kw in _PER_SLICE), 2**32]:
            run = Dataset()
            for elem in shared:
                if start <= elem.tag < cut:
                    run.add(elem)
            self.runs.append(_encode(run))
            start = cut

    def encode(self, own: Mapping[str, Any]) -> bytes:
        """One Part 10 file: ``own`` maps each of ``_PER_SLICE`` to its value (PixelData: bytes)."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(own["SOPInstanceUID"])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        fp.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        parts = [bytes(fp.getvalue()), self.runs[0]]
        for keyword, run in zip(_PER_SLICE, self.runs[1:], strict=True):
            one = Dataset()
            if keyword == "PixelData":
                one.add_new(Tag(keyword), "OW", own[keyword])
            else:
                setattr(one, keyword, own[keyword])
            parts += [_encode(one), run]
        return b"".join(parts)


def write_dicom_series(
    volume_hu: np.ndarray,
    affine_ras: np.ndarray,
    out_dir: Path,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    rng: np.random.Generator,
    slope: float = 1.0,
    intercept: float = -1024.0,
    shuffle_instances: bool = True,
    extra_tags: Mapping[str, Any] | None = None,
    slice_thickness: float | None = None,
    series_number: int = 1,
    file_naming: Literal["im", "uid"] = "im",
) -> list[Path]:
    """Write ``volume_hu`` ((X, Y, Z) HU, affine voxel -> RAS mm) as a CT Image Storage series.

    One Explicit VR Little Endian file per slice k, ``pixel_array == stored[:, :, k].T`` with stored =
    round((HU - intercept) / slope) (unsigned when it allows). IOP, IPP (LPS) and PixelSpacing
    (row spacing = j spacing, column spacing = i spacing) come from the affine, which must have
    orthogonal axes; k may run along or against the slice normal. SliceThickness defaults to the k
    spacing (a different value models overlapping reconstructions). File names ("IM" + random digits,
    or "<SOPInstanceUID>.dcm") and, with ``shuffle_instances``, InstanceNumbers are not in slice order.
    Fake identifying tags (``fake_identity(rng)``) are written unless ``extra_tags`` overrides them;
    ``extra_tags`` (DICOM keyword -> value) is applied last. Returns the paths, ``paths[k]`` = slice k.
    """
    volume = np.asarray(volume_hu)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (X, Y, Z), but it is {volume.ndim}D")
    lps, spacing, dirs = _dicom_grid(affine_ras)
    stored, bits = _stored_values(volume, slope, intercept)
    nz = volume.shape[2]
    normal = np.cross(dirs[:, 0], dirs[:, 1])
    frame_uid = seeded_uid(series_uid, "frame-of-reference")
    thickness = float(spacing[2]) if slice_thickness is None else slice_thickness
    tags = _series_tags(
        patient_id=patient_id, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
        thickness=thickness, series_number=series_number,
    )  # fmt: skip
    tags.update(fake_identity(rng))
    tags.update(
        ImageOrientationPatient=[_ds(v) for v in (*dirs[:, 0], *dirs[:, 1])],
        PixelSpacing=[_ds(spacing[1]), _ds(spacing[0])],
        RescaleIntercept=_ds(intercept),
        RescaleSlope=_ds(slope),
    )
    tags.update(extra_tags or {})
    tags.update(
        SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", Rows=volume.shape[1],
        Columns=volume.shape[0], BitsAllocated=16, BitsStored=bits, HighBit=bits - 1,
        PixelRepresentation=int(stored.dtype == np.int16),
    )  # fmt: skip
    encoder = _SeriesEncoder(tags)
    little = stored.dtype.newbyteorder("<")
    instances = rng.permutation(nz) + 1 if shuffle_instances else np.arange(1, nz + 1)
    numbers = np.asarray(rng.choice(900_000, size=nz, replace=False)) + 100_000
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(nz):
        sop_uid = seeded_uid(series_uid, k)
        position = lps[:3, :3] @ np.array([0.0, 0.0, k]) + lps[:3, 3]
        data = encoder.encode({
            "SOPInstanceUID": sop_uid, "InstanceNumber": int(instances[k]),
            "ImagePositionPatient": [_ds(v, 6) for v in position],
            "SliceLocation": _ds(float(position @ normal), 6),
            "PixelData": np.ascontiguousarray(stored[:, :, k].T, dtype=little).tobytes(),
        })  # fmt: skip
        paths.append(out_dir / (f"IM{numbers[k]:06d}" if file_naming == "im" else f"{sop_uid}.dcm"))
        paths[-1].write_bytes(data)
    return paths


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


# --------------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteProfile:
    """A hospital and its scanner: noise, slice spacing, DICOM storage conventions and file naming."""

    name: str
    institution: str
    address: str
    manufacturer: str
    model: str
    station: str
    referrer: str
    kernel: str
    noise_sd_hu: float
    slice_increment_mm: float  # distance between slice centres
    slice_thickness_mm: float  # nominal thickness; larger than the increment = overlapping slices
    slope: float
    intercept: float
    file_naming: Literal["im", "uid"]
    nifti_intercept: float
    fov_extra_mm: float


SITES = (
    SiteProfile(
        "north", "Northfield General Hospital (FAKE)", "1 Nowhere Street, Fakeville", "SYNTHETICA",
        "Synth CT 64", "CTNORTH01", "HOUSE^GREGORY", "B30f", 12.0, 5.0, 5.0, 1.0, -1024.0, "im", 0.0, 0.0,
    ),
    SiteProfile(
        "south", "Southbay Clinic (FAKE)", "99 Example Road, Placeholder City", "PHANTOMATIC",
        "PX Vista 128", "CTSOUTH02", "GREY^MEREDITH", "STANDARD", 18.0, 4.0, 4.0, 1.0, 0.0, "uid",
        -1024.0, 20.0,
    ),
    SiteProfile(
        "east", "East Valley Imaging (FAKE)", "7 Imaginary Lane, Notatown", "IMAGINARY MEDICAL",
        "Aquila 320", "CTEAST03", "ZHIVAGO^YURI", "FC08", 15.0, 4.0, 5.0, 0.5, -1024.0, "im", 0.0, 10.0,
    ),
)  # fmt: skip


@dataclass(frozen=True)
class ScanPlan:
    """Everything needed to render and write one scan; ``plan_cohort`` draws these from the seed."""

    patient_id: str
    visit: int  # 0 baseline, 1 follow-up
    label: int
    site: SiteProfile
    sex: str
    age: int
    fmt: Literal["dicom", "nifti"]
    anatomy: Anatomy
    lesions: tuple[LesionSpec, ...]  # empty for a negative patient
    pose: Pose
    prone: bool
    orientation: str
    oblique_deg: Vec3
    shape: tuple[int, int, int]
    spacing: Vec3
    noise_sd_hu: float
    seed: tuple[int, ...]  # of the rendering and writing random streams
    study_id: str
    series_id: str
    series_number: int
    study_uid: str
    series_uid: str
    study_date: date
    identity: Mapping[str, str]  # fake identifying DICOM values of this patient and study

    @property
    def affine(self) -> np.ndarray:
        """Voxel -> scanner RAS mm."""
        return scan_affine(self.shape, self.spacing, orientation=self.orientation, oblique_deg=self.oblique_deg)


def _stratified_flags(rng: np.random.Generator, labels: np.ndarray, fraction: float) -> np.ndarray:
    """True for ``round(fraction * n)`` patients of each label, so the flag is independent of the label."""
    flags = np.zeros(len(labels), dtype=bool)
    for value in (0, 1):
        group = rng.permutation(np.flatnonzero(labels == value))
        flags[group[: round(fraction * len(group))]] = True
    return flags


def _stratified_sites(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    sites = np.zeros(len(labels), dtype=int)
    for value in (0, 1):
        group = rng.permutation(np.flatnonzero(labels == value))
        sites[group] = (np.arange(len(group)) + int(rng.integers(len(SITES)))) % len(SITES)
    return sites


def _scan_grid(
    rng: np.random.Generator,
    anatomy: Anatomy,
    *,
    site: SiteProfile,
    fmt: str,
    matrix: int,
    slices: tuple[int, int],
) -> dict[str, Any]:
    """Pose, orientation and grid of one scan: the field of view fits the body, as a technologist sets it."""
    increment = site.slice_increment_mm
    nz = int(np.clip(round(_u(rng, 130, 170) / increment), *slices))
    a0, ta = anatomy.body_axes[0], abs(anatomy.body_taper[0])
    fov = 10 * math.ceil((2 * a0 * (1 + ta * nz * increment / 200) + 25) / 10) + site.fov_extra_mm
    if fmt == "dicom":
        orientation = str(rng.choice(["HFS", "FFS", "HFP"], p=[0.8, 0.1, 0.1]))
    else:
        orientation = str(rng.choice(["RAS", "LAS", "LPS"], p=[0.5, 0.3, 0.2]))
    tilt = _u(rng, 5, 10) * float(rng.choice([-1, 1])) if rng.random() < 0.1 else 0.0
    pose = Pose(
        shift_mm=tuple(map(float, rng.normal(0.0, [6.0, 5.0, 6.0]))),  # type: ignore[arg-type]
        rotation_deg=tuple(map(float, rng.normal(0.0, [2.0, 2.0, 4.0]))),  # type: ignore[arg-type]
    )
    return {
        "shape": (matrix, matrix, nz), "spacing": (fov / matrix, fov / matrix, increment),
        "orientation": orientation, "oblique_deg": (tilt, 0.0, 0.0), "pose": pose,
        "prone": orientation in ("HFP", "FFP"),
    }  # fmt: skip


def _lesion_z_range(grids: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """Patient z slab that every scan covers, with room for pose rotation and oblique tilt."""
    lo, hi = -1e9, 1e9
    for g in grids:
        half = (g["shape"][2] - 1) * g["spacing"][2] / 2
        lo, hi = max(lo, -half - g["pose"].shift_mm[2]), min(hi, half - g["pose"].shift_mm[2])
    return lo + 12.0, hi - 12.0


def _uid(seed: int, *parts: object) -> str:
    return seeded_uid("cohortnet-demo", seed, *parts)


def _plan_patient(
    seed: int, index: int, *, label: int, site: SiteProfile, sex: str, age: int, fmt: str, visits: int,
    knobs: Mapping[str, Any],
) -> list[ScanPlan]:  # fmt: skip
    """The scans of one patient; a follow-up shares anatomy, label and lesion (moved and resized)."""
    rng = np.random.default_rng([seed, 1, index])
    pid = f"DEMO{index + 1:04d}"  # one token, so log redaction of patient ids leaves the word "demo" alone
    anatomies = [random_anatomy(rng, sex=sex, age=age)]
    anatomies.append(followup_anatomy(rng, anatomies[0]))
    grids = [
        _scan_grid(rng, anatomies[0], site=site, fmt=fmt, matrix=knobs["matrix"], slices=knobs["slices"])
        for _ in range(visits)
    ]
    lesions: list[tuple[LesionSpec, ...]] = [(), ()]
    if label:
        first = random_lesions(
            rng, anatomies[0], count=knobs["lesion_count"], radius_mm=knobs["lesion_radius_mm"],
            contrast_hu=knobs["lesion_contrast_hu"], organs=knobs["lesion_organs"], z_range=_lesion_z_range(grids),
        )  # fmt: skip
        lesions = [first, tuple(followup_lesion(rng, spec) for spec in first)]
    identity = fake_identity(rng)
    noise = site.noise_sd_hu * knobs["noise_scale"] * anatomies[0].body_axes[0] / 110.0
    day = date(2019, 1, 1) + timedelta(days=int(rng.integers(0, 4 * 365)))
    plans = []
    for visit, grid in enumerate(grids):
        series_number = int(rng.integers(2, 8))
        study_id = f"{pid}-ST{visit + 1}"
        plans.append(
            ScanPlan(
                patient_id=pid, visit=visit, label=label, site=site, sex=sex, age=age, fmt=fmt,  # type: ignore[arg-type]
                anatomy=anatomies[visit], lesions=lesions[visit], noise_sd_hu=noise * _u(rng, 0.9, 1.1),
                seed=(seed, 2, index, visit), study_id=study_id, series_id=f"{study_id}-SE{series_number}",
                series_number=series_number, study_uid=_uid(seed, pid, visit, "study"),
                series_uid=_uid(seed, pid, visit, "series"), study_date=day,
                identity={**identity, "AccessionNumber": f"ACC{int(rng.integers(10**7, 10**8))}"}, **grid,
            )
        )  # fmt: skip
        day += timedelta(days=int(rng.integers(90, 400)))
    return plans


def plan_cohort(
    *,
    n_patients: int = 100,
    seed: int = 0,
    prevalence: float = 0.4,
    second_scan_fraction: float = 0.2,
    dicom_fraction: float = 0.5,
    matrix: int = 64,
    slices: tuple[int, int] = (24, 40),
    noise_scale: float = 1.0,
    lesion_radius_mm: tuple[float, float] = LESION_RADIUS_MM,
    lesion_contrast_hu: tuple[float, float] = LESION_CONTRAST_HU,
    lesion_organs: Mapping[str, float] = LESION_ORGANS,
    lesion_count: tuple[int, int] = LESION_COUNT,
) -> list[ScanPlan]:
    """Draw every scan of the cohort (no pixels yet); ``make_demo_cohort`` renders and writes them.

    Exactly ``round(prevalence * n_patients)`` patients are positive. Format, site and a second scan are
    assigned within each label group, so none of them predicts the label.
    """
    problems = []
    if n_patients < 2:
        problems.append(f"n_patients must be at least 2, got {n_patients}")
    for name, value in (("prevalence", prevalence), ("second_scan_fraction", second_scan_fraction),
                        ("dicom_fraction", dicom_fraction)):  # fmt: skip
        if not 0.0 <= value <= 1.0:
            problems.append(f"{name} must be within [0, 1], got {value}")
    if problems:
        raise ValueError("; ".join(problems))
    rng = np.random.default_rng([seed, 0])
    labels = np.zeros(n_patients, dtype=int)
    labels[rng.permutation(n_patients)[: round(prevalence * n_patients)]] = 1
    dicom = _stratified_flags(rng, labels, dicom_fraction)
    two = _stratified_flags(rng, labels, second_scan_fraction)
    sites = _stratified_sites(rng, labels)
    sexes = rng.choice(["F", "M"], size=n_patients)
    ages = np.clip(np.rint(rng.normal(62.0, 12.0, size=n_patients)), 25, 90).astype(int)
    knobs = {
        "matrix": matrix, "slices": slices, "noise_scale": noise_scale, "lesion_radius_mm": lesion_radius_mm,
        "lesion_contrast_hu": lesion_contrast_hu, "lesion_organs": lesion_organs, "lesion_count": lesion_count,
    }  # fmt: skip
    plans: list[ScanPlan] = []
    for p in range(n_patients):
        plans += _plan_patient(
            seed, p, label=int(labels[p]), site=SITES[sites[p]], sex=str(sexes[p]), age=int(ages[p]),
            fmt="dicom" if dicom[p] else "nifti", visits=2 if two[p] else 1, knobs=knobs,
        )  # fmt: skip
    return plans


def render_scan(plan: ScanPlan) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The scan's (X, Y, Z) int16 HU volume, its voxel -> RAS mm affine and ``make_phantom``'s info."""
    affine = plan.affine
    volume, info = make_phantom(
        np.random.default_rng(list(plan.seed)), plan.shape, plan.spacing, lesion=plan.lesions,
        affine=affine, anatomy=plan.anatomy, pose=plan.pose, prone=plan.prone, noise_sd_hu=plan.noise_sd_hu,
    )  # fmt: skip
    return volume, affine, info


def _dicom_tags(plan: ScanPlan) -> dict[str, Any]:
    site, day = plan.site, plan.study_date.strftime("%Y%m%d")
    return {
        **plan.identity, "InstitutionName": site.institution, "InstitutionAddress": site.address,
        "ReferringPhysicianName": site.referrer, "StationName": site.station,
        "Manufacturer": site.manufacturer, "ManufacturerModelName": site.model,
        "ConvolutionKernel": site.kernel, "PatientSex": plan.sex, "PatientAge": f"{plan.age:03d}Y",
        "StudyDate": day, "SeriesDate": day, "AcquisitionDate": day, "ContentDate": day,
        "StudyID": str(plan.visit + 1),
        "PatientPosition": plan.orientation if plan.orientation in ("HFS", "FFS", "HFP", "FFP") else "HFS",
    }  # fmt: skip


def write_scan(plan: ScanPlan, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Render ``plan`` and write it under ``out_dir``: a DICOM series folder or a .nii.gz file."""
    volume, affine, info = render_scan(plan)
    if plan.fmt == "nifti":
        path = Path(out_dir) / "nifti" / f"{plan.patient_id}_ses-{plan.visit + 1}_ct.nii.gz"
        return write_nifti(volume, affine, path, intercept=plan.site.nifti_intercept), info
    folder = Path(out_dir) / "dicom" / plan.patient_id / f"ST{plan.visit + 1:02d}" / f"SE{plan.series_number:02d}"
    write_dicom_series(
        volume, affine, folder, patient_id=plan.patient_id, study_uid=plan.study_uid,
        series_uid=plan.series_uid, rng=np.random.default_rng([*plan.seed, 1]), slope=plan.site.slope,
        intercept=plan.site.intercept, extra_tags=_dicom_tags(plan),
        slice_thickness=plan.site.slice_thickness_mm, series_number=plan.series_number,
        file_naming=plan.site.file_naming,
    )  # fmt: skip
    return folder, info


def _prepare_out_dir(out_dir: Path) -> None:
    """Empty the cohort's own subfolders; refuse a non-empty folder this module did not write."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / _MARKER).is_file():
        from pipeline.errors import ValidationError

        raise ValidationError(
            [f"{out_dir} is not empty and was not written by the demo generator; refusing to overwrite it"],
            "demo output folder",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("dicom", "nifti"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    artifacts.write_text(out_dir / _MARKER, "written by pipeline.synthetic.make_demo_cohort; safe to delete\n")


def make_demo_cohort(
    out_dir: Path,
    manifest_path: Path,
    *,
    n_patients: int = 100,
    seed: int = 0,
    prevalence: float = 0.4,
    second_scan_fraction: float = 0.2,
    dicom_fraction: float = 0.5,
    matrix: int = 64,
    slices: tuple[int, int] = (24, 40),
    noise_scale: float = 1.0,
    lesion_radius_mm: tuple[float, float] = LESION_RADIUS_MM,
    lesion_contrast_hu: tuple[float, float] = LESION_CONTRAST_HU,
    lesion_organs: Mapping[str, float] = LESION_ORGANS,
    lesion_count: tuple[int, int] = LESION_COUNT,
) -> pd.DataFrame:
    """Write the seeded demo cohort under ``out_dir`` and its manifest CSV at ``manifest_path``.

    Images: ``dicom/<patient>/STnn/SEnn/`` series folders and ``nifti/<patient>_ses-N_ct.nii.gz``
    files. Manifest: one row per scan with ``MANIFEST_COLUMNS``; ``image`` is relative to the
    manifest's folder. Same seed and arguments, same bytes (UIDs are seeded too). Difficulty knobs:
    ``lesion_radius_mm`` and ``lesion_contrast_hu`` (uniform ranges), ``lesion_organs`` (host weights),
    ``lesion_count`` (lesions per positive patient, uniform between low and high),
    ``noise_scale`` (multiplies each site's noise SD), ``matrix`` (in-plane voxels) and ``slices``.
    Returns the manifest table.
    """
    plans = plan_cohort(
        n_patients=n_patients, seed=seed, prevalence=prevalence, second_scan_fraction=second_scan_fraction,
        dicom_fraction=dicom_fraction, matrix=matrix, slices=slices, noise_scale=noise_scale,
        lesion_radius_mm=lesion_radius_mm, lesion_contrast_hu=lesion_contrast_hu, lesion_organs=lesion_organs,
        lesion_count=lesion_count,
    )  # fmt: skip
    out_dir, manifest_path = Path(out_dir).resolve(), Path(manifest_path).resolve()
    _prepare_out_dir(out_dir)
    # the manifest goes first and comes back last (atomically): a generator killed half-way leaves
    # no manifest that points at half-written files
    manifest_path.unlink(missing_ok=True)
    rows = []
    for plan in plans:
        image, info = write_scan(plan, out_dir)
        if plan.label and info["lesion_voxels"] == 0:
            raise RuntimeError(f"{plan.series_id}: positive scan without a visible lesion (generator bug)")
        relative = Path(os.path.relpath(image, manifest_path.parent)).as_posix()
        rows.append({
            schema.PATIENT_ID: plan.patient_id, schema.IMAGE: relative,
            schema.LABEL: plan.label, schema.STUDY_ID: plan.study_id, schema.SERIES_ID: plan.series_id,
            SITE: plan.site.name, SCANNER: f"{plan.site.manufacturer} {plan.site.model}", SEX: plan.sex,
            AGE: plan.age, VISIT: plan.visit, FORMAT: plan.fmt,
        })  # fmt: skip
    table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    write_csv(manifest_path, table)
    return table
