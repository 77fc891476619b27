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


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import CohortnetError
    from pipeline.predict.archive import export_model, read_archive

    if args.verify:
        if len(args.paths) != 1:
            raise CohortnetError("--verify takes one archive")
        files = read_archive(args.paths[0])
        folds = sorted(n for n in files if n.startswith("fold_"))
        print(f"{args.paths[0]}: intact ({len(files)} files, {len(folds)} fold model(s))")
        return 0
    if len(args.paths) != 2:
        raise CohortnetError("export takes RUN_DIR and the archive to write")
    archive = args.paths[1]
    hashes, key_file = export_model(args.paths[0], archive)
    print(f"wrote {archive} ({len(hashes)} files)")
    print(
        f"wrote {key_file}, the archive's leakage key (owner-only). Keep it with the data controller, apart from "
        "the archive: whoever holds it can test whether a given patient id trained or validated the model. "
        f"{archive.name} can be shared without it; `cohortnet predict` reads the key from beside the archive or "
        "from --leakage-key-file, and checks patient ids only with it"
    )
    return 0
