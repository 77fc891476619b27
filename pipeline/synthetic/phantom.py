"""One CT-like volume: ``make_phantom`` renders a ``PhantomSpec`` into int16 HU voxels.

The anatomy (drawn unless given) and its lesions are painted at the voxel centres of the scan grid,
mapped into patient coordinates by the pose; the scanner table, a smooth intensity inhomogeneity,
the point-spread blur and correlated CT noise follow. The random generator is used in a fixed
order (anatomy, lesions, inhomogeneity, noise), so a generator state gives one volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.synthetic.anatomy import Anatomy, _u, random_anatomy
from pipeline.synthetic.geometry import FloatArray, Points, Pose, scan_affine, voxel_centers
from pipeline.synthetic.lesions import (
    LESION_CONTRAST_HU,
    LESION_COUNT,
    LESION_ORGANS,
    LESION_RADIUS_MM,
    LesionSpec,
    _host_hu,
    _lesion_weight,
    random_lesions,
)
from pipeline.synthetic.paint import LESION, _body_weight, _Canvas, _paint_anatomy, _paint_couch


@dataclass(frozen=True)
class PhantomSpec:
    """What ``make_phantom`` renders: the grid, the patient and lesions in it, and the image quality.

    ``shape`` (X, Y, Z) voxels and ``spacing`` (mm) define the grid; ``affine`` (voxel -> scanner RAS
    mm, default ``scan_affine(shape, spacing)``) places it. ``lesion``: False, True (draw
    ``lesion_count`` lesions with the ``lesion_*`` ranges), a ``LesionSpec`` or several. ``anatomy``
    (None: drawn from the generator), ``pose`` (None: centred, not rotated) and ``prone`` place the
    patient; ``noise_sd_hu``, ``inhomogeneity_hu`` and ``psf_sigma_vox`` set the image quality.
    """

    shape: Sequence[int]
    spacing: Sequence[float]
    lesion: bool | LesionSpec | Sequence[LesionSpec]
    affine: np.ndarray | None = None
    anatomy: Anatomy | None = None
    pose: Pose | None = None
    prone: bool = False
    noise_sd_hu: float = 15.0
    inhomogeneity_hu: float = 8.0
    psf_sigma_vox: float = 0.5
    lesion_radius_mm: tuple[float, float] = LESION_RADIUS_MM
    lesion_contrast_hu: tuple[float, float] = LESION_CONTRAST_HU
    lesion_organs: Mapping[str, float] = field(default_factory=lambda: dict(LESION_ORGANS))
    lesion_count: tuple[int, int] = LESION_COUNT


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


def _lesion_specs(
    rng: np.random.Generator, spec: PhantomSpec, anatomy: Anatomy, z: FloatArray
) -> tuple[LesionSpec, ...]:
    """The phantom's lesions; drawn within the grid's patient z range (``z``) when ``spec.lesion`` is True."""
    lesion = spec.lesion
    if lesion is True:
        return random_lesions(
            rng, anatomy, count=spec.lesion_count, radius_mm=spec.lesion_radius_mm,
            contrast_hu=spec.lesion_contrast_hu, organs=spec.lesion_organs, z_range=(float(z.min()), float(z.max())),
        )  # fmt: skip
    if lesion is False:
        return ()
    return (lesion,) if isinstance(lesion, LesionSpec) else tuple(lesion)


def _paint_lesions(canvas: _Canvas, pts: Points, anatomy: Anatomy, specs: Sequence[LesionSpec]) -> FloatArray:
    """Paint each lesion at its host organ's HU plus its contrast; returns the largest lesion weight per point."""
    lesion_w = np.zeros(pts.x.shape, dtype=np.float32)
    for spec in specs:
        weight = _lesion_weight(pts, spec)
        canvas.paint(weight, _host_hu(anatomy, spec.organ) + spec.contrast_hu, LESION)
        lesion_w = np.maximum(lesion_w, weight)
    return lesion_w


def make_phantom(rng: np.random.Generator, spec: PhantomSpec) -> tuple[np.ndarray, dict[str, Any]]:
    """One abdominal CT-like volume of the grid, patient and lesions that ``spec`` describes.

    ``rng`` draws, in order: the anatomy (when ``spec.anatomy`` is None), the lesions (when
    ``spec.lesion`` is True), the inhomogeneity and the noise.

    Returns ``volume_hu``: (X, Y, Z) int16 HU in [-1024, 3071], and ``info`` (for tests; never written
    to a manifest): ``affine``, ``anatomy``, ``pose``, ``labels`` ((X, Y, Z) int8 tissue labels,
    ``LESION`` = 14), ``lesions`` (tuple of LesionSpec: organ, radius_mm, contrast_hu, patient-mm
    centre), ``lesion_voxels`` (voxels more than half lesion), ``lesion_centers_ras`` ((n, 3) scanner
    RAS mm) and ``lesion_centers_voxel`` ((n, 3) voxel indices).
    """
    shape = tuple(int(n) for n in spec.shape)
    affine = scan_affine(shape, spec.spacing) if spec.affine is None else _check_affine(spec.affine, spec.spacing)
    pose = spec.pose or Pose()
    anatomy = spec.anatomy or random_anatomy(rng)
    pts = voxel_centers(shape, affine)
    pts_patient = pose.to_patient(pts)
    specs = _lesion_specs(rng, spec, anatomy, pts_patient.z)
    canvas = _paint_anatomy(pts_patient, anatomy, prone=spec.prone)
    _paint_couch(canvas, Points.from_array(pts - np.asarray(pose.shift_mm, dtype=np.float32)), anatomy, spec.prone)
    lesion_w = _paint_lesions(canvas, pts_patient, anatomy, specs)
    hu = canvas.hu + _inhomogeneity(rng, pts_patient, anatomy, spec.inhomogeneity_hu)
    # The point-spread function gives organ edges the partial-volume look of real reconstructions.
    hu = ndimage.gaussian_filter(hu, sigma=spec.psf_sigma_vox) + _ct_noise(rng, shape, spec.noise_sd_hu)
    volume = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    centers = pose.to_scanner(np.asarray([s.center for s in specs]).reshape(-1, 3))
    info: dict[str, Any] = {
        "affine": affine, "anatomy": anatomy, "pose": pose, "labels": canvas.label, "lesions": specs,
        "lesion_voxels": int((lesion_w > 0.5).sum()), "lesion_centers_ras": centers,
        "lesion_centers_voxel": (centers - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T,
    }  # fmt: skip
    return volume, info
