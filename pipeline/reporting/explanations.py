"""Grad-CAM explanations in the run folder: the figures drawn for them, and what the report reads.

``pipeline.explain`` computes the maps (torch, MONAI) and calls :func:`explanation_figure` to draw
them; the report calls :func:`load_explanations`. Neither needs torch here: arrays are NumPy.

Folder ``<run>/explanations/``: ``explanations.json`` (the record: method, target layer, seed,
selection rule, counts per category, device, skipped reason, failures), ``cases.csv`` (one row per
explained case, columns ``CASE_COLUMNS``) and one PNG per case (optionally one NIfTI map).
Display convention: arrays are RAS (axis 0 runs left -> right, 1 posterior -> anterior, 2 inferior
-> superior); every panel is drawn with that axis direction left to right or bottom to top, labelled
with the letters at its ends; the map colour scale is fixed at 0-1 (1 = most important).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from pipeline.schema import EXPLANATIONS_DIR, EXPLANATIONS_FILE

log = logging.getLogger(__name__)

CASES_FILE = "cases.csv"
RECORD_FILE = EXPLANATIONS_FILE
FORMAT_VERSION = 1
# selection order; a case belongs to the first category that picks it
CATEGORIES = ("false_positive", "false_negative", "borderline", "true_positive", "true_negative")
CASE_COLUMNS = (
    "image_id",
    "patient_id",
    "category",
    "score",  # the patient's score, as the study combines its images (the call is made on it)
    "image_score",  # the shown image's own score
    "label",
    "target",
    "predicted",
    "fold",  # the fold model(s) that scored the case, ";"-separated
    "map_max_voxel",  # voxel index of the map maximum in the model's RAS grid, "i,j[,k]"
    "map_max_ras_mm",  # the same point in scanner RAS millimetres, "x,y,z"
    "zero_map",  # True: the map is zero everywhere (the model's gradient gave no location)
    "png",
    "nifti",
)
CMAP = "inferno"
_AXES = (("L", "R"), ("P", "A"), ("I", "S"))


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _grey_range(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _panel(
    ax: Axes,
    image: np.ndarray | None,
    cam: np.ndarray | None,
    axes: tuple[int, int],
    spacing: Sequence[float],
    grey: tuple[float, float],
    title: str,
) -> None:
    """One 2-D panel: ``image``/``cam`` are (A, B) with array axis 0 drawn left -> right and axis 1
    bottom -> top (``.T`` with origin lower); ``axes`` names the RAS axes they are."""
    if image is not None:
        ax.imshow(image.T, cmap="gray", origin="lower", vmin=grey[0], vmax=grey[1], interpolation="nearest")
    if cam is not None:
        alpha = 0.45 if image is not None else 1.0
        ax.imshow(cam.T, cmap=CMAP, origin="lower", vmin=0.0, vmax=1.0, alpha=alpha, interpolation="nearest")
    ax.set_aspect(float(spacing[axes[1]]) / float(spacing[axes[0]]))
    (lo_h, hi_h), (lo_v, hi_v) = _AXES[axes[0]], _AXES[axes[1]]
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{lo_h}  \u2192  {hi_h}", fontsize=8)
    ax.set_ylabel(f"{lo_v}  \u2192  {hi_v}", fontsize=8)
    ax.set_title(title, fontsize=9)


def explanation_figure(
    image: np.ndarray,
    cam: np.ndarray,
    *,
    spacing: Sequence[float],
    peak: Sequence[int],
    title: str,
) -> bytes:
    """PNG of one case. ``image`` and ``cam``: (X, Y) or (X, Y, Z) in RAS, the same shape;
    ``cam`` in [0, 1]; ``spacing``: voxel size in mm per axis; ``peak``: voxel of the map maximum.

    2-D: the image beside the image with the map overlaid. 3-D: axial, coronal and sagittal
    slices through ``peak`` with the map overlaid, and the map's maximum-intensity projection
    along I -> S. One colour bar, 0-1, for every panel.
    """
    if image.shape != cam.shape or image.ndim not in (2, 3):
        raise ValueError(f"image {image.shape} and map {cam.shape} must have the same 2-D or 3-D shape")
    grey = _grey_range(image)
    if image.ndim == 2:
        fig, axs = plt.subplots(1, 2, figsize=(7.0, 3.6))
        _panel(axs[0], image, None, (0, 1), spacing, grey, "image")
        _panel(axs[1], image, cam, (0, 1), spacing, grey, "Grad-CAM overlay")
        axs[1].plot(*peak[:2], "+", color="cyan", ms=8)
    else:
        i, j, k = (int(v) for v in peak)
        fig, axs = plt.subplots(1, 4, figsize=(13.0, 3.6))
        views = (
            (image[:, :, k], cam[:, :, k], (0, 1), f"axial (I-S index {k})", (i, j)),
            (image[:, j, :], cam[:, j, :], (0, 2), f"coronal (P-A index {j})", (i, k)),
            (image[i, :, :], cam[i, :, :], (1, 2), f"sagittal (L-R index {i})", (j, k)),
        )
        for ax, (img2, cam2, axes, name, mark) in zip(axs[:3], views, strict=True):
            _panel(ax, img2, cam2, axes, spacing, grey, name)
            ax.plot(*mark, "+", color="cyan", ms=8)
        _panel(axs[3], None, cam.max(axis=2), (0, 1), spacing, grey, "map MIP along I-S")
    # the bar shows the colour scale itself (opaque), not the half-transparent overlay
    scale = ScalarMappable(norm=Normalize(vmin=0.0, vmax=1.0), cmap=CMAP)
    bar = fig.colorbar(scale, ax=list(np.ravel(axs)), fraction=0.025, pad=0.02)
    bar.set_label("Grad-CAM (1 = most important)", fontsize=8)
    bar.set_ticks([0.0, 0.5, 1.0])
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def load_explanations(run_dir: Path) -> dict[str, Any] | None:
    """What the report shows of ``<run_dir>/explanations``, or None when there is none.

    Returns ``{"record": dict (explanations.json), "cases": [row dicts of cases.csv, strings],
    "figures": {image_id: PNG bytes}}``; a skipped run has a record with ``skipped`` and no cases.
    An unreadable record gives None (logged): the report never fails on explanations.
    """
    folder = Path(run_dir) / EXPLANATIONS_DIR
    record_path = folder / RECORD_FILE
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("explanations: %s is unreadable (%s); left out of the report", RECORD_FILE, type(exc).__name__)
        return None
    cases: list[dict[str, Any]] = []
    figures: dict[str, bytes] = {}
    cases_path = folder / CASES_FILE
    if cases_path.is_file():
        table = pd.read_csv(cases_path, dtype=str, keep_default_na=False)
        cases = [{str(k): v for k, v in row.items()} for row in table.to_dict("records")]
    for row in cases:
        name = Path(str(row.get("png", ""))).name  # a name in this folder, never a path elsewhere
        png = folder / name
        if name and png.is_file():
            figures[str(row["image_id"])] = png.read_bytes()
    return {"record": record, "cases": cases, "figures": figures}
