"""Header-list-driven DICOM and NIfTI factories for ingestion tests (nilearn-style, unequal shapes).

Volumes default to shape (X, Y, Z) = (7, 8, 9) with voxel value ``x + 10 y + 100 z``, so a swapped
axis or a misplaced slice changes values a test can assert. Geometry follows DICOM: PixelSpacing is
(between rows, between columns), X = columns, Y = rows, slices along row x column cosines.

Every builder takes exact header values, so malformed cases (DS strings over 16 characters, NaN
positions, missing tags, lying lengths) are written as given: pydicom's write-time validation is
switched off while a file is written.
"""

from __future__ import annotations

import contextlib
import gzip
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


@dataclass(frozen=True)
class Raw:
    """A value written byte for byte (``Raw("IS", b"1A")``): pydicom refuses to hold invalid IS."""

    vr: str
    value: bytes


@contextlib.contextmanager
def lenient_writing() -> Iterator[None]:
    """Let pydicom write values that break the standard (the point of a malformed fixture)."""
    old = config.settings.writing_validation_mode, config.settings.reading_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    config.settings.reading_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.writing_validation_mode, config.settings.reading_validation_mode = old


def pydicom_file(name: str) -> Path:
    """A file bundled with pydicom (no download: pydicom's extra data sets are not used)."""
    path = PYDICOM_FILES / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not bundled with this pydicom")
    return path


def ramp(shape: Sequence[int] = (7, 8, 9)) -> np.ndarray:
    """Voxel value x + 10 y + 100 z (int32), shape (X, Y[, Z])."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum(g * 10**i for i, g in enumerate(grids)).astype(np.int32)  # type: ignore[return-value]


def patient_tags(**overrides: Any) -> dict[str, Any]:
    """Identity tags of a made-up patient; override to plant canaries."""
    tags = {
        "PatientName": "Doe^Jane",
        "PatientID": "MRN-0012345",
        "PatientBirthDate": "19700101",
        "AccessionNumber": "ACC-778899",
        "InstitutionName": "Saint Nowhere Hospital",
        "OperatorsName": "Tech^Tom",
        "ReferringPhysicianName": "Ref^Rita",
        "StudyDate": "20240102",
        "ImageComments": "patient moved during the scan",
    }
    tags.update(overrides)
    return tags


def write_dicom(
    path: Path,
    tags: dict[str, Any],
    pixels: np.ndarray | None,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    preamble: bool = True,
) -> Path:
    """Write one file from ``tags`` (keyword -> value) and ``pixels`` (rows, cols) or (frames, rows, cols).

    Pixel attributes are derived from ``pixels`` unless ``tags`` sets them; a tag set to None is
    left out. ``preamble=False`` writes a bare data set (no preamble, no File Meta).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    defaults: dict[str, Any] = {"SOPClassUID": CT_IMAGE, "SOPInstanceUID": generate_uid(), "Modality": "CT"}
    if pixels is not None:
        arr = np.asarray(pixels)
        signed = bool(arr.min() < 0)
        defaults |= {
            "Rows": arr.shape[-2],
            "Columns": arr.shape[-1],
            "SamplesPerPixel": 1,
            "PhotometricInterpretation": "MONOCHROME2",
            "BitsAllocated": 16,
            "BitsStored": 16,
            "HighBit": 15,
            "PixelRepresentation": int(signed),
        }
        if arr.ndim == 3:
            defaults["NumberOfFrames"] = arr.shape[0]
    with lenient_writing():
        for keyword, value in {**defaults, **tags}.items():
            if isinstance(value, Raw):
                tag = pydicom.datadict.tag_for_keyword(keyword)
                ds[tag] = RawDataElement(Tag(tag), value.vr, len(value.value), value.value, 0, False, True)
            elif value is not None:
                setattr(ds, keyword, value)
        if pixels is not None and "PixelData" not in tags:
            dtype = "<i2" if ds.PixelRepresentation else "<u2"
            ds.PixelData = np.asarray(pixels).astype(dtype).tobytes()
        if preamble:
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = transfer_syntax
            ds.file_meta = meta
            ds.save_as(path, enforce_file_format=True)
        else:
            ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return path


def positions_along(
    n: int, *, iop: Sequence[float] = AXIAL, step: float = 2.0, origin: Sequence[float] = (0.0, 0.0, 0.0)
) -> list[tuple[float, float, float]]:
    """IPPs of ``n`` slices stepping ``step`` mm along the normal of ``iop``."""
    normal = np.cross(iop[:3], iop[3:])
    return [tuple(float(v) for v in np.add(origin, k * step * normal)) for k in range(n)]  # type: ignore[misc]


