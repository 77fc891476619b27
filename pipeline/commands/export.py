"""``cohortnet export RUN_DIR model.zip`` writes a study's portable model and, beside it, its
leakage key ``model.zip.leakage-key`` (mode 0600; it stays with the data controller: whoever holds
it can test whether a given patient id trained the model, and the archive alone cannot);
``cohortnet export --verify model.zip`` checks one (exit 0 when intact, 2 with every problem listed)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", type=Path, nargs="+", metavar="PATH", help="RUN_DIR model.zip, or model.zip with --verify"
    )
    parser.add_argument("--verify", action="store_true", help="check an archive's integrity instead of writing one")


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """RUN_DIR and the archive to write, checked: exit 2 naming what is wrong."""
    from pipeline.errors import ValidationError

    if len(args.paths) != 2:
        usage = "cohortnet export RUN_DIR model.zip, or cohortnet export --verify model.zip"
        got = f"got {len(args.paths)} path(s)"
        raise ValidationError([f"export takes RUN_DIR and the archive to write ({usage}); {got}"], "export arguments")
    run_dir, archive = args.paths
    problems = []
    if not run_dir.is_dir():
        problems.append(f"{run_dir}: no such run folder")
    if archive.is_dir():
        problems.append(f"{archive} is a folder: give the archive's file name, e.g. {archive / 'model.zip'}")
    if problems:
        raise ValidationError(problems, "export arguments")
    return run_dir, archive


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import ValidationError
    from pipeline.predict.archive import export_model, read_archive

    if args.verify:
        if len(args.paths) != 1:
            raise ValidationError(
                [f"--verify takes one archive (cohortnet export --verify model.zip), got {len(args.paths)} paths"],
                "export arguments",
            )
        files = read_archive(args.paths[0])
        folds = sorted(n for n in files if n.startswith("fold_"))
        print(f"{args.paths[0]}: intact ({len(files)} files, {len(folds)} fold model(s))")
        return 0
    run_dir, archive = _paths(args)
    hashes, key_file = export_model(run_dir, archive)
    print(f"wrote {archive} ({len(hashes)} files)")
    print(
        f"wrote {key_file}, the archive's leakage key (owner-only). Keep it with the data controller, apart from "
        "the archive: whoever holds it can test whether a given patient id trained or validated the model. "
        f"{archive.name} can be shared without it; `cohortnet predict` reads the key from beside the archive or "
        "from --leakage-key-file, and checks patient ids only with it"
    )
    return 0
