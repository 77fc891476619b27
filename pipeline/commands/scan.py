"""``cohortnet scan DIR --out MANIFEST.csv``: manifest of usable images plus an exclusions table.

Exit codes: 0 every image usable; 8 some series or files excluded or broken (see the exclusions
table); 9 nothing usable; 2 bad arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.options import NONFINITE


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="folder to scan (any depth, any file names)")
    parser.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    parser.add_argument("--exclusions", type=Path, help="exclusions CSV (default: MANIFEST.exclusions.csv)")
    parser.add_argument("--labels", type=Path, help="CSV with patient_id or study_id and a label column")
    parser.add_argument("--label-col", help="label column of --labels (default: label)")
    parser.add_argument(
        "--pseudonymize-key-file",
        type=Path,
        help="secret key file: patient/study ids become keyed HMAC pseudonyms",
    )
    parser.add_argument(
        "--reid-table",
        type=Path,
        help="also write ids -> original ids and paths here (outside the output folder)",
    )
    parser.add_argument(
        "--layout",
        choices=("symlink", "hardlink", "copy"),
        default="symlink",
        help="how images/<id> entries point to the data (default: symlink)",
    )
    parser.add_argument(
        "--verify",
        choices=("header", "sample", "full"),
        default="sample",
        help="header only, decode one file per series (default), or load everything",
    )
    parser.add_argument(
        "--nonfinite",
        choices=NONFINITE,
        default="refuse",
        help="NaN/Inf policy the study will use (refuse excludes such images)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _output_problems(args: argparse.Namespace) -> list[str]:
    """The files scan writes must be files: checked before the scan, not after it."""
    problems = []
    exclusions = args.exclusions or args.out.with_name(args.out.stem + ".exclusions.csv")  # scan's default
    named = "--exclusions" if args.exclusions else "the exclusions table"
    for option, path in (("--out", args.out), (named, exclusions), ("--reid-table", args.reid_table)):
        if path is None:
            continue
        if path.is_dir():
            example = f", e.g. {path / 'manifest.csv'}" if option == "--out" else ""
            problems.append(f"{option} {path} is a folder: give the CSV file to write{example}")
            continue
        existing = next((p for p in path.parents if p.exists()), None)
        if existing is not None and not existing.is_dir():
            problems.append(f"{option} {path}: {existing} exists and is not a folder")
    return problems


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import ValidationError
    from pipeline.io.scan import ScanOptions, scan_tree

    problems = _output_problems(args)
    if problems:
        raise ValidationError(problems, "scan arguments")
    options = ScanOptions(
        exclusions_out=args.exclusions,
        labels_csv=args.labels,
        label_col=args.label_col,
        pseudonymize_key_file=args.pseudonymize_key_file,
        reid_table=args.reid_table,
        layout=args.layout,
        verify=args.verify,
        nonfinite=args.nonfinite,
        progress=not args.no_progress,
    )
    summary = scan_tree(args.root, args.out, options)
    print(summary.format_table())
    return summary.exit_code
