"""Lesions: their specification, seeded placement inside a host organ, and their follow-up change.

``random_lesion`` places a soft-edged ellipsoid where a coarse tissue-label map of the painted
anatomy shows the host organ (liver by default; kidney or spleen on request), away from its edge
and from other lesions; ``random_lesions`` draws one or several; ``followup_lesion`` moves and
resizes one for a later scan. The ``LESION_*`` constants are the default difficulty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from pipeline.synthetic.anatomy import Anatomy, _u
from pipeline.synthetic.geometry import Ellipsoid, FloatArray, Points, Vec3
from pipeline.synthetic.paint import KIDNEY, LIVER, SPLEEN, _paint_anatomy

# Default lesion difficulty. A plain 3D ResNet trained from scratch on ~80 patients for a few epochs
# (the demo's budget) stayed near chance (AUC 0.45-0.55) for lesions of radius 8-15 mm at +40..+120 HU; it needs a
# conspicuous finding: lesions 3-5 cm across, +150..+300 HU above the host (a calcified or
# contrast-retaining lesion), sometimes two. Lower these to make the task harder.
LESION_RADIUS_MM = (15.0, 25.0)  # equivalent-sphere radius, uniform range
LESION_CONTRAST_HU = (150.0, 300.0)  # above the host organ, uniform range; negative = hypodense
LESION_ORGANS: Mapping[str, float] = {"liver": 1.0}  # host weights; "kidney" and "spleen" also work
LESION_COUNT = (1, 2)  # lesions per positive patient, low and high
_ORGAN_LABEL = {"liver": LIVER, "kidney": KIDNEY, "spleen": SPLEEN}


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
