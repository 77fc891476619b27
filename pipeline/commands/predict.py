"""``cohortnet predict RUN_DIR_OR_MODEL INPUT --out DIR``: apply a finished study to a new cohort.

INPUT is a manifest CSV or a raw DICOM/NIfTI folder (scanned first, exactly as ``cohortnet scan``
does, into ``DIR/scan/``). Exit code 0 when every image was scored, 8 when some were excluded
(see ``excluded.csv``), 2 for bad arguments or a refused leakage check.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.options import DEVICES

EXIT_EXCLUDED = 8


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("model", type=Path, help="a finished run folder or a model.zip from `cohortnet export`")
    add("input", type=Path, help="a manifest CSV, or a folder of DICOM/NIfTI files to scan first")
    add("--out", type=Path, required=True, help="prediction folder (rerunning into it resumes)")
    add("--folds", default="all", help="all (the fold ensemble, default), best, or a fold number")
    add("--chunk", type=int, default=256, help="images per part file (bounds memory; default 256)")
    add("--workers", type=int, default=None, help="preprocessing processes (default: one per CPU, up to 8)")
    add("--device", choices=DEVICES, default="auto", help="where the networks run (default: auto)")
    add("--allow-study-patients", action="store_true", help="predict patients the study trained or validated on")
    add("--retry-failed", action="store_true", help="try again the images that failed in an earlier run")
    add("--pseudonymize-key-file", type=Path, help="key for pseudonymous ids when INPUT is a folder to scan")
    add("--no-progress", action="store_true", help="no progress bar")


def _manifest(args: argparse.Namespace) -> Path:
    if not args.input.is_dir():
        return args.input
    from pipeline.errors import CohortnetError
    from pipeline.io.scan import ScanOptions, scan_tree

    manifest = args.out / "scan" / "manifest.csv"
    options = ScanOptions(pseudonymize_key_file=args.pseudonymize_key_file, progress=not args.no_progress)
    summary = scan_tree(args.input, manifest, options)
    if summary.n_images == 0:
        raise CohortnetError(f"no usable image found under {args.input} (see {summary.exclusions})")
    return manifest


def run(args: argparse.Namespace) -> int:
    from pipeline.predict.run import PredictOptions, open_model, predict_cohort, read_cohort

    model = open_model(args.model)
    cohort = read_cohort(_manifest(args), model)
    options = PredictOptions(
        folds=args.folds,
        chunk=args.chunk,
        workers=args.workers,
        device=args.device,
        allow_study_patients=args.allow_study_patients,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
    )
    result = predict_cohort(model, cohort, args.out, options)
    print(f"{result.n_predicted} of {result.n_images} images scored, {result.n_excluded} excluded: {result.out}")
    if result.metrics is not None:
        m = result.metrics
        ci = f"[95% CI {m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}]"
        print(f"external validation: per-patient AUC {m['auc']:.3f} {ci} at the study's threshold")
    return EXIT_EXCLUDED if result.n_excluded else 0
