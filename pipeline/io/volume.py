"""A stack of planes -> a checked plan (geometry, shape) -> a float32 array.

``plan_stack`` needs headers only, so ``cohortnet scan`` reaches the same verdict as loading.
``assemble`` decodes each file once and places every plane where the plan says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pipeline.errors import ScanError
from pipeline.io import pixels
from pipeline.io.geometry import Geometry, plan_geometry
from pipeline.io.series import Stack
from pipeline.resources import MAX_VOXELS, check_load_budget

VOLUME_POLICIES = ("refuse", "first", "mean", "all")


@dataclass(frozen=True)
class StackPlan:
    """Geometry of one stack and the shape of its array; ``volumes`` is the multi-volume rule."""

    stack: Stack
    geometry: Geometry
    volumes: str

    @property
    def matrix(self) -> tuple[int, int]:
        return self.stack.items[0][1].matrix

    @property
    def channels(self) -> int:
        h = self.stack.first
        return 3 if h.samples > 1 or h.photometric == "PALETTE COLOR" else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """(X, Y) or (X, Y, Z): X = columns, Y = rows, Z = slices."""
        rows, cols = self.matrix
        return (cols, rows) if self.geometry.ndim == 2 else (cols, rows, self.geometry.n_slices)

    @property
    def kept_volumes(self) -> int:
        return self.geometry.n_volumes if self.volumes == "all" else 1

    @property
    def warnings(self) -> tuple[str, ...]:
        header_warnings = {w for h in self.stack.headers for w in h.warnings}
        return tuple(sorted(header_warnings | set(self.stack.warnings) | set(self.geometry.warnings)))


def plan_stack(stack: Stack, *, source: str, volumes: str = "refuse") -> StackPlan:
    """Check a stack without pixels; raises the ScanError that loading it would raise."""
    if volumes not in VOLUME_POLICIES:
        raise ValueError(f"volumes must be one of {VOLUME_POLICIES}, not {volumes!r}")
    if stack.rejection is not None:
        raise ScanError(stack.rejection.reason, stack.rejection.detail, source)
    planes = [p for _, p in stack.items]
    same_file = len(stack.headers) == 1
    geometry = plan_geometry(planes, modality=stack.first.modality, source=source, same_file=same_file)
    if geometry.n_volumes > 1 and volumes == "refuse":
        raise ScanError(
            "multi_volume",
            f"{geometry.n_volumes} volumes of {geometry.n_slices} slice(s) (time points or repeats); "
            "a classifier input needs one (volumes='first', 'mean' or 'all' chooses)",
            source,
        )
    plan = StackPlan(stack, geometry, volumes)
    n_voxels = int(np.prod(plan.spatial_shape)) * plan.channels * geometry.n_volumes
    if n_voxels > MAX_VOXELS:
        raise ScanError("too_large", f"{n_voxels} voxels exceed the cap of {MAX_VOXELS}", source)
    # float64 rescale, float32 result and a working copy, checked before any pixel is decoded
    check_load_budget("x".join(map(str, plan.spatial_shape)), n_voxels, 16, source)
    return plan


def assemble(plan: StackPlan, datasets: Mapping[Path, Dataset], *, source: str) -> np.ndarray:
    """The plan's voxels as float32.

    Shape: (X, Y[, Z]) for one channel, (C, X, Y[, Z]) for colour; with volumes='all' and several
    volumes a trailing T axis: (X, Y, Z, T) (2D frames: (X, Y, 1, T)).
    """
    geometry, stack = plan.geometry, plan.stack
    n_vol = geometry.n_volumes if plan.volumes in ("all", "mean") else 1
    rows, cols = plan.matrix
    out = np.empty((n_vol, geometry.n_slices, rows, cols, plan.channels), np.float32)
    decoded: dict[Path, np.ndarray] = {}
    for slot, index in enumerate(geometry.order[: n_vol * geometry.n_slices]):
        header, plane = stack.items[index]
        ds = datasets[header.path]
        if header.path not in decoded:
            decoded[header.path] = pixels.decode(ds, header, source=source)
        volume, z = divmod(slot, geometry.n_slices)
        values = pixels.plane_values(decoded[header.path], ds, header, plane)
        if values.shape[:2] != (rows, cols):
            raise ScanError("mixed_matrix", f"plane of {values.shape[:2]} in a {rows}x{cols} stack", source)
        out[volume, z] = values
    if plan.volumes == "mean" and n_vol > 1:
        out = out.mean(axis=0, keepdims=True)
    # (T, Z, Y, X, C) -> (C, X, Y, Z, T); drop the axes that are 1 by construction.
    arr = out.transpose(4, 3, 2, 1, 0)
    if plan.kept_volumes == 1 or n_vol == 1:
        arr = arr[..., 0]
        if geometry.ndim == 2:
            arr = arr[..., 0]
    return arr[0] if plan.channels == 1 else arr
