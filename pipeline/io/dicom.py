"""DICOM headers: read one file defensively and keep only what geometry, decoding and grouping need.

``read_header`` never raises anything but ``ScanError``: every pydicom failure is mapped to a
reason code and a message of our own, because pydicom's messages can carry header values.
Identifying values are collected for the redactor and kept in memory only (``DicomHeader``'s
``patient_key``/``study_uid``/``accession`` serve pseudonyms and label joins, never outputs).
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, cast

import pydicom
from pydicom import filereader
from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.tag import Tag
from pydicom.uid import UID

from pipeline.errors import ScanError
from pipeline.io import codestream
from pipeline.io import planes as plane_builders
from pipeline.io.planes import Plane
from pipeline.io.sniff import DICOM, DICOM_NO_META, EMPTY, sniff
from pipeline.privacy import (
    DESCRIPTIVE_KEYWORDS,
    IDENTIFYING_KEYWORDS,
    clean_description,
    identifying_values,
    register_identifying,
)
from pipeline.resources import MAX_PLANES, MAX_VOXELS, check_load_budget, inflate_cap

DEFER_SIZE = 1024  # bytes: larger values (pixel data, private blobs) are not read into memory
MAX_FILE_BYTES = 4 * 1024**3
INFLATE_CHUNK = 1 << 20  # compressed bytes fed to zlib per step
HOSTILE_FACTOR = 64  # an element longer than 64x its file is a lie, not a truncation
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
UNDEFINED_LENGTH = 0xFFFFFFFF
# SOP classes that hold no classifier input even when they carry pixel-like data.
NON_IMAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registration, segmentation, surface segmentation
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.4",  # RT beams treatment record
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
    "1.2.840.10008.5.1.4.1.1.481.6",  # RT brachy treatment record
    "1.2.840.10008.5.1.4.1.1.481.7",  # RT treatment summary
    "1.2.840.10008.5.1.4.1.1.481.8",  # RT ion plan
    "1.2.840.10008.5.1.4.1.1.481.9",  # RT ion beams treatment record
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA / STL
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.67",  # real world value mapping
    "1.2.840.10008.5.1.4.1.1.68.",  # surface scan
    "1.2.840.10008.5.1.4.1.1.78.",  # lensometry and other measurements
    "1.2.840.10008.5.1.4.34.",  # second-generation RT
)
_EOF_ERRORS = (EOFError,)


@dataclass(frozen=True)
class DicomHeader:
    """The non-pixel content of one DICOM file that cohortnet uses.

    ``planes`` lists its 2D image planes: one for a single-frame file, one per frame for a
    multi-frame file and one per tile for a Siemens mosaic.
    """

    path: Path
    size: int
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    modality: str
    series_uid: str
    study_uid: str
    rows: int
    cols: int
    n_frames: int
    samples: int
    photometric: str
    bits_stored: int
    pixel_rep: int
    image_type: tuple[str, ...]
    planes: tuple[Plane, ...]
    description: str = ""
    manufacturer: str = ""  # Manufacturer and ManufacturerModelName (equipment, not identifying; cleaned)
    series_number: str = ""
    acquisition: str = ""
    echo: str = ""
    gantry_tilt: float = 0.0
    has_modality_lut: bool = False
    spacing_source: str = "PixelSpacing"
    warnings: tuple[str, ...] = ()
    # identifying, memory only:
    patient_key: str = field(default="", repr=False)
    accession: str = field(default="", repr=False)
    study_key: str = field(default="", repr=False)
    identifying: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def ts_name(self) -> str:
        return uid_name(self.transfer_syntax)


def uid_name(value: str) -> str:
    """The dictionary name of a UID, the UID itself when unknown; header text that is not a valid
    UID is never echoed (it lands in QC columns and messages)."""
    with warnings.catch_warnings():  # pydicom warns with the (invalid) value itself
        warnings.simplefilter("ignore")
        uid = UID(value)
        if uid.name != value:
            return uid.name
        return value if uid.is_valid else "invalid UID"


def read_dataset(path: Path, *, source: str) -> Dataset:
    """Parse ``path`` with every value over 1 KiB deferred: hostile lengths cost nothing, and pixel
    data is read from the file only when decoded."""
    kind = sniff(path)
    if kind == EMPTY:
        raise ScanError("empty_file", "zero-byte file", source)
    if kind not in (DICOM, DICOM_NO_META):
        raise ScanError("corrupt_file", "not a DICOM file by content (no 'DICM' marker or data element)", source)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ScanError("too_large", f"file of {size} bytes exceeds the {MAX_FILE_BYTES}-byte cap", source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = _read_deflated(path, kind == DICOM_NO_META, source)
            if ds is None:
                ds = pydicom.dcmread(path, force=kind == DICOM_NO_META, defer_size=DEFER_SIZE)
    except ScanError:
        raise
    except _EOF_ERRORS as exc:
        raise ScanError("truncated", f"file ends inside the header ({type(exc).__name__})", source) from None
    except Exception as exc:  # pydicom raises many types; their texts may quote header values
        raise ScanError("corrupt_file", f"DICOM header cannot be parsed ({type(exc).__name__})", source) from None
    if not ds.file_meta.get("TransferSyntaxUID"):
        _infer_transfer_syntax(ds)
    return ds


def _read_deflated(path: Path, force: bool, source: str) -> Dataset | None:
    """A Deflated Explicit VR Little Endian file, inflated under ``inflate_cap()``; None for any
    other transfer syntax. pydicom inflates the whole data set with ``zlib.decompress`` (a 300 KB
    file can hold gigabytes of zeros), so the File Meta is read with pydicom's own reader, the rest
    inflated here in bounded steps and parsed by pydicom from the bytes (nothing is deferred:
    positions would refer to the inflated stream)."""
    with path.open("rb") as fp:
        preamble = filereader.read_preamble(fp, force)
        meta = filereader._read_file_meta_info(fp)  # pydicom's reader; the public one hides the position
        if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
            return None
        inflated = _inflate(fp, inflate_cap(), source)
    buffer = cast(BinaryIO, DicomBytesIO(inflated))
    dataset = filereader.read_dataset(buffer, is_implicit_VR=False, is_little_endian=True)
    ds = FileDataset(buffer, dataset, preamble, meta, is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _inflate(fp: BinaryIO, cap: int, source: str) -> bytes:
    """The raw deflate stream from ``fp`` on, refused (``too_large``) past ``cap`` bytes before
    more is allocated."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while not inflater.eof and (chunk := inflater.unconsumed_tail or fp.read(INFLATE_CHUNK)):
        out += inflater.decompress(chunk, cap + 1 - len(out))
        if len(out) > cap:
            raise ScanError(
                "too_large", f"the deflated data set inflates past {cap} bytes, the cap for this machine", source
            )
    return bytes(out)


