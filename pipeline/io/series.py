"""Group DICOM planes into stacks: one stack = one candidate image.

MONAI's PydicomReader stacks every file of a folder into one volume, and ITK keeps the first of
several series, so grouping is ours: by SeriesInstanceUID, then by orientation, matrix, pixel
spacing and echo (one UID can hold a 3-plane localizer, several echoes or reconstructions), then
by acquisition where acquisitions cover different positions. Series-level rules (tri-plane
localizers, interleaved matrices) are decided here because they need the sibling stacks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import ScanError
from pipeline.io.dicom import DicomHeader
from pipeline.io.planes import Plane

ORIENTATION_DECIMALS = 3
SPACING_DECIMALS = 3
LOCALIZER_MAX_PLANES = 3

Item = tuple[DicomHeader, Plane]


@dataclass
class Stack:
    """Planes of one candidate image, with the series-level rejection if a rule refused it."""

    series_uid: str
    index: int
    items: list[Item]
    rejection: ScanError | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def headers(self) -> list[DicomHeader]:
        """Distinct files in first-seen order."""
        seen: dict[str, DicomHeader] = {}
        for header, _ in self.items:
            seen.setdefault(str(header.path), header)
        return list(seen.values())

    @property
    def first(self) -> DicomHeader:
        return self.items[0][0]


def _geometry_key(plane: Plane) -> tuple[object, ...]:
    orientation = None
    if plane.orientation is not None and np.all(np.isfinite(plane.orientation)):
        orientation = tuple(float(x) for x in np.round(plane.orientation, ORIENTATION_DECIMALS) + 0.0)
    spacing = tuple(float(x) for x in np.round(plane.spacing, SPACING_DECIMALS)) if plane.spacing is not None else None
    return (orientation, plane.matrix, spacing)


def group_stacks(headers: Sequence[DicomHeader], *, source_of: dict[str, str] | None = None) -> list[Stack]:
    """Stacks of ``headers`` in a deterministic order (series UID, then geometry key).

    ``source_of`` maps a series UID to its non-identifying label for messages.
    """
    unique: dict[tuple[str, ...], DicomHeader] = {}
    duplicates: dict[str, int] = defaultdict(int)
    for h in headers:
        uid = h.series_uid or f"no-uid:{h.path.parent}"
        # Same instance, same size, same series: a second copy of one file (exports do this).
        key = (uid, h.series_number, h.sop_instance, str(h.size)) if h.sop_instance else (str(h.path),)
        if key in unique:
            duplicates[uid] += 1
            continue
        unique[key] = h
    by_series: dict[str, list[DicomHeader]] = defaultdict(list)
    for h in unique.values():
        by_series[h.series_uid or f"no-uid:{h.path.parent}"].append(h)
    stacks: list[Stack] = []
    for uid in sorted(by_series):
        source = (source_of or {}).get(uid, "series")
        series_stacks = _split_series(uid, by_series[uid], source)
        for s in series_stacks:
            if duplicates.get(uid):
                s.warnings.append("duplicate_files")
        stacks.extend(series_stacks)
    return stacks


def _split_series(uid: str, headers: list[DicomHeader], source: str) -> list[Stack]:
    """Per SeriesNumber (copies of a series may keep its UID), stacks of equal geometry key."""
    by_number: dict[str, list[DicomHeader]] = defaultdict(list)
    for h in headers:
        by_number[h.series_number].append(h)
    stacks: list[Stack] = []
    for number in sorted(by_number):
        groups: dict[tuple[object, ...], list[Item]] = defaultdict(list)
        for h in by_number[number]:
            for p in h.planes:
                groups[(*_geometry_key(p), h.samples, h.echo)].append((h, p))
        parts = [part for key in sorted(groups, key=repr) for part in _split_acquisitions(groups[key])]
        sub = [Stack(uid, len(stacks) + i, items) for i, items in enumerate(parts)]
        if len(sub) > 1:
            _series_rules(sub, source)
        stacks.extend(sub)
    return stacks


def _position_key(plane: Plane) -> tuple[float, ...] | None:
    return tuple(float(x) for x in np.round(plane.position, 2)) if plane.position is not None else None


def _split_acquisitions(items: list[Item]) -> list[list[Item]]:
    """Split by AcquisitionNumber when each acquisition is a stack of its own at other positions.

    Acquisitions covering the same positions stay together (time points: a multi-volume series).
    """
    positions = [_position_key(p) for _, p in items]
    if None in positions or len(set(positions)) == len(positions):
        return [items]
    by_acq: dict[str, list[Item]] = defaultdict(list)
    for h, p in items:
        by_acq[h.acquisition].append((h, p))
    if len(by_acq) < 2:
        return [items]
    sets = [{_position_key(p) for _, p in part} for part in by_acq.values()]
    unique_within = all(len(s) == len(part) for s, part in zip(sets, by_acq.values(), strict=True))
    if unique_within and any(s != sets[0] for s in sets):
        return [by_acq[k] for k in sorted(by_acq)]
    return [items]


def _series_rules(stacks: list[Stack], source: str) -> None:
    """Tri-plane localizers, interleaved matrices, and single stray planes in a split series."""
    orientations = {_geometry_key(s.items[0][1])[0] for s in stacks}
    if len(orientations) > 1 and all(len(s.items) <= LOCALIZER_MAX_PLANES for s in stacks):
        for s in stacks:
            s.rejection = ScanError("localizer", f"{len(stacks)} small stacks in different orientations", source)
        return
    for s in stacks:
        siblings = [o for o in stacks if o is not s]
        if len(s.items) == 1 and len(s.first.planes) == 1:
            same_orientation = any(_geometry_key(o.items[0][1])[0] == _geometry_key(s.items[0][1])[0] for o in siblings)
            reason = "mixed_matrix" if same_orientation else "localizer"
            s.rejection = ScanError(reason, "a single slice that differs from the rest of its series", source)
        elif any(_interleaved(s, o) for o in siblings):
            s.rejection = ScanError(
                "mixed_matrix", "slices of different matrix or pixel spacing interleave in one series", source
            )


def _interleaved(a: Stack, b: Stack) -> bool:
    """Same orientation, another matrix or pixel spacing, and overlapping ranges along the normal."""
    ka, kb = _geometry_key(a.items[0][1]), _geometry_key(b.items[0][1])
    oa = ka[0]
    if oa is None or oa != kb[0] or ka == kb:
        return False
    o = np.asarray(oa, float)
    normal = np.cross(o[:3], o[3:])

    def span(s: Stack) -> tuple[float, float]:
        d = [float(np.dot(p.position, normal)) for _, p in s.items if p.position is not None]
        return (min(d), max(d)) if d else (0.0, -1.0)

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 <= b1 and b0 <= a1
