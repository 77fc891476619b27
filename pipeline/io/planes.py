"""The 2D image planes of one DICOM file, with the geometry of each.

Single-frame files hold one plane. Enhanced multi-frame files hold one plane per frame, placed by
their per-frame functional groups (MONAI's PydicomReader reads only top-level tags, so it gives
them an identity affine). Siemens mosaics tile many slices in one frame; the CSA header (read with
nibabel's ``csareader``) says how many and in which direction. Everything downstream (grouping,
sorting, geometry checks) works on planes, whatever file layout they came from.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pipeline.errors import ScanError
from pipeline.resources import MAX_PLANES

Vec = tuple[float, ...]
# FrameIncrementPointer targets that make frames time points (PS3.3 C.7.6.6, C.8.4.8)
TEMPORAL_INCREMENTS = frozenset(
    {"FrameTime", "FrameTimeVector", "TriggerTime", "FrameReferenceTime", "TimeSlotVector", "TimeSliceVector"}
    | {"PhaseVector", "RRIntervalVector"}
)


@dataclass(frozen=True)
class Plane:
    """One 2D plane: ``frame`` indexes the file's frames, ``tile`` the mosaic tile (-1: none).

    ``position``: LPS mm of the centre of the first pixel; ``orientation``: row then column
    direction cosines (6 values); ``spacing``: (between rows, between columns) in mm.
    ``order`` sorts planes that share a position (time points, echoes).
    """

    matrix: tuple[int, int] = (0, 0)  # (rows, columns) of this plane
    frame: int = 0
    tile: int = -1
    position: Vec | None = None
    orientation: Vec | None = None
    spacing: Vec | None = None
    thickness: float | None = None
    slope: float = 1.0
    intercept: float = 0.0
    instance: int | None = None
    order: Vec = ()


@dataclass(frozen=True)
class BuiltPlanes:
    planes: tuple[Plane, ...]
    spacing_source: str
    warnings: tuple[str, ...]


def _value(ds: Dataset, keyword: str) -> Any:
    """Callers run under ``parse_header``'s warnings filter; invalid values raise on access."""
    try:
        value = ds.get(keyword)
    except Exception:
        return "invalid"
    return None if value is None or value == "" else value


def floats(ds: Dataset, keyword: str, n: int) -> Vec | None:
    """``n`` floats, None when absent; NaN-filled when present but malformed (caught as invalid later)."""
    value = _value(ds, keyword)
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in (value if not isinstance(value, str) else value.split("\\")))
    except (TypeError, ValueError):
        return (math.nan,) * n
    return out if len(out) == n else (math.nan,) * n


def number(ds: Dataset, keyword: str, default: float | None = None) -> float | None:
    value = _value(ds, keyword)
    try:
        return float(value) if value not in (None, "invalid") else default
    except (TypeError, ValueError):
        return default