def write_series(
    folder: Path,
    volume: np.ndarray | None = None,
    *,
    iop: Sequence[float] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.9, 0.8),
    positions: Sequence[Sequence[float] | None] | None = None,
    step: float = 2.0,
    instances: Sequence[int | None] | None = None,
    per_slice: Sequence[dict[str, Any]] | None = None,
    names: Sequence[str] | None = None,
    **tags: Any,
) -> list[Path]:
    """A classic single-frame series of ``volume`` (X, Y, Z), one file per slice (ramp by default).

    ``positions``/``instances``/``per_slice`` override IPP, InstanceNumber and any tag per slice
    (None leaves the tag out); ``tags`` apply to all slices. Files are written in slice order.
    """
    vol = ramp() if volume is None else np.asarray(volume)
    n = vol.shape[2]
    folder.mkdir(parents=True, exist_ok=True)
    positions = positions_along(n, iop=iop, step=step) if positions is None else positions
    instances = list(range(1, n + 1)) if instances is None else instances
    common = {
        "SeriesInstanceUID": generate_uid(),
        "StudyInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "SeriesNumber": 1,
        "ImageOrientationPatient": list(iop) if iop is not None else None,
        "PixelSpacing": list(pixel_spacing) if pixel_spacing is not None else None,
        "SliceThickness": abs(step),
        **patient_tags(),
        **tags,
    }
    paths = []
    for k in range(n):
        slice_tags = {
            **common,
            "ImagePositionPatient": list(positions[k]) if positions[k] is not None else None,
            "InstanceNumber": instances[k],
            **(per_slice[k] if per_slice else {}),
        }
        name = names[k] if names else f"IM{k:04d}.dcm"
        paths.append(write_dicom(folder / name, slice_tags, vol[:, :, k].T))
    return paths


def expected_affine(
    iop: Sequence[float],
    pixel_spacing: tuple[float, float],
    step_vector: Sequence[float],
    origin: Sequence[float],
) -> np.ndarray:
    """RAS affine of voxel (column, row, slice) for a series written by ``write_series``."""
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(iop[:3]) * pixel_spacing[1]
    lps[:3, 1] = np.asarray(iop[3:]) * pixel_spacing[0]
    lps[:3, 2] = step_vector
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def write_enhanced(
    path: Path,
    volume: np.ndarray | None = None,
    *,
    iop: Sequence[float] = AXIAL,
    step: float = 2.0,
    frame_order: Sequence[int] | None = None,
    slopes: Sequence[float] | None = None,
    **tags: Any,
) -> Path:
    """An enhanced MR multi-frame file: geometry only in the functional groups.

    ``frame_order[f]`` is the slice stored as frame f (scrambled orders test the sort).
    """
    vol = ramp() if volume is None else np.asarray(volume)
    n = vol.shape[2]
    order = list(range(n)) if frame_order is None else list(frame_order)
    positions = positions_along(n, iop=iop, step=step)
    shared = Dataset()
    measures, orient = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.9, 0.8], step
    orient.ImageOrientationPatient = list(iop)
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orient]
    per_frame = []
    for f, k in enumerate(order):
        item, pos, content, rescale = Dataset(), Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = list(positions[k])
        content.InStackPositionNumber = k + 1
        rescale.RescaleSlope = slopes[f] if slopes else 1.0
        rescale.RescaleIntercept = 0.0
        item.PlanePositionSequence = [pos]
        item.FrameContentSequence = [content]
        item.PixelValueTransformationSequence = [rescale]
        per_frame.append(item)
    frames = np.stack([vol[:, :, k].T for k in order])
    base = {
        "SOPClassUID": ENHANCED_MR,
        "Modality": "MR",
        "SeriesInstanceUID": generate_uid(),
        "StudyInstanceUID": generate_uid(),
        "SharedFunctionalGroupsSequence": [shared],
        "PerFrameFunctionalGroupsSequence": per_frame,
        **patient_tags(),
        **tags,
    }
    return write_dicom(path, base, frames)


