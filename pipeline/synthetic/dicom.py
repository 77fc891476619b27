"""DICOM output: seeded UIDs, fake identifying values and CT Image Storage series written slice by slice.

``write_dicom_series`` stores an (X, Y, Z) HU volume with its voxel -> RAS mm affine as one
Explicit VR Little Endian file per slice, with the header that a ``SeriesSpec`` describes (UIDs,
rescale, slice thickness, file naming) plus obviously fake identifying tags (``fake_identity``) for
privacy tests to catch. UIDs come from ``seeded_uid``, so the same inputs give the same bytes; a
``_SeriesEncoder`` encodes the elements the slices share once. DICOM geometry is LPS:
``lps = diag(-1, -1, 1) @ ras``, and ``pixel_array == volume[:, :, k].T``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

# DICOM keywords whose (fake) values identify a person; outputs must never contain them.
IDENTIFYING_TAGS = (
    "PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "OperatorsName", "StationName", "DeviceSerialNumber",
)  # fmt: skip

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Elements that differ between the slices of a series, in ascending tag order.
_PER_SLICE = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData")


@dataclass(frozen=True)
class SeriesSpec:
    """The identity, header and storage conventions of one CT series for ``write_dicom_series``.

    Stored pixel values are round((HU - ``intercept``) / ``slope``). ``slice_thickness`` (None: the k
    spacing) may exceed the spacing, as overlapping reconstructions do. With ``shuffle_instances``
    the InstanceNumbers are not in slice order; ``file_naming`` "im" names files "IM" + random
    digits, "uid" names them "<SOPInstanceUID>.dcm". ``extra_tags`` (DICOM keyword -> value) is
    applied over the fake identifying tags and every other element but the pixel format.
    """

    patient_id: str
    study_uid: str
    series_uid: str
    series_number: int = 1
    slope: float = 1.0
    intercept: float = -1024.0
    slice_thickness: float | None = None
    shuffle_instances: bool = True
    file_naming: Literal["im", "uid"] = "im"
    extra_tags: Mapping[str, Any] = field(default_factory=dict)


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


def _series_tags(series: SeriesSpec, *, frame_uid: str, thickness: float) -> dict[str, Any]:
    """Tags shared by every slice of a CT series (identity defaults are added by the caller)."""
    return {
        "SpecificCharacterSet": "ISO_IR 100", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SOPClassUID": CTImageStorage, "Modality": "CT", "Manufacturer": "SYNTHETICA",
        "ManufacturerModelName": "Synth CT 64", "StudyDate": "20240101", "StudyTime": "093000",
        "SeriesDate": "20240101", "SeriesTime": "093512", "AcquisitionDate": "20240101",
        "ContentDate": "20240101", "PatientID": series.patient_id, "PatientSex": "O", "PatientAge": "060Y",
        "StudyInstanceUID": series.study_uid, "SeriesInstanceUID": series.series_uid, "StudyID": "1",
        "SeriesNumber": series.series_number, "AcquisitionNumber": 1, "FrameOfReferenceUID": frame_uid,
        "PositionReferenceIndicator": "", "StudyDescription": "CT ABDOMEN WITH CONTRAST",
        "SeriesDescription": "ABD PORTAL VENOUS", "BodyPartExamined": "ABDOMEN", "PatientPosition": "HFS",
        "KVP": "120", "ConvolutionKernel": "STANDARD", "SliceThickness": _ds(thickness),
        "RescaleType": "HU", "WindowCenter": "40", "WindowWidth": "400",
    }  # fmt: skip


def _shared_tags(series: SeriesSpec, spacing: np.ndarray, dirs: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """Every element the slices share but the pixel format: series tags, fake identity, geometry, extras."""
    thickness = float(spacing[2]) if series.slice_thickness is None else series.slice_thickness
    tags = _series_tags(series, frame_uid=seeded_uid(series.series_uid, "frame-of-reference"), thickness=thickness)
    tags.update(fake_identity(rng))
    tags.update(
        ImageOrientationPatient=[_ds(v) for v in (*dirs[:, 0], *dirs[:, 1])],
        PixelSpacing=[_ds(spacing[1]), _ds(spacing[0])],
        RescaleIntercept=_ds(series.intercept),
        RescaleSlope=_ds(series.slope),
    )
    tags.update(series.extra_tags)
    return tags


def _pixel_format(stored: np.ndarray, bits: int) -> dict[str, Any]:
    """Image pixel module elements of (X, Y, Z) stored values: X columns, Y rows, 16 bits allocated."""
    return {
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "Rows": stored.shape[1],
        "Columns": stored.shape[0], "BitsAllocated": 16, "BitsStored": bits, "HighBit": bits - 1,
        "PixelRepresentation": int(stored.dtype == np.int16),
    }  # fmt: skip


def _slice_elements(
    stored: np.ndarray, lps: np.ndarray, normal: np.ndarray, k: int, *, sop_uid: str, instance: int
) -> dict[str, Any]:
    """The ``_PER_SLICE`` elements of slice ``k``: its UIDs, number, position and little-endian pixels."""
    position = lps[:3, :3] @ np.array([0.0, 0.0, k]) + lps[:3, 3]
    return {
        "SOPInstanceUID": sop_uid, "InstanceNumber": instance,
        "ImagePositionPatient": [_ds(v, 6) for v in position],
        "SliceLocation": _ds(float(position @ normal), 6),
        "PixelData": np.ascontiguousarray(stored[:, :, k].T, dtype=stored.dtype.newbyteorder("<")).tobytes(),
    }  # fmt: skip


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
    volume_hu: np.ndarray, affine_ras: np.ndarray, out_dir: Path, series: SeriesSpec, *, rng: np.random.Generator
) -> list[Path]:
    """Write ``volume_hu`` ((X, Y, Z) HU, affine voxel -> RAS mm) as the CT Image Storage series ``series``.

    One Explicit VR Little Endian file per slice k, ``pixel_array == stored[:, :, k].T`` with stored =
    round((HU - intercept) / slope) (unsigned when it allows). IOP, IPP (LPS) and PixelSpacing
    (row spacing = j spacing, column spacing = i spacing) come from the affine, which must have
    orthogonal axes; k may run along or against the slice normal. File names and, with
    ``series.shuffle_instances``, InstanceNumbers are not in slice order. ``rng`` draws the fake
    identifying tags (``fake_identity``), the InstanceNumbers and the "IM" file numbers.
    Returns the paths, ``paths[k]`` = slice k.
    """
    volume = np.asarray(volume_hu)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (X, Y, Z), but it is {volume.ndim}D")
    lps, spacing, dirs = _dicom_grid(affine_ras)
    stored, bits = _stored_values(volume, series.slope, series.intercept)
    encoder = _SeriesEncoder({**_shared_tags(series, spacing, dirs, rng), **_pixel_format(stored, bits)})
    nz = volume.shape[2]
    instances = rng.permutation(nz) + 1 if series.shuffle_instances else np.arange(1, nz + 1)
    numbers = np.asarray(rng.choice(900_000, size=nz, replace=False)) + 100_000
    normal = np.cross(dirs[:, 0], dirs[:, 1])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(nz):
        sop_uid = seeded_uid(series.series_uid, k)
        data = encoder.encode(_slice_elements(stored, lps, normal, k, sop_uid=sop_uid, instance=int(instances[k])))
        paths.append(out_dir / (f"IM{numbers[k]:06d}" if series.file_naming == "im" else f"{sop_uid}.dcm"))
        paths[-1].write_bytes(data)
    return paths
