"""Frame sizes that compressed codestreams declare, compared with the header before decoding.

A decoder allocates what the codestream says, not what Rows and Columns say: an 8x8 header over a
16000x16000 JPEG 2000 codestream decodes to gigabytes before any shape check after decoding. So
the codestream's own size (JPEG and JPEG-LS SOF, JPEG 2000 SIZ) must equal Rows x Columns x
SamplesPerPixel: the first frame's while the header is read (a prefix of the file, no pixel data
loaded), every frame's just before decoding. RLE frames declare nothing beyond the header (the
decoder fills a Rows x Columns buffer), nor do native (uncompressed) frames.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import BinaryIO

from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

from pipeline.errors import ScanError

PREFIX_BYTES = 1 << 20  # JPEG's SOF follows APP segments of at most 64 KiB each; J2K's SIZ follows SOC
HEADER_BYTES = 64 << 10  # what holds the SOF or SIZ in nearly every file: read first, PREFIX_BYTES if not
ITEM_TAG = (0xFFFE, 0xE000)
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
Size = tuple[int, int, int]  # (rows, columns, components)


def declares_size(transfer_syntax: str) -> bool:
    """Whether frames of this transfer syntax carry their own dimensions."""
    return transfer_syntax in (*JPEG2000TransferSyntaxes, *JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes)


def frame_size(frame: bytes, transfer_syntax: str) -> Size:
    """(rows, columns, components) that one frame's codestream declares; ValueError when its
    header cannot be read. Only for syntaxes where ``declares_size``."""
    if transfer_syntax in JPEG2000TransferSyntaxes:
        return _j2k_size(frame)
    return _jpeg_size(frame)


# markers that stand alone (no length field): TEM, RST0-7, SOI, EOI
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8, 0xD9}
# start-of-frame markers: SOF0-15 but DHT, JPG and DAC (ISO 10918-1 B.1.1.3), and JPEG-LS SOF55
_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}
_SOS = 0xDA


def readable(frame: bytes, transfer_syntax: str) -> bool:
    """Whether ``frame_size`` finds the declared size in these bytes."""
    try:
        frame_size(frame, transfer_syntax)
    except (ValueError, IndexError, struct.error):
        return False
    return True


def _jpeg_size(src: bytes) -> Size:
    """Hand-written: pydicom's SOF reader does not step over the 0xFF fill bytes that may precede
    any marker (ISO/IEC 10918-1 B.1.1.2), so a valid JPEG with fill bytes read as corrupt. A height
    of 0 (given later by a DNL marker) is returned as 0."""
    if src[:2] != b"\xff\xd8":
        raise ValueError("no SOI marker")
    offset = 2
    while offset < len(src):
        if src[offset] != 0xFF:
            raise ValueError("no marker where one is due")
        while offset < len(src) and src[offset] == 0xFF:  # fill bytes
            offset += 1
        marker = src[offset]
        offset += 1
        if marker in _STANDALONE:
            continue
        if marker == _SOS:
            raise ValueError("scan data before any SOF segment")
        (length,) = struct.unpack_from(">H", src, offset)
        if marker in _SOF:
            _precision, height, width, components = struct.unpack_from(">BHHB", src, offset + 2)
            return height, width, components
        offset += length
    raise ValueError("no SOF segment")


def _j2k_size(src: bytes) -> Size:
    """Hand-written: pydicom's ``get_j2k_parameters`` reports only precision and sign (and loops
    forever on a zero-length JP2 box), so the SIZ segment (ISO/IEC 15444-1 A.5.1) is read here."""
    offset = _codestream_offset(src)
    if src[offset : offset + 4] != J2K_SOC_SIZ or len(src) < offset + 42:
        raise ValueError("no SOC and SIZ markers")
    xsiz, ysiz, x0, y0 = struct.unpack_from(">4I", src, offset + 8)
    (components,) = struct.unpack_from(">H", src, offset + 40)
    if x0 > xsiz or y0 > ysiz:
        raise ValueError("image offset beyond the reference grid")
    return ysiz - y0, xsiz - x0, components


def _codestream_offset(src: bytes) -> int:
    """Start of the codestream: 0, or inside the ``jp2c`` box of a JP2 file (not conformant in
    DICOM, written by some encoders anyway)."""
    if not src.startswith(JP2_SIGNATURE):
        return 0
    offset = len(JP2_SIGNATURE)
    while offset + 8 <= len(src):
        (length,) = struct.unpack_from(">I", src, offset)
        if src[offset + 4 : offset + 8] == b"jp2c":
            return offset + 8
        if length < 8:  # 0 (up to the end) or 1 (64-bit length) before the codestream: refused
            break
        offset += length
    raise ValueError("no jp2c box")


def first_fragments(fp: BinaryIO, limit: int = PREFIX_BYTES) -> bytes:
    """The first ``limit`` bytes of the fragments after the Basic Offset Table of encapsulated pixel
    data, ``fp`` at the start of the value. Hand-written: pydicom's fragment readers return whole
    fragments (as large as the file), and the frame's header lies in its first bytes."""
    head = fp.read(8)
    if len(head) < 8 or struct.unpack("<HH", head[:4]) != ITEM_TAG:
        raise ValueError("no Basic Offset Table item")
    fp.seek(struct.unpack("<L", head[4:])[0], 1)
    out = bytearray()
    while len(out) < limit:
        head = fp.read(8)
        if len(head) < 8 or struct.unpack("<HH", head[:4]) != ITEM_TAG:
            break
        length = struct.unpack("<L", head[4:])[0]
        chunk = fp.read(min(length, limit - len(out)))
        out += chunk
        if len(chunk) < length:
            break
    return bytes(out)


def check_frames(frames: Iterable[bytes], transfer_syntax: str, expected: Size, source: str, *, first: int = 1) -> None:
    """Refuse (``corrupt_header``) a frame whose codestream declares another size than the header's
    (rows, columns, samples); ``first`` numbers the first frame in messages."""
    if not declares_size(transfer_syntax):
        return
    for n, frame in enumerate(frames, first):
        try:
            size = frame_size(frame, transfer_syntax)
        except (ValueError, IndexError, struct.error):
            raise ScanError("corrupt_header", f"frame {n}: its codestream header cannot be read", source) from None
        if size[0] == 0:  # the height comes later (DNL marker): the width and components still count
            size = (expected[0], size[1], size[2])
        if size != expected:
            raise ScanError(
                "corrupt_header",
                "frame {}: the codestream holds {}x{} pixels of {} component(s), the header says {}x{} of {}".format(
                    n, *size, *expected
                ),
                source,
            )