def write_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    qform_code: int = 1,
    sform_code: int = 1,
    version: int = 1,
    qform: np.ndarray | None = None,
    descrip: str = "",
) -> Path:
    """NIfTI-1 or -2 with explicit transform codes (``qform`` differs from the sform when given)."""
    affine = np.diag([0.8, 0.9, 2.0, 1.0]) if affine is None else affine
    path.parent.mkdir(parents=True, exist_ok=True)
    cls = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    img = cls(np.asarray(data), None)
    q = affine if qform is None else qform
    if abs(np.linalg.det(q[:3, :3])) > 0:  # a singular matrix has no quaternion
        img.header.set_qform(q, code=qform_code)
    img.header.set_sform(affine, code=sform_code)
    img.header["descrip"] = descrip.encode()[:79]
    nib.save(img, path)
    return path


def truncate(path: Path, keep: int) -> Path:
    """Keep the first ``keep`` bytes of ``path``."""
    data = path.read_bytes()[:keep]
    path.write_bytes(data)
    return path


def nifti_lying_dims(path: Path, dims: Sequence[int] = (20000, 20000, 20000)) -> Path:
    """A NIfTI-1 header that claims ``dims`` int16 voxels, in a 368-byte file."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((1, 1, 1))
    hdr.set_sform(np.eye(4), code=1)
    raw = bytearray(hdr.binaryblock)
    struct.pack_into("<8h", raw, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    path.write_bytes(bytes(raw) + b"\x00" * 4 + b"\x00" * 16)
    return path


def insert_element(path: Path, tag: tuple[int, int], vr: bytes, length: int, payload: bytes = b"") -> Path:
    """Insert a raw explicit-VR element right after the File Meta (a hostile header)."""
    data = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    head = struct.pack("<HH", *tag) + vr + b"\x00\x00" + struct.pack("<I", length)
    path.write_bytes(data[:meta_end] + head + payload + data[meta_end:])
    return path


def gzip_text(path: Path, text: str = "this is not an image\n") -> Path:
    path.write_bytes(gzip.compress(text.encode()))
    return path


@dataclass(frozen=True)
class CanaryTree:
    """A small cohort whose every identifying value and folder name carries ``canary``."""

    root: Path
    canary: str
    series_dirs: tuple[Path, ...]
    nifti: Path


def make_canary_tree(root: Path, canary: str = "ZZCANARYZZ") -> CanaryTree:
    """DICOM series, a 2D radiograph, a NIfTI file and broken files, all under canary-named folders.

    Identifying tags hold ``canary`` (as a whole value or a name component); so do the patient
    folder names, a NIfTI file stem and its header ``descrip``. Reusable for study-level tests.
    """
    ident = patient_tags(
        PatientName=f"{canary}^Jane",
        PatientID=f"{canary}-MRN",
        PatientBirthDate="19700101",
        AccessionNumber=canary,
        InstitutionName=f"{canary} Hospital",
        InstitutionAddress=f"1 {canary} Street",
        OperatorsName=f"{canary}^Op",
        ReferringPhysicianName=f"{canary}^Ref",
        PerformingPhysicianName=f"{canary}^Perf",
        StationName=canary,
        StudyID=canary,
        ImageComments=f"{canary} comment",
        StudyDescription=f"{canary} study",
        SeriesDescription=f"{canary} series",
        ProtocolName=f"{canary} protocol",
    )
    series = []
    for i in range(2):
        folder = root / f"{canary}_Doe_{i}" / "study" / f"series_{canary}"
        write_series(folder, ramp((7, 8, 5 + i)), **ident)
        series.append(folder)
    xray = root / f"{canary}_Doe_0" / "xray"
    write_dicom(
        xray / f"{canary}.dcm",
        {
            "SOPClassUID": CR_IMAGE,
            "Modality": "CR",
            "PhotometricInterpretation": "MONOCHROME1",
            "ImagerPixelSpacing": [0.2, 0.2],
            "SeriesInstanceUID": generate_uid(),
            **ident,
        },
        ramp((6, 5)).T.astype(np.uint16),
    )
    bad = root / f"{canary}_Doe_1" / "broken"
    bad.mkdir(parents=True)
    truncate(
        write_dicom(bad / f"{canary}_trunc.dcm", {"SeriesInstanceUID": generate_uid(), **ident}, ramp((6, 6))),
        400,
    )
    (bad / f"{canary}.txt").write_text(f"notes about {canary}\n")
    nifti_dir = root / f"{canary}_nifti"
    nifti_dir.mkdir()
    nifti = write_nifti(nifti_dir / f"{canary}.nii.gz", ramp().astype(np.int16), descrip=canary)
    return CanaryTree(root, canary, tuple(series), nifti)


def find_canary(paths: Sequence[Path], canary: str) -> list[str]:
    """Where ``canary`` occurs (case-insensitive) in names or contents under ``paths``.

    Contents are read raw and, for gzip files, decompressed (NIfTI headers included). Symbolic
    links are reported by name only: their targets point into the data store, not the outputs.
    """
    needle = canary.lower().encode()
    hits = []
    for top in paths:
        entries = [top] if top.is_file() else sorted(top.rglob("*"))
        for p in entries:
            if canary.lower() in p.name.lower():
                hits.append(f"name: {p}")
            if p.is_symlink() or not p.is_file():
                continue
            data = p.read_bytes()
            if data[:2] == b"\x1f\x8b":
                with contextlib.suppress(OSError, EOFError):
                    data = gzip.decompress(data)
            if needle in data.lower():
                hits.append(f"content: {p}")
    return hits


# ---------------------------------------------------------------------------------------------
# The malformed-input corpus: one folder per case under a root, ``build_corpus`` returns the
# path to load for each case (a series folder or a single file).
# ---------------------------------------------------------------------------------------------


def _tilted(angle_deg: float) -> tuple[float, ...]:
    a = np.radians(angle_deg)
    return (1.0, 0.0, 0.0, 0.0, float(np.cos(a)), float(np.sin(a)))


def _oblique(angle_deg: float) -> tuple[float, ...]:
    a = np.radians(angle_deg)
    return (float(np.cos(a)), float(np.sin(a)), 0.0, float(-np.sin(a)), float(np.cos(a)), 0.0)


def _ds(values: Sequence[float]) -> str:
    """A DS multi-value of Python float reprs (over 16 characters: non-conformant, but seen in exports)."""
    return "\\".join(repr(float(v)) for v in values)


def _series_case(folder: Path, **kw: Any) -> Path:
    write_series(folder, **kw)
    return folder


def _two_series(folder: Path, same_matrix: bool) -> Path:
    write_series(folder, names=[f"A{k}.dcm" for k in range(9)])
    other = ramp((7, 8, 4)) if same_matrix else ramp((5, 6, 4))
    write_series(folder, other, names=[f"B{k}.dcm" for k in range(4)], step=2.5)
    return folder


def _gap(folder: Path) -> Path:
    pos = positions_along(10)
    vol = ramp((7, 8, 10))
    keep = [k for k in range(10) if k != 4]
    return _series_case(folder, volume=vol[:, :, keep], positions=[pos[k] for k in keep])


def _duplicate(folder: Path) -> Path:
    pos = positions_along(9)
    order = [*range(9), 4]
    return _series_case(folder, volume=ramp()[:, :, order], positions=[pos[k] for k in order])


def _nonuniform(folder: Path) -> Path:
    z = np.cumsum([0, 1, 2.5, 1, 2.5, 1, 2.5, 1, 2.5])
    return _series_case(folder, positions=[(0.0, 0.0, float(v)) for v in z])


def _junk(folder: Path) -> Path:
    write_series(folder)
    (folder / "README").write_text("exported by PACS\n")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
    (folder / "IM9999.dcm").write_bytes(b"")
    return folder


def _multi_volume(folder: Path) -> Path:
    pos = positions_along(5)
    per = [{"TemporalPositionIdentifier": 1 + k // 5} for k in range(10)]
    return _series_case(folder, volume=ramp((7, 8, 10)), positions=pos + pos, per_slice=per)


def _triplane(folder: Path) -> Path:
    uid = generate_uid()
    for k, iop in enumerate((AXIAL, SAGITTAL, (1.0, 0.0, 0.0, 0.0, 0.0, -1.0))):
        write_series(folder, ramp((7, 8, 1)), iop=iop, names=[f"L{k}.dcm"], SeriesInstanceUID=uid)
    return folder


def _mixed_matrix(folder: Path) -> Path:
    uid = generate_uid()
    pos = positions_along(8)
    for n, shape, part in (("A", (7, 8, 4), pos[0::2]), ("B", (9, 8, 4), pos[1::2])):
        names = [f"{n}{k}.dcm" for k in range(4)]
        write_series(folder, ramp(shape), positions=part, names=names, SeriesInstanceUID=uid)
    return folder


def _copied_file(folder: Path) -> Path:
    paths = write_series(folder)
    (folder / "copy_of_IM0003.dcm").write_bytes(paths[3].read_bytes())
    return folder


def _twelve_bit_signed(folder: Path) -> Path:
    vol = ramp((7, 8, 3)) - 150  # -150 .. 221
    stored = (vol & 0x0FFF).astype(np.uint16)  # two's complement in 12 bits, high bits clear
    per = [{"PixelData": stored[:, :, k].T.astype("<u2").tobytes()} for k in range(3)]
    bits = {"BitsStored": 12, "HighBit": 11, "PixelRepresentation": 1}
    return _series_case(folder, volume=stored.astype(np.int32), per_slice=per, **bits)


def _single(folder: Path, name: str, tags: dict[str, Any], pixels: np.ndarray | None, **kw: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_dicom(folder / name, {"SeriesInstanceUID": generate_uid(), **patient_tags(), **tags}, pixels, **kw)


def _radiograph(folder: Path) -> Path:
    tags = {
        "SOPClassUID": CR_IMAGE,
        "Modality": "CR",
        "PhotometricInterpretation": "MONOCHROME1",
        "ImagerPixelSpacing": [0.2, 0.2],
        "BitsStored": 8,
        "HighBit": 7,
    }
    return _single(folder, "IM0001.dcm", tags, ramp((6, 5)).T)


_PIXEL_8BIT = {
    "Rows": 5,
    "Columns": 6,
    "BitsAllocated": 8,
    "BitsStored": 8,
    "HighBit": 7,
    "SamplesPerPixel": 1,
    "PixelRepresentation": 0,
    "PhotometricInterpretation": "MONOCHROME2",
}


def _geometry_tags(**kw: Any) -> dict[str, Any]:
    return {
        "ImageOrientationPatient": list(AXIAL),
        "ImagePositionPatient": [0, 0, 0],
        "PixelSpacing": [1, 1],
        **kw,
    }


def _copy(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(name).name
    target.write_bytes(pydicom_file(name).read_bytes())
    return target


def _nifti(folder: Path, name: str, data: np.ndarray, **kw: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_nifti(folder / name, data, **kw)


def _pixdim_mismatch(folder: Path) -> Path:
    path = _nifti(folder, "img.nii.gz", ramp().astype(np.int16), qform_code=0)
    img = nib.load(path)
    hdr = img.header.copy()
    hdr["pixdim"][1:4] = [1.0, 1.0, 1.0]
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, hdr), path)
    return path


def _named(folder: Path, source: Path, name: str) -> Path:
    target = folder / name
    target.write_bytes(source.read_bytes())
    source.unlink()
    return target


def _empty(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"")
    return folder / name


Builder = Callable[[Path], Path]
CORPUS: dict[str, tuple[str, Builder]] = {}


def case(name: str, description: str) -> Callable[[Builder], Builder]:
    """Register a corpus case: ``builder(folder) -> path to load``."""

    def register(builder: Builder) -> Builder:
        CORPUS[name] = (description, builder)
        return builder

    return register


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# DICOM series (folders) ------------------------------------------------------------------------
@case("d01_clean", "control: clean axial series 7x8x9")
def _d01(f: Path) -> Path:
    return _series_case(f)


@case("d02_instance_descending", "InstanceNumber descends while z ascends")
def _d02(f: Path) -> Path:
    return _series_case(f, instances=list(range(9, 0, -1)))


@case("d03_instance_scrambled", "InstanceNumber scrambled (re-numbered by an anonymiser)")
def _d03(f: Path) -> Path:
    return _series_case(f, instances=[3, 9, 1, 7, 5, 2, 8, 4, 6])


@case("d04_instance_missing", "InstanceNumber missing on 2 of 9 slices")
def _d04(f: Path) -> Path:
    return _series_case(f, instances=[1, 2, None, 4, 5, None, 7, 8, 9])


@case("d05_two_series_same_matrix", "two series in one folder, same matrix")
def _d05(f: Path) -> Path:
    return _two_series(f, same_matrix=True)


@case("d06_two_series_diff_matrix", "two series in one folder, different matrix")
def _d06(f: Path) -> Path:
    return _two_series(f, same_matrix=False)


case("d07_missing_slice", "one slice missing (gap along the normal)")(_gap)
case("d08_duplicate_slice", "a slice duplicated (same position, new SOP instance)")(_duplicate)
case("d09_nonuniform_spacing", "slice steps alternate 1 and 2.5 mm")(_nonuniform)


@case("d10_gantry_tilt", "gantry tilt 20 degrees: IOP tilted, IPP along z")
def _d10(f: Path) -> Path:
    return _series_case(f, iop=_tilted(20), positions=positions_along(9), GantryDetectorTilt=20)


@case("d11_oblique", "oblique orientation (30 degrees), conformant DS")
def _d11(f: Path) -> Path:
    return _series_case(f, iop=_oblique(30))


@case("d12_oblique_long_ds", "oblique IOP/IPP written as float reprs over 16 characters")
def _d12(f: Path) -> Path:
    return _series_case(f, iop=_oblique(30), ImageOrientationPatient=_ds(_oblique(30)))


@case("d13_sagittal", "sagittal series: IPP z constant, normal along x")
def _d13(f: Path) -> Path:
    return _series_case(f, iop=SAGITTAL)


@case("d14_nan_position", "NaN in one slice's ImagePositionPatient")
def _d14(f: Path) -> Path:
    return _series_case(f, positions=[*positions_along(8), ("nan", 0, 16)])


@case("d15_no_pixel_spacing", "CT series without PixelSpacing")
def _d15(f: Path) -> Path:
    return _series_case(f, pixel_spacing=None)


@case("d16_no_geometry", "series without ImagePositionPatient/ImageOrientationPatient")
def _d16(f: Path) -> Path:
    return _series_case(f, volume=ramp((7, 8, 3)), iop=None, positions=[None] * 3)


@case("d17_monochrome1", "MONOCHROME1 series")
def _d17(f: Path) -> Path:
    return _series_case(f, PhotometricInterpretation="MONOCHROME1")


@case("d18_rescale_per_slice", "RescaleSlope/Intercept differ per slice (Philips-style)")
def _d18(f: Path) -> Path:
    return _series_case(f, per_slice=[{"RescaleSlope": 1 + k, "RescaleIntercept": -10 * k} for k in range(9)])


@case("d18_rescale_slope_zero", "RescaleSlope 0 (every voxel would be the intercept)")
def _d18z(f: Path) -> Path:
    return _series_case(f, RescaleSlope=0)


@case("d19_enhanced_multiframe", "enhanced MR: geometry only in per-frame functional groups, frames scrambled")
def _d19(f: Path) -> Path:
    return write_enhanced(_mkdir(f) / "enh.dcm", frame_order=[4, 0, 8, 2, 6, 1, 7, 3, 5])


case("d20_junk_in_folder", "series folder with README, Thumbs.db and a 0-byte file")(_junk)
case("d21_empty_folder", "empty folder")(_mkdir)


@case("d22_only_junk", "folder with only non-DICOM files")
def _d22(f: Path) -> Path:
    (_mkdir(f) / "notes.txt").write_text("x")
    return f


case("d23_multi_volume", "2 time points of 5 slices in one series")(_multi_volume)


@case("d24_localizer", "ImageType LOCALIZER")
def _d24(f: Path) -> Path:
    return _series_case(f, volume=ramp((7, 8, 2)), ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])


case("d25_triplane_localizer", "3-plane localizer: one slice in each orientation, one series")(_triplane)
case("d26_mixed_matrix", "one series whose slices alternate two matrix sizes")(_mixed_matrix)


@case("d27_non_orthonormal_iop", "ImageOrientationPatient vectors not orthogonal")
def _d27(f: Path) -> Path:
    return _series_case(f, iop=(1.0, 0.0, 0.0, 0.5, 0.866, 0.0))


case("d28_copied_file", "the same file twice under two names")(_copied_file)


@case("d29_invalid_is", "InstanceNumber '1A' (invalid IS) on one slice")
def _d29(f: Path) -> Path:
    return _series_case(f, instances=[1, 2, 3, Raw("IS", b"1A"), 5, 6, 7, 8, 9])  # type: ignore[list-item]


case("d30_12bit_signed", "12-bit signed (HighBit 11) with high bits clear")(_twelve_bit_signed)


# single DICOM files ----------------------------------------------------------------------------
case("f01_radiograph_monochrome1", "CR radiograph, MONOCHROME1, 8 bits, ImagerPixelSpacing")(_radiograph)


@case("f02_nan_position", "single slice with NaN ImagePositionPatient")
def _f02(f: Path) -> Path:
    return _single(f, "IM.dcm", _geometry_tags(ImagePositionPatient=["nan", 0, 0]), ramp((6, 5)).T)


@case("f03_truncated_pixels", "pixel data cut short")
def _f03(f: Path) -> Path:
    return truncate(_single(f, "IM.dcm", _geometry_tags(), ramp((16, 16)).T), -100)


@case("f04_truncated_header", "file cut inside the header (300 bytes)")
def _f04(f: Path) -> Path:
    return truncate(_single(f, "IM.dcm", _geometry_tags(), ramp((16, 16)).T), 300)


@case("f05_no_preamble", "no preamble and no File Meta (non-conformant)")
def _f05(f: Path) -> Path:
    return _single(f, "IM.dcm", _geometry_tags(), ramp((6, 5)).T, preamble=False)


@case("f06_zero_byte", "zero-byte .dcm")
def _f06(f: Path) -> Path:
    return _empty(f, "IM.dcm")


@case("f07_huge_element", "an element claiming 0x7FFFFFF0 bytes")
def _f07(f: Path) -> Path:
    path = _single(f, "IM.dcm", _geometry_tags(), ramp((6, 5)).T)
    return insert_element(path, (0x0009, 0x1000), b"OB", 0x7FFFFFF0, b"\x00" * 16)


@case("f08_unsupported_ts", "transfer syntax MPEG2 (no decoder)")
def _f08(f: Path) -> Path:
    tags = _geometry_tags(PixelData=pydicom.encaps.encapsulate([bytes(60)]), **_PIXEL_8BIT)
    return _single(f, "IM.dcm", tags, None, transfer_syntax="1.2.840.10008.1.2.4.100")


@case("f09_mosaic_without_csa", "ImageType MOSAIC without a Siemens CSA header")
def _f09(f: Path) -> Path:
    tags = _geometry_tags(ImageType=["ORIGINAL", "PRIMARY", "M", "MOSAIC"], Modality="MR", SOPClassUID=MR_IMAGE)
    return _single(f, "IM.dcm", tags, ramp((16, 16)).T)


@case("f10_invalid_frames", "NumberOfFrames '1A'")
def _f10(f: Path) -> Path:
    return _single(f, "IM.dcm", _geometry_tags(NumberOfFrames=Raw("IS", b"1A")), ramp((6, 5)).T)


@case("f11_rgb", "RGB secondary capture")
def _f11(f: Path) -> Path:
    tags = {
        **_PIXEL_8BIT,
        "SOPClassUID": SECONDARY_CAPTURE,
        "Modality": "OT",
        "SamplesPerPixel": 3,
        "PhotometricInterpretation": "RGB",
        "PlanarConfiguration": 0,
        "PixelData": bytes(range(90)),
    }
    return _single(f, "IM.dcm", tags, None)


# pydicom's bundled files -----------------------------------------------------------------------
for _name, _file, _description in (
    ("p01_ct_small", "CT_small.dcm", "pydicom CT_small.dcm"),
    ("p02_rle", "MR_small_RLE.dcm", "RLE Lossless"),
    ("p03_jpeg2000_lossless", "MR_small_jp2klossless.dcm", "JPEG 2000 lossless"),
    ("p04_jpeg_ls", "MR_small_jpeg_ls_lossless.dcm", "JPEG-LS lossless"),
    ("p05_big_endian", "MR_small_bigendian.dcm", "explicit VR big endian"),
    ("p06_implicit", "MR_small_implicit.dcm", "implicit VR little endian"),
    ("p07_deflate", "image_dfl.dcm", "deflated explicit VR little endian"),
    ("p08_jpeg_extended_12bit", "JPGExtended.dcm", "JPEG extended 12-bit"),
    ("p09_jpeg_lossy_broken", "JPEG-lossy.dcm", "JPEG extended that no plugin decodes"),
    ("p10_seg", "liver_1frame.dcm", "DICOM-SEG"),
    ("p11_rtdose", "rtdose.dcm", "RT dose"),
    ("p12_sr", "test-SR.dcm", "structured report"),
    ("p13_rtstruct", "rtstruct.dcm", "RT structure set"),
    ("p14_truncated", "MR_truncated.dcm", "pixel data truncated"),
    ("p15_no_meta_broken", "no_meta.dcm", "no File Meta, unreadable"),
    ("p16_bad_vr", "badVR.dcm", "IS '1A' in an RT dose"),
    ("p17_jpeg_rgb", "SC_rgb_jpeg_dcmtk.dcm", "JPEG baseline RGB"),
    ("p18_jpeg_ls_near_lossless", "JPEGLSNearLossless_16.dcm", "JPEG-LS near-lossless 16-bit"),
    ("p20_jpeg2000", "JPEG2000.dcm", "JPEG 2000 lossy"),
):
    case(_name, f"{_description} ({_file})")(lambda f, _file=_file: _copy(f, _file))


@case("p19_dicomdir", "DICOMDIR (dicomdirtests/DICOMDIR-implicit)")
def _p19(f: Path) -> Path:
    return _named(f, _copy(f, "dicomdirtests/DICOMDIR-implicit"), "DICOMDIR")


# NIfTI -----------------------------------------------------------------------------------------
@case("n01_control", "control NIfTI-1 .nii.gz")
def _n01(f: Path) -> Path:
    return _nifti(f, "img.nii.gz", ramp().astype(np.int16))


@case("n02_nifti2", "NIfTI-2 .nii")
def _n02(f: Path) -> Path:
    return _nifti(f, "img.nii", ramp().astype(np.float32), version=2)


@case("n03_2d", "2D NIfTI")
def _n03(f: Path) -> Path:
    return _nifti(f, "img.nii.gz", ramp((7, 8)).astype(np.int16))


@case("n04_4d", "4D NIfTI with 3 time points")
def _n04(f: Path) -> Path:
    return _nifti(f, "img.nii.gz", ramp((7, 8, 9, 3)).astype(np.int16))


@case("n05_5d", "5D NIfTI (vector data)")
def _n05(f: Path) -> Path:
    return _nifti(f, "img.nii.gz", np.zeros((7, 8, 9, 1, 3), np.int16))


@case("n06_nan_inf", "NaN and Inf voxels")
def _n06(f: Path) -> Path:
    data = ramp().astype(np.float32)
    data[ramp() % 50 == 0] = np.nan
    data[1, 2, 3] = np.inf
    return _nifti(f, "img.nii.gz", data)


@case("n07_truncated_gz", "truncated .nii.gz")
def _n07(f: Path) -> Path:
    noise = np.random.default_rng(0).normal(size=(7, 8, 9)).astype(np.float32)
    return truncate(_nifti(f, "img.nii.gz", noise), 1500)


@case("n08_truncated_nii", "truncated .nii")
def _n08(f: Path) -> Path:
    return truncate(_nifti(f, "img.nii", ramp().astype(np.int16)), 452)


@case("n09_qform_sform_disagree", "qform 5 mm away from the sform")
def _n09(f: Path) -> Path:
    qform = np.diag([0.8, 0.9, 2.0, 1.0])
    qform[0, 3] = 5.0
    return _nifti(f, "img.nii.gz", ramp().astype(np.int16), qform=qform)


@case("n10_no_transform", "qform_code = sform_code = 0")
def _n10(f: Path) -> Path:
    return _nifti(f, "img.nii.gz", ramp().astype(np.int16), qform_code=0, sform_code=0)


@case("n11_singular_sform", "singular sform, no qform")
def _n11(f: Path) -> Path:
    return _nifti(f, "img.nii.gz", ramp().astype(np.int16), qform_code=0, affine=np.diag([0.8, 0.0, 2.0, 1.0]))


case("n12_pixdim_mismatch", "pixdim disagrees with the sform")(_pixdim_mismatch)


@case("n13_huge_dims", "header claims 20000^3 int16 voxels in 368 bytes")
def _n13(f: Path) -> Path:
    return nifti_lying_dims(_mkdir(f) / "img.nii")


@case("n14_zero_byte", "zero-byte .nii.gz")
def _n14(f: Path) -> Path:
    return _empty(f, "img.nii.gz")


@case("n15_nifti_named_dcm", "NIfTI content named .dcm")
def _n15(f: Path) -> Path:
    return _named(f, _nifti(f, "img.nii", ramp().astype(np.int16)), "img.dcm")


@case("n16_text_gz", "gzipped text named .nii.gz")
def _n16(f: Path) -> Path:
    return gzip_text(_mkdir(f) / "img.nii.gz")


def build_corpus(root: Path) -> dict[str, Path]:
    """Write every case of ``CORPUS`` under ``root/<case>``; returns the path to load per case."""
    return {case: builder(root / case) for case, (_, builder) in CORPUS.items()}
