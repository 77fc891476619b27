"""``cohortnet predict RUN_DIR_OR_MODEL INPUT --out DIR``: apply a finished study to a new cohort.

INPUT is a manifest CSV or a raw DICOM/NIfTI folder (scanned first, exactly as ``cohortnet scan``
does, into ``DIR/scan/``). Exit code 0 when every image was scored, 8 when some were excluded
(see ``excluded.csv``), 2 for bad arguments (every problem listed, before anything is read: a
fold the model lacks, ``--device cuda`` without CUDA, an option that would be ignored), a refused
leakage check or a leakage key that is not the archive's. ``--merge DIR... --out DIR`` joins
finished shard folders and takes no model, input or scoring option. The patient-id part of the
leakage check of a model.zip needs its leakage key: ``--leakage-key-file`` or
``model.zip.leakage-key`` beside the archive (else only images are checked).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.options import DEVICES

EXIT_EXCLUDED = 8
DEFAULT_CHUNK = 256


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("model", type=Path, nargs="?", help="a finished run folder or a model.zip from `cohortnet export`")
    add("input", type=Path, nargs="?", help="a manifest CSV, or a folder of DICOM/NIfTI files to scan first")
    add("--out", type=Path, required=True, help="prediction folder (rerunning into it resumes)")
    add("--folds", default="all", help="all (the fold ensemble, default), best, or a fold number")
    add("--chunk", type=int, default=DEFAULT_CHUNK, help="images per part file (bounds memory; default 256)")
    add("--workers", type=int, default=None, help="preprocessing processes (default: one per CPU, up to 8)")
    add("--device", choices=DEVICES, default="auto", help="where the networks run (default: auto)")
    add("--allow-study-patients", action="store_true", help="predict patients the study trained or validated on")
    add(
        "--leakage-key-file",
        type=Path,
        metavar="F",
        help="a model.zip's leakage key, for its patient-id check (default: MODEL.zip.leakage-key beside it, if there)",
    )
    add(
        "--image-root",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a folder besides the manifest's own where its images may lie (repeatable)",
    )
    add("--retry-failed", action="store_true", help="try again the images that failed in an earlier run")
    add("--pseudonymize-key-file", type=Path, help="key for pseudonymous ids when INPUT is a folder to scan")
    add("--shard", metavar="I/N", help="score share I of N (0-based; I=auto reads SLURM_ARRAY_TASK_ID)")
    add("--merge", nargs="+", type=Path, metavar="DIR", help="join finished shard folders into --out")
    add(
        "--dask",
        metavar="SCHEDULER",
        help="fan shards out over a dask.distributed cluster (local, local:N or an address)",
    )
    add(
        "--dask-shards",
        type=int,
        metavar="N",
        help="shards for --dask (default: twice the workers; a rerun keeps the first run's)",
    )
    add("--no-progress", action="store_true", help="no progress bar")


def _manifest(args: argparse.Namespace) -> Path:
    if not args.input.is_dir():
        return args.input
    from pipeline.errors import CohortnetError
    from pipeline.io.scan import ScanOptions, scan_tree

    manifest = args.out / "scan" / "manifest.csv"
    options = ScanOptions(pseudonymize_key_file=args.pseudonymize_key_file, progress=not args.no_progress)
    # resolved: the scan registers its root for redaction, and a relative root ("." or "data") would
    # redact every message's "." or "data" as <path>
    summary = scan_tree(args.input.resolve(), manifest, options)
    if summary.n_images == 0:
        raise CohortnetError(f"no usable image found under {args.input} (see {summary.exclusions})")
    return manifest


def parse_shard(text: str | None, environ: dict[str, str]) -> tuple[int, int] | None:
    """``I/N`` -> (I, N); ``auto/N`` takes I from a SLURM job array (made 0-based)."""
    from pipeline.errors import ValidationError

    if text is None:
        return None
    index, _, count = text.partition("/")
    try:
        n = int(count)
        if index == "auto":
            i = int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        else:
            i = int(index)
    except (KeyError, ValueError):
        raise ValidationError(
            [f"--shard must be I/N or auto/N inside a SLURM job array, got {text!r}"], "predict"
        ) from None
    if n < 1 or not 0 <= i < n:
        raise ValidationError([f"--shard {text}: needs 0 <= I < N"], "predict")
    return i, n


def _merge(args: argparse.Namespace) -> int:
    from pipeline.predict.merge import merge_shards

    result = merge_shards(args.merge, args.out)
    print(f"merged {len(args.merge)} shards: {result.n_predicted} of {result.n_images} images scored -> {result.out}")
    _print_metrics(result.metrics)
    return EXIT_EXCLUDED if result.n_excluded else 0


def _fan_out(args: argparse.Namespace, model: Any, cohort: Any, options: Any) -> Any:
    """The leakage guard here, once, then the shards on the cluster: they are told it ran (and
    what it found), so no worker reads the key file or checks again."""
    import dataclasses

    from pipeline.errors import ValidationError
    from pipeline.predict.fanout import dask_predict
    from pipeline.predict.run import chosen_folds, leakage, patient_check, refuse_leakage
    from pipeline.schema import IMAGE_ID

    if options.shard is not None:
        raise ValidationError(["--dask makes its own shards; drop --shard"], "predict")
    chosen_folds(model, options.folds)  # a fold the model lacks is refused before any shard is started
    found = leakage(model, cohort)
    refuse_leakage(found, options.allow_study_patients, cohort.manifest_path)
    checked = dataclasses.replace(
        options,
        leakage_key_file=None,
        leakage_checked=True,
        patient_check=patient_check(model),
        study_images=frozenset(found[IMAGE_ID].astype(str)),
    )
    return dask_predict(args.model, cohort.manifest_path, args.out, checked, args.dask, args.dask_shards)


def _merge_problems(args: argparse.Namespace) -> list[str]:
    """``--merge`` reads only shard folders and ``--out``: anything else given with it would be ignored."""
    given = [
        flag
        for flag, value in (
            ("the model and input", args.model is not None or args.input is not None),
            ("--folds", args.folds != "all"),
            ("--chunk", args.chunk != DEFAULT_CHUNK),
            ("--workers", args.workers is not None),
            ("--device", args.device != "auto"),
            ("--allow-study-patients", args.allow_study_patients),
            ("--leakage-key-file", args.leakage_key_file is not None),
            ("--image-root", bool(args.image_root)),
            ("--retry-failed", args.retry_failed),
            ("--pseudonymize-key-file", args.pseudonymize_key_file is not None),
            ("--shard", args.shard is not None),
            ("--dask", args.dask is not None),
            ("--dask-shards", args.dask_shards is not None),
        )
        if value
    ]
    if not given:
        return []
    return [
        f"--merge joins finished shard folders into --out and takes nothing else: drop {', '.join(given)} "
        "(cohortnet predict --merge DIR [DIR ...] --out DIR; the shards' own model and folds are used)"
    ]


def _argument_problems(args: argparse.Namespace) -> list[str]:
    """Combinations of arguments that cannot run, or whose option would be silently ignored."""
    if args.merge:
        return _merge_problems(args)
    problems = []
    if args.model is None or args.input is None:
        problems.append("give the model and the input, or --merge with shard folders")
    elif not args.input.exists():
        problems.append(f"{args.input}: no such manifest or folder (INPUT)")
    key = args.pseudonymize_key_file
    if key is not None and not key.is_file():
        problems.append(f"--pseudonymize-key-file {key}: no such file")
    if key is not None and args.input is not None and args.input.is_file():
        problems.append(
            f"--pseudonymize-key-file applies only when INPUT is a folder to scan; {args.input} is a manifest "
            "(its ids are used as written): drop the option, or give the folder"
        )
    if args.dask_shards is not None and args.dask is None:
        problems.append("--dask-shards needs --dask SCHEDULER (without a cluster, split the work with --shard I/N)")
    if args.dask_shards is not None and args.dask_shards < 1:
        problems.append(f"--dask-shards must be at least 1, got {args.dask_shards}")
    if args.dask is not None and args.shard is not None:
        problems.append("--dask makes its own shards; drop --shard")
    problems += [f"--image-root {d}: no such folder" for d in args.image_root if not d.is_dir()]
    if args.image_root and args.input is not None and args.input.is_dir():
        problems.append(
            f"--image-root applies only when INPUT is a manifest; {args.input} is a folder to scan (its images "
            "are where the scan finds them): drop the option, or give the manifest"
        )
    return problems


def _options(args: argparse.Namespace, problems: list[str]) -> Any:
    """The PredictOptions of the command line; the --shard problem, if any, added to ``problems``."""
    import os

    from pipeline.errors import ValidationError
    from pipeline.predict.run import PredictOptions

    try:
        shard = parse_shard(args.shard, dict(os.environ))
    except ValidationError as exc:
        problems += exc.problems
        shard = None
    archive = args.model is not None and not args.model.is_dir()
    return PredictOptions(
        folds=args.folds,
        chunk=args.chunk,
        workers=args.workers,
        device=args.device,
        allow_study_patients=args.allow_study_patients,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        shard=shard,
        leakage_key_file=args.leakage_key_file.resolve() if archive and args.leakage_key_file else None,
        image_roots=tuple(str(d.resolve()) for d in args.image_root),  # relative to the working directory
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import ValidationError
    from pipeline.predict.run import (
        chosen_folds,
        open_model,
        option_problems,
        out_problems,
        predict_cohort,
        read_cohort,
    )

    problems = _argument_problems(args) + out_problems(args.out)
    if args.merge:
        if problems:
            raise ValidationError(problems, "predict arguments")
        return _merge(args)
    options = _options(args, problems)
    problems += option_problems(options)
    if problems:  # every problem at once, before a model is opened or a folder scanned
        raise ValidationError(problems, "predict arguments")
    model = open_model(args.model, args.leakage_key_file, options.image_roots)
    chosen_folds(model, options.folds)  # a fold the model lacks, before a folder is scanned
    cohort = read_cohort(_manifest(args), model)
    result = _fan_out(args, model, cohort, options) if args.dask else predict_cohort(model, cohort, args.out, options)
    print(f"{result.n_predicted} of {result.n_images} images scored, {result.n_excluded} excluded: {result.out}")
    _print_metrics(result.metrics)
    return EXIT_EXCLUDED if result.n_excluded else 0


def _print_metrics(metrics: dict[str, Any] | None) -> None:
    """The external-validation table, as `cohortnet evaluate` prints it."""
    if metrics is not None:
        from pipeline.evaluation import format_metrics

        print("external validation at the study's locked threshold:")
        print(format_metrics(metrics), end="")
