"""What a file is by content, not by name: MONAI routes by extension only, so a NIfTI named ``.dcm``
reaches the DICOM reader and a README in a series folder reaches pydicom."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

DICOM = "dicom"  # 128-byte preamble + "DICM"
DICOM_NO_META = "dicom_no_meta"  # starts directly with a data element (no preamble / File Meta)
NIFTI = "nifti"  # NIfTI-1 or NIfTI-2 header, uncompressed
NIFTI_GZ = "nifti_gz"  # gzip stream that starts with a NIfTI header
EMPTY = "empty"
UNKNOWN = "unknown"


_NIFTI_SIZES = (348, 540)
_DICOM_GROUPS = (0x0002, 0x0008)


def _is_nifti_header(head: bytes) -> bool:
    if len(head) < 4:
        return False
    return any(struct.unpack(f"{e}i", head[:4])[0] in _NIFTI_SIZES for e in "<>")


def _looks_like_element(head: bytes) -> bool:
    """A data set without preamble starts with a group 0002/0008 element, explicit or implicit VR."""
    if len(head) < 8:
        return False
    for endian in "<>":
        group, _element = struct.unpack(f"{endian}HH", head[:4])
        if group in _DICOM_GROUPS:
            vr = head[4:6]
            if vr.isalpha() and vr.isupper():
                return True
            (length,) = struct.unpack(f"{endian}I", head[4:8])
            return length < 1024
    return False


def sniff(path: str | Path) -> str:
    """One of ``dicom``, ``dicom_no_meta``, ``nifti``, ``nifti_gz``, ``empty`` or ``unknown``."""
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(132)
    if not head:
        return EMPTY
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                inner = gz.read(4)
        except (OSError, EOFError, zlib.error):
            return UNKNOWN
        return NIFTI_GZ if _is_nifti_header(inner) else UNKNOWN
    if _is_nifti_header(head):
        return NIFTI
    if _looks_like_element(head):
        return DICOM_NO_META
    return UNKNOWN


def has_nifti_name(path: str | Path) -> bool:
    name = Path(path).name.lower()
    return name.endswith((".nii", ".nii.gz"))
