"""One module per CLI command: ``configure(parser)`` declares arguments, ``run(args) -> int`` runs it."""

from __future__ import annotations

import argparse


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable): override any workflow key, e.g. ``--set train.epochs=3``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a workflow key, e.g. --set train.epochs=3 --set data.spatial_size=[32,32,32]",
    )
