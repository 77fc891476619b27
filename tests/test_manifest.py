"""Manifest validation: every problem at once, with line numbers; derived columns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import ValidationError
from pipeline.manifest import load_manifest


def test_valid_manifest_gets_ids_targets_and_extras(make_cohort: Callable[..., Path]) -> None:
    manifest = make_cohort(n_patients=6, second_scan=(1,))
    cohort = load_manifest(manifest)
    t = cohort.table
    assert list(t["image_id"][:3]) == ["P000#1", "P001#1", "P001#2"]
    assert set(t["target"]) == {0, 1}
    assert (t["target"] == (t["label"] == "1")).all()
    assert cohort.extra_columns == ("site",)
    assert all(Path(p).is_absolute() and Path(p).exists() for p in t["path"])
    assert len(cohort.patients) == 6


def test_every_manifest_problem_is_listed(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "b.nii.gz").write_bytes(b"x")
    pd.DataFrame(
        {
            "patient_id": ["P1", "P1", "P2", "=cmd()", "P4", "P5"],
            "image": ["a.nii.gz", "b.nii.gz", "missing.nii.gz", "a.nii.gz", "", "b.nii.gz"],
            "label": ["0", "1", "0", "1", "0", "1"],
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValidationError) as info:
        load_manifest(tmp_path / "m.csv")
    text = "\n".join(info.value.problems)
    assert "patient with more than one label: P1 has labels ['0', '1']" in text
    assert "image not found" in text
    assert "line 4: missing.nii.gz" in text
    assert "line 6: image is empty" in text
    assert "'=cmd()'" in text  # formula injection refused
    assert "image listed twice" in text


def test_missing_column_and_unknown_positive(tmp_path: Path) -> None:
    pd.DataFrame({"patient_id": ["P1"], "image": ["a"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValidationError, match=r"missing column\(s\): label"):
        load_manifest(tmp_path / "m.csv")
    pd.DataFrame({"patient_id": ["P1", "P2"], "image": ["a", "b"], "dx": ["benign", "malignant"]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    with pytest.raises(ValidationError, match=r"task.positive 'cancer' is not a value of column 'dx'"):
        load_manifest(tmp_path / "m.csv", label_col="dx", positive="cancer", check_files=False)
    cohort = load_manifest(tmp_path / "m.csv", label_col="dx", positive="malignant", check_files=False)
    assert list(cohort.table["target"]) == [0, 1]


def test_three_classes_are_refused_for_a_binary_task(tmp_path: Path) -> None:
    pd.DataFrame({"patient_id": ["1", "2", "3"], "image": ["a", "b", "c"], "label": ["x", "y", "z"]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    with pytest.raises(ValidationError, match="a binary task needs exactly 2"):
        load_manifest(tmp_path / "m.csv", positive="x", check_files=False)


def test_positive_matches_numeric_labels(tmp_path: Path) -> None:
    pd.DataFrame({"patient_id": ["1", "2"], "image": ["a", "b"], "label": ["0.0", "1.0"]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    cohort = load_manifest(tmp_path / "m.csv", positive=1, check_files=False)
    assert list(cohort.table["target"]) == [0, 1]


def test_holdout_split_checks(make_cohort: Callable[..., Path]) -> None:
    manifest = make_cohort(n_patients=12, split=True, second_scan=(0,))
    cohort = load_manifest(manifest, require_split=True)
    assert set(cohort.table["split"]) == {"train", "val", "test"}
    df = pd.read_csv(manifest)
    df.loc[1, "split"] = "test"  # P000's second scan in another split: leakage
    df.loc[3, "split"] = "validation"
    df.to_csv(manifest, index=False)
    with pytest.raises(ValidationError) as info:
        load_manifest(manifest, require_split=True)
    text = "\n".join(info.value.problems)
    assert "patient in more than one split (leakage): P000" in text
    assert "split must be one of train, val, test: line 5: 'validation'" in text


def test_keep_selects_rows_before_the_checks(make_cohort: Callable[..., Path]) -> None:
    manifest = make_cohort(n_patients=12, split=True)
    cohort = load_manifest(manifest, keep={"split": ["train", "val"]})
    assert set(cohort.table["split"]) == {"train", "val"}
    assert len(cohort.table) == 10
    with pytest.raises(ValidationError, match="filter: column 'scanner' is not in the manifest"):
        load_manifest(manifest, keep={"scanner": ["x"]})


def test_a_column_written_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("patient_id,image,label,label\nP1,a.nii.gz,1,0\n")
    with pytest.raises(ValidationError, match="column 'label' appears 2 times in the header"):
        load_manifest(path, check_files=False)