def rescale(ds: Dataset | None, source: str) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), 1 and 0 when absent. A value that is present but not one
    finite number ("2,5", "-1024\\0"), or a slope of 0 (every voxel would be the intercept), is
    refused rather than guessed: a CT read with intercept 0 is off by 1024 HU."""
    if ds is None:
        return 1.0, 0.0
    slope, intercept = _rescale_value(ds, "RescaleSlope", 1.0), _rescale_value(ds, "RescaleIntercept", 0.0)
    if slope is None or intercept is None:
        keyword = "RescaleSlope" if slope is None else "RescaleIntercept"
        raise ScanError(
            "invalid_rescale",
            f"{keyword} is present but not one finite number: the stored values cannot be mapped to intensities",
            source,
        )
    if slope == 0:
        raise ScanError("invalid_rescale", "RescaleSlope is 0: every voxel would be the intercept", source)
    return slope, intercept


def _rescale_value(ds: Dataset, keyword: str, default: float) -> float | None:
    """``default`` when absent or empty, the value when it is one finite number, else None."""
    value = _value(ds, keyword)
    if value is None:
        return default
    if not isinstance(value, str | numbers.Number):  # a MultiValue ("1\\0")
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # "2,5", or "invalid": pydicom raised on access
        return None
    return number if math.isfinite(number) else None


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    value = number(ds, keyword)
    return int(value) if value is not None and math.isfinite(value) else None


def _spacing(ds: Dataset) -> tuple[Vec | None, str]:
    spacing = floats(ds, "PixelSpacing", 2)
    if spacing is not None:
        return spacing, "PixelSpacing"
    spacing = floats(ds, "ImagerPixelSpacing", 2)
    return (spacing, "ImagerPixelSpacing") if spacing is not None else (None, "none")


def _thickness(ds: Dataset) -> float | None:
    return number(ds, "SpacingBetweenSlices") or number(ds, "SliceThickness")


def _order(ds: Dataset) -> Vec:
    keys = ("TemporalPositionIdentifier", "AcquisitionNumber", "InstanceNumber")
    return tuple(number(ds, k, 0.0) or 0.0 for k in keys)


def build_planes(ds: Dataset, *, rows: int, cols: int, n_frames: int, source: str) -> BuiltPlanes:
    """Planes of ``ds`` by file layout: enhanced multi-frame, mosaic, classic multi-frame or single."""
    spacing, spacing_source = _spacing(ds)
    warn = ("imager_pixel_spacing",) if spacing_source == "ImagerPixelSpacing" else ()
    image_type = {str(v).upper() for v in (_value(ds, "ImageType") or ()) if v != "invalid"}
    if "PerFrameFunctionalGroupsSequence" in ds:
        return BuiltPlanes(_enhanced(ds, (rows, cols), n_frames, source), "functional groups", warn)
    if "MOSAIC" in image_type:
        return BuiltPlanes(_mosaic(ds, rows, cols, spacing, source), spacing_source, warn)
    slope, intercept = rescale(ds, source)
    base = Plane(
        matrix=(rows, cols),
        position=floats(ds, "ImagePositionPatient", 3),
        orientation=floats(ds, "ImageOrientationPatient", 6),
        spacing=spacing,
        thickness=_thickness(ds),
        slope=slope,
        intercept=intercept,
        instance=_int_or_none(ds, "InstanceNumber"),
        order=_order(ds),
    )
    if n_frames == 1:
        return BuiltPlanes((base,), spacing_source, warn)
    return BuiltPlanes(_classic_multiframe(ds, base, n_frames, source), spacing_source, warn)


def _classic_multiframe(ds: Dataset, base: Plane, n_frames: int, source: str) -> tuple[Plane, ...]:
    """Frames at GridFrameOffsetVector offsets along the normal, or unplaced frames (cine) when
    nothing says they are anything but time points."""
    offsets = floats(ds, "GridFrameOffsetVector", n_frames)
    positions: list[Vec | None] = [None] * n_frames
    if offsets is not None and base.position is not None and base.orientation is not None:
        normal = np.cross(base.orientation[:3], base.orientation[3:])
        positions = [tuple(float(x) for x in np.add(base.position, o * normal)) for o in offsets]
    placed = positions[0] is not None
    if not placed:
        _check_time_points(ds, n_frames, source)
    planes = []
    for f in range(n_frames):
        position = positions[f]
        planes.append(
            Plane(
                matrix=base.matrix,
                frame=f,
                position=position,
                orientation=base.orientation if placed else None,
                spacing=base.spacing,
                thickness=base.thickness,
                slope=base.slope,
                intercept=base.intercept,
                instance=base.instance,
                order=(*base.order, float(f)),
            )
        )
    return tuple(planes)


def _check_time_points(ds: Dataset, n_frames: int, source: str) -> None:
    """Unplaced frames become time points (and ``volumes="mean"`` averages them), so refuse them
    when FrameIncrementPointer says the frames differ by something else: slices of an NM
    tomography (SliceVector) are ``missing_geometry``, views by detector, energy window, rotation
    or page ``unsupported_image``. A pointer to a vector with one value throughout (one detector)
    does not tell frames apart; without a pointer the frames are taken as time points (cine)."""
    pointers = _value(ds, "FrameIncrementPointer")
    if pointers in (None, "invalid"):
        return
    for tag in [int(t) for t in (pointers if isinstance(pointers, MultiValue | list) else [pointers])]:
        keyword = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if keyword in TEMPORAL_INCREMENTS or _constant(_value(ds, keyword)):
            continue
        reason = "missing_geometry" if keyword == "SliceVector" else "unsupported_image"
        raise ScanError(
            reason,
            f"{n_frames} frames without per-frame positions that differ by {keyword}, not by time: "
            "they are not time points, and cohortnet cannot place them",
            source,
        )


def _constant(value: Any) -> bool:
    values = value if isinstance(value, MultiValue | list) else [value]
    return value not in (None, "invalid") and len({str(v) for v in values}) == 1


def _group(fg: Dataset | None, sequence: str) -> Dataset | None:
    if fg is None or sequence not in fg or not fg[sequence].value:
        return None
    item: Dataset = fg[sequence].value[0]
    return item


def _fg_item(per_frame: Dataset | None, shared: Dataset | None, sequence: str) -> Dataset | None:
    """Per-frame functional group macro if present, else the shared one (PS3.3 C.7.6.16)."""
    return _group(per_frame, sequence) or _group(shared, sequence)


def _enhanced(ds: Dataset, matrix: tuple[int, int], n_frames: int, source: str) -> tuple[Plane, ...]:
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    shared_seq = ds.get("SharedFunctionalGroupsSequence") or []
    shared = shared_seq[0] if len(shared_seq) else None
    if len(per_frame) != n_frames:
        raise ScanError("corrupt_header", f"{len(per_frame)} per-frame functional groups for {n_frames} frames", source)
    planes = []
    for f, frame_fg in enumerate(per_frame):
        position = _fg_item(frame_fg, shared, "PlanePositionSequence")
        orient = _fg_item(frame_fg, shared, "PlaneOrientationSequence")
        measures = _fg_item(frame_fg, shared, "PixelMeasuresSequence")
        rescale_ds = _fg_item(frame_fg, shared, "PixelValueTransformationSequence")
        content = _fg_item(frame_fg, shared, "FrameContentSequence")
        temporal = number(content, "TemporalPositionIndex", 0.0) if content is not None else 0.0
        slope, intercept = rescale(rescale_ds, source)
        planes.append(
            Plane(
                matrix=matrix,
                frame=f,
                position=floats(position, "ImagePositionPatient", 3) if position else None,
                orientation=floats(orient, "ImageOrientationPatient", 6) if orient else None,
                spacing=floats(measures, "PixelSpacing", 2) if measures else None,
                thickness=_thickness(measures) if measures else None,
                slope=slope,
                intercept=intercept,
                instance=f + 1,
                order=(temporal or 0.0, *_index_values(content, f, source), float(f)),
            )
        )
    return tuple(planes)


def _index_values(content: Dataset | None, frame: int, source: str) -> Vec:
    """DimensionIndexValues (UL, VM 1-n): pydicom gives an int for one dimension, a list for more."""
    value = _value(content, "DimensionIndexValues") if content is not None else None
    if value is None:
        return ()
    try:
        return tuple(float(v) for v in (value if isinstance(value, MultiValue | list) else [value]))
    except (TypeError, ValueError):
        raise ScanError("corrupt_header", f"frame {frame + 1}: DimensionIndexValues are not numbers", source) from None


def _mosaic(ds: Dataset, rows: int, cols: int, spacing: Vec | None, source: str) -> tuple[Plane, ...]:
    """Tiles of a Siemens mosaic, each placed like a slice (geometry as in nibabel's MosaicWrapper)."""
    with warnings.catch_warnings():  # nibabel warns that its DICOM *readers* are experimental
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader

    try:
        csa = csareader.get_csa_header(ds, "image")
        n_tiles = int(csareader.get_n_mosaic(csa) or 0)
        normal = csareader.get_slice_normal(csa)
    except Exception:
        n_tiles, normal = 0, None
    n_tiles = n_tiles or int(number(ds, "NumberOfImagesInMosaic", 0.0) or 0)  # XA: (0019,100A) absent here
    ipp, iop = floats(ds, "ImagePositionPatient", 3), floats(ds, "ImageOrientationPatient", 6)
    if n_tiles < 1 or ipp is None or iop is None or spacing is None:
        raise ScanError("unsupported_image", "Siemens mosaic without a readable CSA header or geometry", source)
    if n_tiles > MAX_PLANES:  # checked before one record per tile is built
        raise ScanError("too_large", f"a mosaic of {n_tiles} tiles exceeds the cap of {MAX_PLANES} per file", source)
    grid = math.ceil(math.sqrt(n_tiles))
    if rows % grid or cols % grid:
        raise ScanError("unsupported_image", f"mosaic of {rows}x{cols} is not a {grid}x{grid} grid", source)
    row_cos, col_cos = np.array(iop[:3]), np.array(iop[3:])
    normal_vec = np.asarray(normal, float) if normal is not None else np.cross(row_cos, col_cos)
    # IPP of a mosaic refers to the whole mosaic frame: shift it to the first tile's corner.
    shift_rows, shift_cols = (rows - rows / grid) / 2, (cols - cols / grid) / 2
    first = np.asarray(ipp) + col_cos * spacing[0] * shift_rows + row_cos * spacing[1] * shift_cols
    step = _thickness(ds) or 1.0
    base_order, instance = _order(ds), _int_or_none(ds, "InstanceNumber")
    slope, intercept = rescale(ds, source)
    return tuple(
        Plane(
            matrix=(rows // grid, cols // grid),
            tile=k,
            position=tuple(float(x) for x in first + k * step * normal_vec),
            orientation=iop,
            spacing=spacing,
            thickness=step,
            slope=slope,
            intercept=intercept,
            instance=instance,
            order=(*base_order, float(k)),
        )
        for k in range(n_tiles)
    )
