"""Painting: noise-free HU and tissue labels of an ``Anatomy`` on points in patient RAS mm.

A ``_Canvas`` holds an HU array and an int8 tissue-label array; structures are painted back to
front with soft weights (trunk and fat, organs, lung bases and heart, vessels, spine, ribs, bowel
gas), so a later structure covers an earlier one. ``_paint_anatomy`` is used both to render a
phantom and to find where a lesion may go; ``_paint_couch`` adds the scanner table in scanner space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from pipeline.synthetic.anatomy import Anatomy
from pipeline.synthetic.geometry import Ellipsoid, FloatArray, Points, _step

# Tissue labels painted alongside HU; lesions are placed by label.
AIR, FAT, MUSCLE, SOFT, LIVER, SPLEEN, KIDNEY, VESSEL, BONE, LUNG, GAS, HEART, STOMACH, COUCH, LESION = range(15)


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
