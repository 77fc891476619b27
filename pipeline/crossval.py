"""Patient-grouped, label-stratified splits and the leakage check (pandas + scikit-learn only).

A split table has one row per (fold, patient) with the patient's ``role`` in that fold:
``train`` (fits the weights), ``val`` (chooses the epoch and the operating threshold) or
``test`` (held out; its predictions are the study's result). With k-fold cross-validation every
patient is ``test`` in exactly one fold; with a holdout there is one fold, taken from the
manifest's ``split`` column; with leave-one-group-out, each value of a patient-level column (a
site, a scanner) is the test set of one fold, and the ``group`` column names it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.config import inner_val_groups
from pipeline.errors import LeakageError
from pipeline.schema import FOLD, GROUP, INNER, MEMBER_COLUMNS, PATIENT_ID, ROLE, SPLIT, TARGET

ROLES = ("train", "val", "test")


def _grouped_split(patients: pd.DataFrame, n_splits: int, seed: int) -> list[np.ndarray]:
    """Test-fold index arrays (positions in ``patients``) from StratifiedGroupKFold by patient."""
    n_splits = min(n_splits, len(patients))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    y = patients[TARGET].to_numpy()
    groups = patients[PATIENT_ID].to_numpy()
    return [test for _, test in splitter.split(np.zeros(len(patients)), y, groups)]


def _inner_val(train_patients: pd.DataFrame, fraction: float, seed: int) -> set[str]:
    """Carve the validation patients out of a fold's training patients, stratified by label."""
    n_splits = inner_val_groups(fraction)
    # StratifiedGroupKFold needs at least n_splits members per class to stratify well; fall back
    # to fewer splits (a larger validation share) rather than an empty class in validation.
    min_class = int(train_patients[TARGET].value_counts().min()) if train_patients[TARGET].nunique() > 1 else 0
    n_splits = max(2, min(n_splits, min_class)) if min_class >= 2 else 2
    first = _grouped_split(train_patients, n_splits, seed)[0]
    return set(train_patients[PATIENT_ID].iloc[first])


def kfold_splits(patients: pd.DataFrame, folds: int, inner_val_fraction: float, seed: int) -> pd.DataFrame:
    """Split table for k-fold CV over ``patients`` (columns patient_id, target; one row per patient)."""
    if len(patients) < folds:
        raise ValueError(f"{len(patients)} patients cannot be split into {folds} folds")
    rows = []
    for fold, test_idx in enumerate(_grouped_split(patients, folds, seed)):
        test = set(patients[PATIENT_ID].iloc[test_idx])
        train = patients[~patients[PATIENT_ID].isin(test)]
        val = _inner_val(train, inner_val_fraction, seed + 1000 + fold)
        for pid in patients[PATIENT_ID]:
            role = "test" if pid in test else "val" if pid in val else "train"
            rows.append((fold, pid, role))
    return pd.DataFrame(rows, columns=[FOLD, PATIENT_ID, ROLE])


def leave_one_group_out_splits(
    patients: pd.DataFrame, group: str, inner_val_fraction: float, seed: int
) -> pd.DataFrame:
    """Split table holding out each value of ``patients[group]`` in turn (folds in sorted order of
    the values); the validation patients are carved from the other groups' patients. The
    ``group`` column of the table names each fold's held-out value."""
    names = patients[group].astype(str).str.strip()
    values = sorted(names.unique())
    if len(values) < 2:
        raise ValueError(f"leave-one-group-out needs at least 2 values of {group!r}, the cohort has {values}")
    rows = []
    for fold, value in enumerate(values):
        held_out = names == value
        train = patients[~held_out]
        val = _inner_val(train, inner_val_fraction, seed + 1000 + fold)
        for pid, out in zip(patients[PATIENT_ID], held_out, strict=True):
            rows.append((fold, pid, "test" if out else "val" if pid in val else "train", value))
    return pd.DataFrame(rows, columns=[FOLD, PATIENT_ID, ROLE, GROUP])


def nested_splits(patients: pd.DataFrame, folds: int, inner_folds: int, seed: int) -> pd.DataFrame:
    """Split table for nested cross-validation. Outer rows (``inner`` = -1): fold k's test patients
    are those of ``kfold_splits`` with the same seed (so plain and nested CV are compared on the
    same test folds), every other patient trains the refitted model (role train). Inner rows
    (``inner`` = i): the outer fold's training patients split again by patient and label, role
    val for inner fold i's held-out patients (they choose the point, the epoch and the threshold)
    and train for the rest; an outer test patient is never in an inner row."""
    if len(patients) < folds:
        raise ValueError(f"{len(patients)} patients cannot be split into {folds} folds")
    rows = []
    for fold, test_idx in enumerate(_grouped_split(patients, folds, seed)):
        test = set(patients[PATIENT_ID].iloc[test_idx])
        rows += [(fold, pid, "test" if pid in test else "train", -1) for pid in patients[PATIENT_ID]]
        train = patients[~patients[PATIENT_ID].isin(test)].reset_index(drop=True)
        for inner, val_idx in enumerate(_grouped_split(train, inner_folds, seed + 1000 + fold)):
            val = set(train[PATIENT_ID].iloc[val_idx])
            rows += [(fold, pid, "val" if pid in val else "train", inner) for pid in train[PATIENT_ID]]
    return pd.DataFrame(rows, columns=[FOLD, PATIENT_ID, ROLE, INNER])


def outer_level(splits: pd.DataFrame) -> pd.DataFrame:
    """A nested table's outer rows (the folds that give the estimate), or the table itself."""
    if INNER not in splits.columns:
        return splits
    return splits[splits[INNER].astype(int) < 0].drop(columns=INNER)


