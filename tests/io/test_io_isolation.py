"""A native crash while reading or decoding one input costs that input's verdict, never the run."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from factories import write_series

from pipeline.io import ScanOptions, scan_tree
from pipeline.io.isolation import WORKER_CRASH, map_isolated


def crash_on_three(job: int) -> int:
    """Module level, so spawned workers can import it; ``os._exit`` is what a segfault looks like."""
    if job == 3:
        os._exit(139)
    return job * 10


def test_a_dying_worker_costs_exactly_its_job() -> None:
    assert list(map_isolated(crash_on_three, list(range(6)), workers=2)) == [0, 10, 20, WORKER_CRASH, 40, 50]


def test_scan_with_worker_processes_matches_a_serial_scan(tmp_path: Path) -> None:
    for i in range(3):
        write_series(tmp_path / "d" / f"s{i}")
    (tmp_path / "d" / "README").write_text("x")
    serial = scan_tree(tmp_path / "d", tmp_path / "a" / "m.csv", ScanOptions(progress=False, workers=1))
    parallel = scan_tree(tmp_path / "d", tmp_path / "b" / "m.csv", ScanOptions(progress=False, workers=2))
    assert serial.counts == parallel.counts
    assert pd.read_csv(serial.manifest).equals(pd.read_csv(parallel.manifest))