def _infer_transfer_syntax(ds: Dataset) -> None:
    """Files without File Meta (non-conformant): take the encoding pydicom detected while parsing."""
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    uid = pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = uid if little else pydicom.uid.ExplicitVRBigEndian
    ds.file_meta._cohortnet_inferred_ts = True  # reported as the warning "no_file_meta"


def _get(ds: Dataset, keyword: str) -> Any:
    """A value, or None when absent, empty or invalid (pydicom raises on access for bad IS/DS)."""
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    return None if value is None or value == "" else value


def _text(ds: Dataset, keyword: str) -> str:
    value = _get(ds, keyword)
    return str(value).strip() if value is not None else ""


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _get(ds, keyword)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _required_int(ds: Dataset, keyword: str, source: str) -> int:
    value = _int(ds, keyword)
    if value is None or value < 0:
        raise ScanError("corrupt_header", f"{keyword} is missing or invalid", source)
    return value


def is_non_image_class(sop_class: str) -> bool:
    return sop_class.startswith(NON_IMAGE_PREFIXES)


def parse_header(ds: Dataset, path: Path, *, source: str) -> DicomHeader:
    """Validate ``ds`` (a dataset from ``read_dataset``) and extract a ``DicomHeader``.

    Raises ScanError for DICOMDIRs, non-image SOP classes, localizers, unsupported transfer
    syntaxes, missing or truncated pixel data and invalid matrix values; any other exception
    (a value of an unexpected type or multiplicity) becomes ``corrupt_header`` naming only its
    type, so one file never aborts a scan and no header value is echoed.
    """
    with warnings.catch_warnings():  # pydicom warns with the offending value, which may identify
        warnings.simplefilter("ignore")
        try:
            return _parse_header(ds, path, source)
        except ScanError:
            raise
        except Exception as exc:
            raise ScanError("corrupt_header", f"{type(exc).__name__} while reading the header", source) from None