def _check_nested(splits: pd.DataFrame) -> list[str]:
    """Leakage at both levels: outer test once per patient; inner rows only of the fold's training
    patients, each of them validating exactly one inner fold."""
    outer = outer_level(splits)
    problems = _roles_and_tests(outer, every_fold_needs=("train", "test"))
    inner = splits[splits[INNER].astype(int) >= 0]
    for fold, part in inner.groupby(FOLD):
        training = set(outer.loc[(outer[FOLD] == fold) & (outer[ROLE] == "train"), PATIENT_ID])
        leaked = set(part[PATIENT_ID]) - training
        if leaked:
            problems.append(f"fold {fold}: {len(leaked)} outer test patient(s) in its inner folds")
        per_inner = part.rename(columns={FOLD: "outer"}).rename(columns={INNER: FOLD}).drop(columns="outer")
        problems += [f"fold {fold}, inner {p}" for p in _roles_and_tests(per_inner, ("train", "val"), tested="val")]
    return problems


def holdout_splits(table: pd.DataFrame) -> pd.DataFrame:
    """Split table for the holdout scheme: the manifest's split column, one fold (0)."""
    per_patient = table.groupby(PATIENT_ID, sort=False)[SPLIT].first()
    return pd.DataFrame({FOLD: 0, PATIENT_ID: per_patient.index, ROLE: per_patient.to_numpy()})


def stack_members(parts: list[tuple[int, int, pd.DataFrame]]) -> pd.DataFrame:
    """One split table for a study with several members ((repeat, seed, its split table)): the folds
    numbered on across members (member m's fold k is ``m * K + k``), with ``repeat`` and ``seed``
    columns naming each fold's member."""
    frames, offset = [], 0
    for repeat, seed, part in parts:
        folds = sorted(part[FOLD].unique())
        renumber = {f: offset + i for i, f in enumerate(folds)}
        member = part.assign(**{FOLD: part[FOLD].map(renumber)})
        member[MEMBER_COLUMNS[0]], member[MEMBER_COLUMNS[1]] = repeat, seed
        frames.append(member)
        offset += len(folds)
    return pd.concat(frames, ignore_index=True)


def has_members(splits: pd.DataFrame) -> bool:
    return all(c in splits.columns for c in MEMBER_COLUMNS)


def primary_member(splits: pd.DataFrame) -> pd.DataFrame:
    """The first member's folds (the plain run's splits), or the table itself without members."""
    if not has_members(splits):
        return splits
    first = splits[list(MEMBER_COLUMNS)].iloc[0]
    keep = (splits[MEMBER_COLUMNS[0]] == first.iloc[0]) & (splits[MEMBER_COLUMNS[1]] == first.iloc[1])
    return splits[keep].drop(columns=list(MEMBER_COLUMNS))


def primary_splits(splits: pd.DataFrame) -> pd.DataFrame:
    """The partitions the study's figures come from: the first member's folds, the outer level of
    a nested cross-validation (for the flow diagram, Table 1 and the split summary)."""
    return outer_level(primary_member(splits))


def check_splits(splits: pd.DataFrame, scheme: str) -> None:
    """Raise LeakageError if any patient is on two sides of a split.

    Checks: each (fold, patient) has one role; with k-fold, each patient is ``test`` in exactly
    one fold (of each member, when the table has members); every fold has train, val and test
    patients.
    """
    if has_members(splits):
        for (repeat, seed), part in splits.groupby(list(MEMBER_COLUMNS), sort=False):
            try:
                check_splits(part.drop(columns=list(MEMBER_COLUMNS)), scheme)
            except LeakageError as exc:
                raise LeakageError(f"repeat {repeat}, seed {seed}: {exc}") from None
        return
    problems = _check_nested(splits) if INNER in splits.columns else _roles_and_tests(splits, ROLES, scheme=scheme)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise LeakageError(f"split check failed: {shown}")


def _roles_and_tests(
    splits: pd.DataFrame, every_fold_needs: tuple[str, ...], *, scheme: str = "kfold", tested: str = "test"
) -> list[str]:
    """One role per (fold, patient); with k-fold-like schemes each patient in the ``tested`` role
    of exactly one fold; every fold has each role of ``every_fold_needs``."""
    problems = []
    unknown = sorted(set(splits[ROLE]) - set(ROLES))
    if unknown:
        problems.append(f"unknown role(s) {unknown}")
    roles_per = splits.groupby([FOLD, PATIENT_ID])[ROLE].nunique().reset_index()
    for fold, pid, n in roles_per[roles_per[ROLE] > 1].itertuples(index=False):
        problems.append(f"fold {fold}: patient {pid} has {n} roles")
    if scheme != "holdout":
        test_count = splits[splits[ROLE] == tested].groupby(PATIENT_ID)[FOLD].nunique()
        every = splits[PATIENT_ID].unique()
        test_count = test_count.reindex(every, fill_value=0)
        for pid, n in test_count[test_count != 1].items():
            problems.append(f"patient {pid} is in the {tested} set of {n} folds (expected exactly 1)")
    for fold in sorted(splits[FOLD].unique()):
        present = set(splits.loc[splits[FOLD] == fold, ROLE])
        missing = [r for r in every_fold_needs if r not in present]
        if missing:
            problems.append(f"fold {fold} has no {'/'.join(missing)} patients")
    return problems


def describe_splits(splits: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    """Patients and positives per fold and role, for the log and the report."""
    merged = splits.merge(patients[[PATIENT_ID, TARGET]], on=PATIENT_ID)
    out = merged.groupby([FOLD, ROLE])[TARGET].agg(patients="size", positives="sum").reset_index()
    return out
