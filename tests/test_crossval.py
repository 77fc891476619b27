"""Patient-grouped stratified splits, and a leakage check that catches a planted leak."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.crossval import check_splits, holdout_splits, kfold_splits
from pipeline.errors import LeakageError


def patients(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)], "target": rng.permutation([0, 1] * (n // 2))})


def test_kfold_every_patient_tested_once_and_stratified() -> None:
    pts = patients(40)
    splits = kfold_splits(pts, folds=5, inner_val_fraction=0.2, seed=0)
    check_splits(splits, "kfold")
    test = splits[splits.role == "test"]
    assert sorted(test.patient_id) == sorted(pts.patient_id)
    merged = test.merge(pts, on="patient_id")
    # 20 positives over 5 folds: stratification gives 4 per fold
    assert merged.groupby("fold").target.sum().tolist() == [4, 4, 4, 4, 4]
    for _fold, part in splits.groupby("fold"):
        assert set(part.role) == {"train", "val", "test"}
        val = part[part.role == "val"].merge(pts, on="patient_id")
        assert 0 < val.target.sum() < len(val)


def test_kfold_is_seeded() -> None:
    pts = patients(30)
    a = kfold_splits(pts, 3, 0.25, seed=1)
    b = kfold_splits(pts, 3, 0.25, seed=1)
    c = kfold_splits(pts, 3, 0.25, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_check_catches_a_planted_leak() -> None:
    splits = kfold_splits(patients(20), 4, 0.25, seed=0)
    check_splits(splits, "kfold")
    leaked = splits.copy()
    # the same patient as a test patient of fold 0 and fold 1
    victim = leaked[(leaked.fold == 0) & (leaked.role == "test")].patient_id.iloc[0]
    leaked.loc[(leaked.fold == 1) & (leaked.patient_id == victim), "role"] = "test"
    with pytest.raises(LeakageError, match=f"patient {victim} is in the test set of 2 folds"):
        check_splits(leaked, "kfold")
    doubled = pd.concat([splits, splits.iloc[[0]].assign(role="val" if splits.iloc[0].role != "val" else "train")])
    with pytest.raises(LeakageError, match="has 2 roles"):
        check_splits(doubled, "kfold")


def test_holdout_uses_manifest_split() -> None:
    table = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b", "c"],
            "split": ["train", "train", "val", "test"],
            "target": [1, 1, 0, 1],
        }
    )
    splits = holdout_splits(table)
    assert splits.to_dict("list") == {
        "fold": [0, 0, 0],
        "patient_id": ["a", "b", "c"],
        "role": ["train", "val", "test"],
    }
    check_splits(splits, "holdout")


def test_leave_one_group_out_holds_out_each_group_once() -> None:
    from pipeline.crossval import leave_one_group_out_splits

    patients = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(18)],
            "target": [i % 2 for i in range(18)],
            "site": ["north"] * 6 + ["east"] * 8 + ["south"] * 4,
        }
    )
    splits = leave_one_group_out_splits(patients, "site", 0.25, seed=0)
    check_splits(splits, "leave_one_group_out")
    assert sorted(splits["group"].unique()) == ["east", "north", "south"]
    site = patients.set_index("patient_id")["site"]
    for _fold, part in splits.groupby("fold"):
        held = part["group"].iloc[0]
        assert (part["group"] == held).all()
        test = part[part["role"] == "test"]["patient_id"]
        assert set(test) == set(site[site == held].index)  # exactly that site's patients
        others = part[part["role"] != "test"]["patient_id"]
        assert (site[others] != held).all()  # never trained or validated on the held-out site
        assert (part["role"] == "val").sum() >= 2
    assert splits.groupby("fold")["group"].first().tolist() == ["east", "north", "south"]  # sorted order
    with pytest.raises(ValueError, match="at least 2 values"):
        leave_one_group_out_splits(patients.assign(site="x"), "site", 0.25, seed=0)
