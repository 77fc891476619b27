"""``cohortnet convert SRC OUT.nii.gz``: write what the pipeline sees (exit 0, or 3 with the reason)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.options import NONFINITE

log = logging.getLogger("pipeline")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="a DICOM series folder, a DICOM file or a NIfTI file")
    parser.add_argument("out", type=Path, help="output .nii or .nii.gz")
    parser.add_argument(
        "--volumes",
        choices=("all", "first", "mean", "refuse"),
        default="all",
        help="multi-volume series: keep all as 4D (default), the first, the mean, or refuse",
    )
    parser.add_argument(
        "--nonfinite",
        choices=NONFINITE,
        default="refuse",
        help="NaN/Inf voxels: refuse (default) or replace by 0 or the finite minimum",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import ValidationError
    from pipeline.io.conversion import convert

    if not str(args.out).lower().endswith((".nii", ".nii.gz")):
        raise ValidationError(["the output file must end in .nii or .nii.gz"], "convert arguments")
    if _same_file(args.src, args.out):
        raise ValidationError(
            [f"the output {args.out} is the source file itself: write the conversion to another file"],
            "convert arguments",
        )
    if args.out.is_dir():
        raise ValidationError(
            [f"the output {args.out} is a folder: give the .nii or .nii.gz file to write"], "convert arguments"
        )
    out = convert(args.src, args.out, volumes=args.volumes, nonfinite=args.nonfinite, source="input")
    log.info("wrote %s", out.name)
    return 0


def _same_file(src: Path, out: Path) -> bool:
    """Whether writing ``out`` would replace ``src`` (the same path, a link to it, or a hard link)."""
    try:
        return out.resolve() == src.resolve() or (out.exists() and src.is_file() and out.samefile(src))
    except OSError:  # a name the file system cannot hold: convert reports it
        return False