class _Matrix(NamedTuple):
    rows: int
    cols: int
    n_frames: int
    samples: int
    bits_allocated: int
    pixel_rep: int

    @property
    def n_samples(self) -> int:
        return self.rows * self.cols * self.n_frames * self.samples


def _read_matrix(ds: Dataset, source: str) -> _Matrix:
    rows, cols = _required_int(ds, "Rows", source), _required_int(ds, "Columns", source)
    if rows == 0 or cols == 0:
        raise ScanError("corrupt_header", f"matrix of {rows}x{cols} pixels", source)
    n_frames = _int(ds, "NumberOfFrames") if "NumberOfFrames" in ds else 1
    if n_frames is None or n_frames < 1:
        raise ScanError("corrupt_header", "NumberOfFrames (0028,0008) is missing or invalid", source)
    samples = _required_int(ds, "SamplesPerPixel", source)
    bits_allocated = _required_int(ds, "BitsAllocated", source)
    pixel_rep = _required_int(ds, "PixelRepresentation", source)
    return _Matrix(rows, cols, n_frames, samples, bits_allocated, pixel_rep)


def _parse_header(ds: Dataset, path: Path, source: str) -> DicomHeader:
    if len(ds) == 0:  # pydicom drops a data set whose last element is cut by the end of the file
        raise ScanError("truncated", "no data element could be read after the File Meta", source)
    identifying = identifying_values(ds, IDENTIFYING_KEYWORDS - DESCRIPTIVE_KEYWORDS)
    register_identifying(identifying)
    sop_class, image_type = _check_is_image(ds, path, source)
    transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    _check_transfer_syntax(transfer_syntax, source)
    m = _read_matrix(ds, source)
    photometric = _text(ds, "PhotometricInterpretation").upper() or "MONOCHROME2"
    _check_size(ds, path, m, photometric, source)
    _check_pixel_data(ds, path, m, source)
    rows, cols, n_frames = m.rows, m.cols, m.n_frames
    built = plane_builders.build_planes(ds, rows=rows, cols=cols, n_frames=n_frames, source=source)
    warn = list(built.warnings)
    if getattr(ds.file_meta, "_cohortnet_inferred_ts", False):
        warn.append("no_file_meta")
    return DicomHeader(
        path=path,
        size=path.stat().st_size,
        sop_class=sop_class,
        sop_instance=_text(ds, "SOPInstanceUID"),
        transfer_syntax=transfer_syntax,
        modality=_text(ds, "Modality").upper(),
        series_uid=_text(ds, "SeriesInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        rows=rows,
        cols=cols,
        n_frames=n_frames,
        samples=m.samples,
        photometric=photometric,
        bits_stored=_int(ds, "BitsStored") or m.bits_allocated,
        pixel_rep=m.pixel_rep,
        image_type=image_type,
        planes=built.planes,
        description=clean_description(_text(ds, "SeriesDescription"), identifying),
        manufacturer=clean_description(
            " ".join(t for t in (_text(ds, "Manufacturer"), _text(ds, "ManufacturerModelName")) if t), identifying
        ),
        series_number=_text(ds, "SeriesNumber"),
        acquisition=_text(ds, "AcquisitionNumber"),
        echo=_text(ds, "EchoNumbers"),
        gantry_tilt=float(_get(ds, "GantryDetectorTilt") or 0.0),
        has_modality_lut="ModalityLUTSequence" in ds,
        spacing_source=built.spacing_source,
        warnings=tuple(warn),
        patient_key=_text(ds, "PatientID"),
        accession=_text(ds, "AccessionNumber"),
        study_key=_text(ds, "StudyID"),
        identifying=frozenset(identifying),
    )


def _check_is_image(ds: Dataset, path: Path, source: str) -> tuple[str, tuple[str, ...]]:
    """(SOP class, ImageType) of an image with pixel data; ScanError for anything else."""
    sop_class = _text(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop_class == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        raise ScanError("dicomdir", "DICOMDIR media directory, not an image", source)
    if sop_class and is_non_image_class(sop_class):
        raise ScanError("not_an_image", f"SOP class '{uid_name(sop_class)}' is not an image", source)
    image_type = tuple(str(v).upper() for v in (_get(ds, "ImageType") or ()))
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        raise ScanError("localizer", "ImageType marks a localizer/scout image", source)
    if "Rows" not in ds or not any(t in ds for t in PIXEL_TAGS):
        _check_deferred_lengths(ds, path, source)  # a hostile length may have ended the parse early
    if not any(t in ds for t in PIXEL_TAGS):
        raise ScanError("no_pixel_data", "image without Pixel Data", source)
    return sop_class, image_type


def _check_transfer_syntax(uid: str, source: str) -> None:
    """Refuse a transfer syntax no installed pydicom plugin decodes (pydicom keeps the registry)."""
    if not uid:
        raise ScanError("corrupt_header", "no Transfer Syntax UID and none could be inferred", source)
    if uid_name(uid) == "invalid UID":
        raise ScanError("corrupt_header", "the Transfer Syntax UID is not a valid UID", source)
    try:
        available = pydicom.pixels.get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    if not available:
        name = uid_name(uid)
        raise ScanError("unsupported_transfer_syntax", f"no decoder for transfer syntax {uid} ({name})", source)


def _check_deferred_lengths(ds: Dataset, path: Path, source: str, tags: list[int] | None = None) -> None:
    """Values not yet read must fit in the file: a hostile length (0x7FFFFFF0) is a corrupt header,
    an element cut by the end of the file is a truncated file."""
    if ds.file_meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return  # positions refer to the inflated stream
    size = path.stat().st_size
    for tag in list(ds.keys()) if tags is None else tags:  # keys, not elements: iterating converts them
        elem = ds.get_item(tag, keep_deferred=True)
        length, tell = getattr(elem, "length", None), getattr(elem, "value_tell", None)
        if elem is None or length in (None, UNDEFINED_LENGTH) or tell is None or tell + length <= size:
            continue
        hostile = length > MAX_FILE_BYTES or length > HOSTILE_FACTOR * size
        reason = "corrupt_header" if hostile else "truncated"
        if int(tag) in PIXEL_TAGS and not hostile:
            raise ScanError(reason, f"pixel data needs {length} bytes, the file ends {size - tell} bytes later", source)
        raise ScanError(
            reason,
            f"element {Tag(tag)} claims {length} bytes, the file ends {size - tell} bytes later",
            source,
        )


def _check_size(ds: Dataset, path: Path, m: _Matrix, photometric: str, source: str) -> None:
    """Before a plane record per frame is built and before any frame is decoded: the voxel cap, the
    memory of the decoded frames, the plane cap and, for encapsulated data, one item per frame."""
    shape = "x".join(map(str, (m.n_frames, m.rows, m.cols, m.samples)))
    if m.n_samples > MAX_VOXELS:
        raise ScanError("too_large", f"{shape} (frames x rows x columns x samples) exceed {MAX_VOXELS} voxels", source)
    # stored values as decoded by pydicom; a palette maps each to three 16-bit values
    bytes_per_sample = 6 if photometric == "PALETTE COLOR" else (m.bits_allocated + 7) // 8
    check_load_budget(shape, m.n_samples, bytes_per_sample, source)
    if m.n_frames > MAX_PLANES:
        raise ScanError("too_large", f"{m.n_frames} frames exceed the cap of {MAX_PLANES} per file", source)
    if not UID(str(ds.file_meta.get("TransferSyntaxUID", ""))).is_compressed:
        return
    available = _pixel_bytes(ds, path)
    if available is not None and m.n_frames * 8 > available:  # every frame needs an 8-byte item header
        raise ScanError(
            "corrupt_header",
            f"NumberOfFrames is {m.n_frames}; the encapsulated pixel data ({available} bytes) holds at most "
            f"{available // 8} frames",
            source,
        )


def _pixel_tag(ds: Dataset) -> int:
    return next(t for t in PIXEL_TAGS if t in ds)


def _pixel_element(ds: Dataset) -> Any:
    return ds.get_item(_pixel_tag(ds), keep_deferred=True)


def _pixel_bytes(ds: Dataset, path: Path) -> int | None:
    """Bytes of pixel data that can exist: the value's length, or up to the end of the file."""
    elem = _pixel_element(ds)
    value = getattr(elem, "value", None)
    if isinstance(value, bytes | bytearray):
        return len(value)
    tell = getattr(elem, "value_tell", None)
    return None if tell is None else max(path.stat().st_size - tell, 0)


def _check_pixel_data(ds: Dataset, path: Path, m: _Matrix, source: str) -> None:
    """Pixel data must fit in the file and, when uncompressed, hold every sample; a compressed
    first frame must declare the header's size (``codestream``)."""
    _check_deferred_lengths(ds, path, source, [_pixel_tag(ds)])
    uid = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if uid.is_compressed:
        _check_first_frame(ds, path, m, uid, source)
        return
    expected = (m.n_samples * m.bits_allocated + 7) // 8
    elem = _pixel_element(ds)
    value = getattr(elem, "value", None)
    length = len(value) if isinstance(value, bytes | bytearray) else getattr(elem, "length", None)
    if length is not None and length != UNDEFINED_LENGTH and length < expected:
        raise ScanError("truncated", f"pixel data holds {length} of {expected} bytes", source)


def _check_first_frame(ds: Dataset, path: Path, m: _Matrix, uid: str, source: str) -> None:
    """The first frame's codestream size against the header, from the first bytes of its fragments
    (no pixel data is loaded); ``pixels.decode`` checks every frame before decoding."""
    if not codestream.declares_size(uid):
        return
    elem = _pixel_element(ds)
    value = getattr(elem, "value", None)

    def first_bytes(limit: int) -> bytes:
        if isinstance(value, bytes | bytearray):
            return codestream.first_fragments(io.BytesIO(value), limit)
        with path.open("rb") as fp:
            fp.seek(elem.value_tell)
            return codestream.first_fragments(fp, limit)

    try:
        # the SOF or SIZ is near the start: read more only when the first bytes do not hold it
        prefix = first_bytes(codestream.HEADER_BYTES)
        if len(prefix) == codestream.HEADER_BYTES and not codestream.readable(prefix, uid):
            prefix = first_bytes(codestream.PREFIX_BYTES)
    except (ValueError, OSError, TypeError):
        raise ScanError("corrupt_header", "encapsulated pixel data without a Basic Offset Table item", source) from None
    codestream.check_frames([prefix], uid, (m.rows, m.cols, m.samples), source)


def read_header(path: str | Path, *, source: str) -> tuple[DicomHeader, Dataset]:
    """``(header, dataset)`` for one file; the dataset's large values (pixel data) stay deferred."""
    path = Path(path)
    ds = read_dataset(path, source=source)
    return parse_header(ds, path, source=source), ds
