"""One patient's body: the ``Anatomy`` record and the seeded draws that fill it.

``random_anatomy`` draws body size, fat and muscle thickness, spine, diaphragm and the organs
(ellipsoids in patient RAS mm, each with its enhancement in HU) from a random generator, in a fixed
order, so a generator state gives one body; ``followup_anatomy`` moves the bowel gas and changes
the contrast timing of the same body. Nothing here paints voxels (see ``paint``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from pipeline.synthetic.geometry import Ellipsoid, Vec3


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


class _Frame(NamedTuple):
    """The first draws of ``random_anatomy``: body size and the landmarks that place the organs (mm)."""

    a: float  # LR semi-axis of the skin outline at z = 0
    b: float  # AP semi-axis
    fat: float  # subcutaneous fat
    wall: float  # abdominal wall muscle
    rv: float  # vertebral body radius
    spine_y: float  # AP position of the vertebral body centre
    z_right: float  # right diaphragm dome top
    z_left: float  # left diaphragm dome top

    @property
    def ai(self) -> float:
        """LR semi-axis inside the subcutaneous fat."""
        return self.a - self.fat

    @property
    def bi(self) -> float:
        """AP semi-axis inside the subcutaneous fat."""
        return self.b - self.fat


def _draw_frame(rng: np.random.Generator, sex: str) -> _Frame:
    """Body outline, fat and wall thickness, spine and diaphragm: the first draws of a body."""
    a = _u(rng, 105, 125) if sex == "M" else _u(rng, 95, 115)
    b = a * _u(rng, 0.68, 0.82)
    fat = _u(rng, 6, 18) if sex == "M" else _u(rng, 9, 24)
    wall = _u(rng, 7, 12)
    rv = _u(rng, 15, 19)
    spine_y = -(b - fat) + rv + _u(rng, 18, 24)
    z_right = _u(rng, 45, 60)
    z_left = z_right - _u(rng, 0, 12)
    return _Frame(a, b, fat, wall, rv, spine_y, z_right, z_left)


def _draw_liver_extent(rng: np.random.Generator, f: _Frame) -> tuple[Vec3, Vec3]:
    """Centre and semi-axes of the liver, its dome under the right diaphragm (its HU is drawn later)."""
    axes = (_u(rng, 0.5, 0.6) * f.ai, _u(rng, 0.6, 0.75) * f.bi, _u(rng, 65, 85))
    center = (0.3 * f.ai + _u(rng, -5, 5), _u(rng, 0.0, 0.15) * f.bi, f.z_right - 0.75 * axes[2])
    return center, axes


def _draw_kidneys(rng: np.random.Generator, f: _Frame) -> tuple[Ellipsoid, Ellipsoid]:
    """Right and left kidney beside the spine; the left one sits a little higher."""
    kz = _u(rng, -50, -35)
    kidneys = tuple(
        Ellipsoid(
            (side * _u(rng, 50, 62), f.spine_y + _u(rng, 5, 15), kz + (0.0 if side > 0 else _u(rng, 5, 15))),
            (_u(rng, 22, 27), _u(rng, 20, 25), _u(rng, 45, 55)),
            _u(rng, 150, 190),
            -side * _u(rng, 20, 35),
        )
        for side in (1.0, -1.0)
    )
    return kidneys[0], kidneys[1]


def _draw_spleen(rng: np.random.Generator, f: _Frame) -> Ellipsoid:
    return Ellipsoid(
        (-0.55 * f.ai, -0.25 * f.bi, f.z_left - _u(rng, 25, 40)),
        (_u(rng, 20, 28), _u(rng, 40, 55), _u(rng, 40, 55)),
        _u(rng, 100, 120),
        _u(rng, -40, -20),
    )


def _draw_stomach(rng: np.random.Generator, f: _Frame) -> Ellipsoid:
    return Ellipsoid(
        (-0.3 * f.ai, 0.3 * f.bi, f.z_left - _u(rng, 20, 35)),
        (_u(rng, 30, 45), _u(rng, 25, 35), _u(rng, 30, 40)),
        _u(rng, 5, 25),
        _u(rng, -20, 20),
    )


def _draw_heart(rng: np.random.Generator, f: _Frame, aorta_hu: float) -> Ellipsoid:
    return Ellipsoid(
        (-0.15 * f.ai, 0.2 * f.bi, f.z_left + _u(rng, 45, 60)),
        (_u(rng, 50, 60), _u(rng, 40, 48), _u(rng, 45, 55)),
        aorta_hu * 0.8,
        _u(rng, 20, 40),
    )


def _draw_paraspinal(rng: np.random.Generator, f: _Frame) -> tuple[Ellipsoid, Ellipsoid]:
    muscles = tuple(
        Ellipsoid((side * (f.rv + 10), f.spine_y - f.rv - 8, 0.0), (_u(rng, 18, 24), _u(rng, 16, 22), 1e4), 55.0)
        for side in (1.0, -1.0)
    )
    return muscles[0], muscles[1]


def random_anatomy(rng: np.random.Generator, *, sex: str = "F", age: float = 60.0) -> Anatomy:
    """Draw one patient's body: sizes (mm), organ positions and enhancement (HU) vary per patient."""
    f = _draw_frame(rng, sex)
    liver_center, liver_axes = _draw_liver_extent(rng, f)
    kidneys = _draw_kidneys(rng, f)
    aorta_hu = _u(rng, 150, 210)
    vessel_y = f.spine_y + f.rv + 12
    # The keyword arguments are evaluated, and so drawn from ``rng``, in the order written.
    return Anatomy(
        body_axes=(f.a, f.b),
        body_taper=(_u(rng, -0.05, 0.05), _u(rng, -0.05, 0.05)),
        body_power=_u(rng, 2.0, 2.6),
        fat_mm=f.fat,
        wall_mm=f.wall,
        couch_gap_mm=_u(rng, 1, 6),
        spine_y=f.spine_y,
        vertebra_radius=f.rv,
        bone_hu=_u(rng, 230, 290) - 1.2 * (age - 50),
        disc_period_mm=_u(rng, 28, 34),
        disc_phase_mm=_u(rng, 0, 34),
        diaphragm_z=(f.z_right, f.z_left),
        dome_radius_mm=_u(rng, 120, 180),
        liver=Ellipsoid(liver_center, liver_axes, _u(rng, 95, 115), _u(rng, -15, 10)),
        spleen=_draw_spleen(rng, f),
        kidneys=kidneys,
        stomach=_draw_stomach(rng, f),
        heart=_draw_heart(rng, f, aorta_hu),
        aorta=Ellipsoid((-12.0, vessel_y, 0.0), (r := _u(rng, 9, 13), r, 1e4), aorta_hu),
        ivc=Ellipsoid((22.0, vessel_y + 4, 0.0), (_u(rng, 10, 13), _u(rng, 8, 11), 1e4), aorta_hu * 0.7),
        paraspinal=_draw_paraspinal(rng, f),
        gas=_draw_gas(rng, f.ai, f.bi, f.z_left - 40),
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
