"""The malformed-input corpus against its golden verdicts (``golden/malformed.csv``), like dcm_qa's
``diff -bur Out Ref``: any change of behaviour fails here and gets reviewed.

``load`` is what ``load_scan`` does with the case's path: ``ok[warnings]`` or ``verdict:reason``.
``scan`` lists the rows ``cohortnet scan`` writes for the case's folder (manifest and exclusions).
Regenerate after a reviewed change with ``COHORTNET_UPDATE_GOLDEN=1 pytest tests/io``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from factories import CORPUS

from pipeline.errors import ScanError
from pipeline.io import ScanOptions, load_scan, scan_tree, verdict_of
from pipeline.io.reasons import OK

GOLDEN = Path(__file__).parent / "golden" / "malformed.csv"


def _load_verdict(case: str, path: Path) -> str:
    error: ScanError | None = None
    try:
        scan = load_scan(path, source=case)
    except ScanError as exc:
        error = exc
    if error is None:
        return f"ok[{','.join(scan.meta['warnings'])}]"
    assert str(error).startswith(f"{case}: "), "the message names the input by its label"
    assert error.detail, "the message states the problem"
    return f"{verdict_of(error.reason)}:{error.reason}"


def _scan_verdict(folder: Path, out: Path) -> str:
    """Rows of ``cohortnet scan`` for one case folder: ``ok`` per image, ``verdict:reason`` per exclusion."""
    scan_tree(folder, out / "manifest.csv", ScanOptions(progress=False))
    found = [OK] * len(pd.read_csv(out / "manifest.csv"))
    for row in pd.read_csv(out / "manifest.exclusions.csv", dtype=str, keep_default_na=False).itertuples():
        assert row.message, "every exclusion states its problem"
        assert row.source.startswith(("s-", "n-", "f-")), "rows name inputs by id, never by path"
        found.append(f"{row.verdict}:{row.reason}")
    return ";".join(sorted(found)) or "-"


@pytest.fixture(scope="module")
def table(corpus: dict[str, Path], corpus_root: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("scans")
    rows = [
        {
            "case": case,
            "description": CORPUS[case][0],
            "load": _load_verdict(case, path),
            "scan": _scan_verdict(corpus_root / case, out / case),
        }
        for case, path in corpus.items()
    ]
    return pd.DataFrame(rows)


def test_corpus_is_large_enough() -> None:
    assert sum(1 for c in CORPUS if not c.endswith(("_clean", "_control"))) >= 30


def test_every_case_matches_its_golden_verdict(table: pd.DataFrame) -> None:
    if os.environ.get("COHORTNET_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        table.to_csv(GOLDEN, index=False, lineterminator="\n")
    golden = pd.read_csv(GOLDEN, dtype=str, keep_default_na=False)
    merged = golden.merge(table, on="case", how="outer", suffixes=("_golden", "_now"), indicator=True)
    diff = merged[
        (merged["_merge"] != "both")
        | (merged["load_golden"] != merged["load_now"])
        | (merged["scan_golden"] != merged["scan_now"])
    ]
    assert diff.empty, (
        "verdicts changed:\n" + diff[["case", "load_golden", "load_now", "scan_golden", "scan_now"]].to_string()
    )


def test_every_input_ends_with_a_verdict(table: pd.DataFrame) -> None:
    assert set(table["load"].str.split(r"[:\[]").str[0]) <= {"ok", "excluded", "error", "skipped"}


def test_one_tree_of_every_bad_input_is_scanned_to_the_end(corpus_root: Path, tmp_path: Path) -> None:
    """A bad file never aborts a cohort: the whole corpus in one tree gives a verdict per input."""
    summary = scan_tree(corpus_root, tmp_path / "m.csv", ScanOptions(progress=False))
    exclusions = pd.read_csv(summary.exclusions)
    assert summary.exit_code == 8
    assert summary.n_images >= 20
    assert len(exclusions) >= 40
    assert {"truncated", "corrupt_header", "not_an_image", "missing_slices", "empty_file"} <= set(exclusions["reason"])
