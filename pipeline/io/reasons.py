"""Verdicts and reason codes: every input ends as ok, excluded(reason), error(reason) or skipped(reason).

* ``excluded``: a readable input that a rule refuses (a localizer, a gap in the slices, ...).
* ``error``: a broken input (empty, truncated, undecodable).
* ``skipped``: a file that is not an image at all (README, DICOMDIR); it does not count as a
  failure for the exit code of ``cohortnet scan``.

The codes land in the exclusions CSV and in ``ScanError.reason``; they are a contract.
"""

from __future__ import annotations

OK = "ok"
EXCLUDED = "excluded"
ERROR = "error"
SKIPPED = "skipped"
VERDICTS = (OK, EXCLUDED, ERROR, SKIPPED)

# reason -> (verdict, what it means)
REASONS: dict[str, tuple[str, str]] = {
    # not images: recorded, not counted as failures
    "not_dicom": (SKIPPED, "neither DICOM nor NIfTI by content"),
    "dicomdir": (SKIPPED, "DICOMDIR media directory (an index, not an image)"),
    # refused by a rule
    "not_an_image": (EXCLUDED, "SOP class is not an image (SEG, SR, RTSTRUCT, RTDOSE, RTPLAN, PR, KO...)"),
    "localizer": (EXCLUDED, "localizer / scout images"),
    "missing_slices": (EXCLUDED, "a gap along the slice normal: slices are missing"),
    "nonuniform_spacing": (EXCLUDED, "slice spacing varies beyond the tolerance"),
    "duplicate_slices": (EXCLUDED, "two or more slices at the same position"),
    "mixed_matrix": (EXCLUDED, "slices of one series have different matrix sizes or pixel spacings"),
    "multiple_series": (EXCLUDED, "the input holds several series or stacks; scan it to split them"),
    "multi_volume": (EXCLUDED, "several volumes (time points, echoes); the classifier needs one"),
    "unsupported_transfer_syntax": (EXCLUDED, "no installed decoder for the transfer syntax"),
    "unsupported_image": (EXCLUDED, "an image layout cohortnet does not read (e.g. mosaic without CSA)"),
    "missing_geometry": (EXCLUDED, "ImagePositionPatient/ImageOrientationPatient missing for a 3D series"),
    "missing_pixel_spacing": (EXCLUDED, "PixelSpacing missing for a CT/MR/PET image"),
    "invalid_geometry": (EXCLUDED, "non-finite, non-orthonormal or non-collinear geometry"),
    "too_large": (EXCLUDED, "more voxels than the configured cap"),
    "nonfinite_voxels": (EXCLUDED, "NaN or infinite voxels and no replacement policy"),
    "no_transform": (EXCLUDED, "NIfTI with neither qform nor sform"),
    "singular_transform": (EXCLUDED, "NIfTI transform is singular or non-finite"),
    "unsupported_dimensions": (EXCLUDED, "NIfTI with more than 4 dimensions or vector data"),
    "wrong_extension": (EXCLUDED, "content and file name disagree (e.g. NIfTI named .dcm)"),
    # broken inputs
    "empty_file": (ERROR, "zero-byte file"),
    "truncated": (ERROR, "the file ends before its data"),
    "corrupt_header": (ERROR, "header values that cannot be true (element lengths, dimensions)"),
    "corrupt_file": (ERROR, "the file cannot be parsed"),
    "no_pixel_data": (ERROR, "an image SOP class without pixel data"),
    "decode_failed": (ERROR, "pixel data could not be decoded"),
    "worker_crash": (ERROR, "the process reading or decoding the input died (a native decoder crash)"),
    "no_dicom": (ERROR, "a folder without any readable DICOM image"),
    "not_found": (ERROR, "the path does not exist"),
}


def verdict_of(reason: str) -> str:
    """Verdict for a reason code; unknown codes count as errors."""
    return REASONS.get(reason, (ERROR, ""))[0]
