"""Ingestion: DICOM series and NIfTI files -> checked float32 arrays with RAS affines.

Public API (imported lazily, so that ``cohortnet scan`` does not import torch):

* ``load_scan(path, *, nonfinite="refuse", source=None, volumes="refuse") -> Scan``
* ``Scan``: ``array`` (X, Y[, Z]) float32 (leading C only for RGB), ``affine`` voxel -> RAS mm, ``meta``
* ``LoadScand(keys=("image",), nonfinite="refuse", id_key="image_id")``: MONAI MapTransform
* ``CohortnetDicomReader``: MONAI ImageReader for DICOM, to pin at call time
* ``scan_tree(root, out_manifest, ScanOptions(...)) -> ScanSummary``: ``cohortnet scan``
* ``convert(src, out_path) -> Path``: ``cohortnet convert``
* ``REASONS`` / ``verdict_of``: reason codes and their verdicts
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.io.conversion import convert
    from pipeline.io.loader import Scan, load_scan
    from pipeline.io.reader import CohortnetDicomReader, LoadScand
    from pipeline.io.reasons import REASONS, verdict_of
    from pipeline.io.scan import ScanOptions, ScanSummary, scan_tree

_WHERE = {
    "Scan": "loader",
    "load_scan": "loader",
    "LoadScand": "reader",
    "CohortnetDicomReader": "reader",
    "scan_tree": "scan",
    "ScanSummary": "scan",
    "ScanOptions": "scan",
    "convert": "conversion",
    "REASONS": "reasons",
    "verdict_of": "reasons",
}
__all__ = [
    "REASONS",
    "CohortnetDicomReader",
    "LoadScand",
    "Scan",
    "ScanOptions",
    "ScanSummary",
    "convert",
    "load_scan",
    "scan_tree",
    "verdict_of",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"pipeline.io.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'pipeline.io' has no attribute {name!r}")
