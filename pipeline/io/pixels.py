"""Pixel values of DICOM planes: decode through pydicom's plugins, rescale, invert MONOCHROME1.

pydicom's ``pixel_array`` returns stored values (12-bit signed data sign-extended from HighBit,
unused high bits masked); it applies neither rescale, nor VOI LUT, nor MONOCHROME1 inversion.
We apply the modality rescale per plane (it can differ per slice or per frame) and then invert
MONOCHROME1 over the rescaled stored range, so bright means dense for every reader. VOI LUTs
(display windows) are not applied.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from pipeline.errors import ScanError
from pipeline.io import codestream
from pipeline.io.dicom import DicomHeader
from pipeline.io.planes import Plane

MONO = ("MONOCHROME1", "MONOCHROME2")
COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")
_PREFER_PYLIBJPEG = "1.2.840.10008.1.2.4."  # JPEG, JPEG-LS, JPEG 2000: pydicom advises against Pillow


def _plugin(transfer_syntax: str) -> str:
    if not transfer_syntax.startswith(_PREFER_PYLIBJPEG):
        return ""
    try:
        decoder = pydicom.pixels.get_decoder(transfer_syntax)
    except NotImplementedError:
        return ""
    return "pylibjpeg" if "pylibjpeg" in decoder.available_plugins else ""


def decode(ds: Dataset, header: DicomHeader, *, source: str) -> np.ndarray:
    """Stored values of every frame: (frames, rows, columns, samples)."""
    if header.photometric not in MONO + COLOR + ("PALETTE COLOR",):
        raise ScanError("unsupported_image", f"photometric interpretation {header.photometric}", source)
    _check_codestreams(ds, header, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pydicom.pixels.pixel_array(ds, decoding_plugin=_plugin(header.transfer_syntax))
            if header.photometric == "PALETTE COLOR":
                arr = pydicom.pixels.apply_color_lut(arr, ds)
    except Exception as exc:  # decoder texts are not ours to show; the type and syntax are enough
        name = header.ts_name
        raise ScanError(
            "decode_failed", f"{name} pixel data could not be decoded ({type(exc).__name__})", source
        ) from None
    color = header.samples > 1 or header.photometric == "PALETTE COLOR"
    if header.n_frames == 1:
        arr = arr[None]
    if not color:
        arr = arr[..., None]
    expected = (header.n_frames, header.rows, header.cols)
    if arr.shape[:3] != expected:
        raise ScanError("decode_failed", f"decoded shape {arr.shape[:3]} differs from header {expected}", source)
    return arr


def _check_codestreams(ds: Dataset, header: DicomHeader, source: str) -> None:
    """Every frame's codestream must declare the header's size before pydicom decodes it: the decoder
    allocates what the codestream says (``read_header`` checked the first frame already)."""
    if not codestream.declares_size(header.transfer_syntax):
        return
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        frames = generate_frames(ds.PixelData, number_of_frames=header.n_frames, extended_offsets=offsets)
        expected = (header.rows, header.cols, header.samples)
        codestream.check_frames(itertools.islice(frames, header.n_frames), header.transfer_syntax, expected, source)
    except ScanError:
        raise
    except Exception as exc:  # pydicom's texts are not ours to show
        raise ScanError("decode_failed", f"the frames cannot be split ({type(exc).__name__})", source) from None


def plane_values(frames: np.ndarray, ds: Dataset, header: DicomHeader, plane: Plane) -> np.ndarray:
    """One plane as float32 (rows, columns, samples): tile or frame, rescaled, MONOCHROME1 inverted."""
    stored = frames[plane.frame]
    if plane.tile >= 0:
        rows, cols = plane.matrix
        grid = header.cols // cols
        r, c = divmod(plane.tile, grid)
        stored = stored[r * rows : (r + 1) * rows, c * cols : (c + 1) * cols]
    if header.samples > 1 or header.photometric == "PALETTE COLOR":
        return stored.astype(np.float32)
    if header.has_modality_lut:
        values = pydicom.pixels.apply_modality_lut(stored, ds).astype(np.float64)
    else:
        values = stored.astype(np.float64) * plane.slope + plane.intercept
    if header.photometric == "MONOCHROME1" and np.issubdtype(stored.dtype, np.integer):
        low, high = _rescaled_range(ds, header, plane)
        values = (low + high) - values
    return values.astype(np.float32)


def _rescaled_range(ds: Dataset, header: DicomHeader, plane: Plane) -> tuple[float, float]:
    """Rescaled values of the smallest and largest storable value (MONOCHROME1 inversion range)."""
    bits = header.bits_stored
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if header.pixel_rep else (0, 2**bits - 1)
    if header.has_modality_lut:
        mapped = pydicom.pixels.apply_modality_lut(np.array([low, high]), ds).astype(float)
        return float(mapped.min()), float(mapped.max())
    a, b = low * plane.slope + plane.intercept, high * plane.slope + plane.intercept
    return min(a, b), max(a, b)
