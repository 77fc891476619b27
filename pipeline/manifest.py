"""Cohort manifest CSV -> validated table. Every problem is reported at once.

A manifest has one row per image (a NIfTI file, a single DICOM file or a DICOM series folder):
required columns ``patient_id``, ``image`` (relative to the manifest's folder) and the label
column; optional ``split`` (train/val/test), ``study_id``, ``series_id`` and any other columns,
which flow through to the per-patient table and can define subgroups.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import ValidationError
from pipeline.schema import IMAGE, IMAGE_ID, PATIENT_ID, SERIES_ID, SPLIT, SPLIT_VALUES, STUDY_ID, TARGET

# Characters that make a spreadsheet evaluate a cell as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_MAX_LISTED = 20  # problems of one kind listed before "... and N more"


@dataclass(frozen=True)
class Cohort:
    """A validated manifest.

    ``table``: one row per image with the manifest's columns plus ``image_id`` (stable and
    non-identifying: ``<patient_id>#<n>``), ``path`` (absolute image path) and ``target``
    (1 for the positive class, 0 otherwise).
    ``extra_columns``: manifest columns that are not part of the contract (site, sex, age...).
    """

    table: pd.DataFrame
    label_col: str | None  # None: a cohort without labels (to predict)
    positive: Any
    extra_columns: tuple[str, ...]
    manifest_path: Path
    # the manifest as read, before the workflow's filter: (images, patients) -- the flow diagram's top box
    source_counts: tuple[int, int] = (0, 0)

    @property
    def label(self) -> str:
        """The label column of a labelled cohort (every study's)."""
        if self.label_col is None:
            raise ValueError("this cohort was read without labels")
        return self.label_col

    @property
    def patients(self) -> pd.DataFrame:
        """One row per patient: patient_id, target and the extra columns (first value per patient)."""
        cols = [PATIENT_ID, TARGET, *self.extra_columns]
        return self.table[cols].groupby(PATIENT_ID, sort=False, as_index=False).first()


def _duplicate_columns(path: Path) -> list[str]:
    """pandas renames a repeated column to ``name.1`` and uses the first silently; refuse instead."""
    with open(path, encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh), [])
    names = [h.strip() for h in header]
    repeated = sorted({n for n in names if names.count(n) > 1})
    return [f"column {n!r} appears {names.count(n)} times in the header" for n in repeated]


def _under(path: Path, roots: list[Path]) -> bool:
    """``path`` (made absolute, ``..`` folded, links not followed) lies under one of ``roots``."""
    lexical = Path(os.path.normpath(path))
    return any(lexical == root or root in lexical.parents for root in roots)


def _unusable_path(image: str) -> bool:
    """A path no file system can hold: a NUL byte, or one component over 255 bytes."""
    return "\0" in image or any(len(part.encode()) > 255 for part in Path(image).parts)


def _listed(kind: str, items: list[str]) -> list[str]:
    shown = [f"{kind}: {item if len(item) <= 120 else item[:117] + '...'}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        shown.append(f"{kind}: ... and {len(items) - _MAX_LISTED} more")
    return shown


def _coerce_positive(values: pd.Series, positive: Any) -> Any:
    """Match the workflow's ``positive`` (parsed from YAML) to the label column's values, read as text."""
    text = str(positive)
    if text in set(values):
        return text
    # YAML turns 1 into int and "1.0" may be how pandas wrote it; compare numerically as a fallback.
    try:
        number = float(text)
    except ValueError:
        return text
    for v in set(values):
        try:
            if float(v) == number:
                return v
        except ValueError:
            continue
    return text


def load_manifest(
    path: Path | str,
    *,
    label_col: str | None = "label",
    positive: Any = 1,
    require_split: bool = False,
    check_files: bool = True,
    extra_required: tuple[str, ...] = (),
    keep: Mapping[str, Sequence[str]] | None = None,
    image_roots: Sequence[Path | str] | None = None,
) -> Cohort:
    """Read and validate a manifest; raise one ValidationError listing every problem.

    ``keep`` selects rows before any check: ``{"split": ["train", "val"]}`` keeps the rows whose
    ``split`` is train or val. With ``image_roots`` (a study passes its ``data.image_roots``), every
    image path must stay under the manifest's folder or one of those folders: an absolute path or
    ``../`` elsewhere is refused. The check is on the path as written; symbolic links are followed.
    ``label_col=None`` reads a cohort without labels (to predict): ``target`` is then NaN.
    """
    path = Path(path)
    df = _read_table(path)
    problems: list[str] = _duplicate_columns(path)
    df.columns = [c.strip() for c in df.columns]
    source = (len(df), df[PATIENT_ID].str.strip().nunique() if PATIENT_ID in df.columns else 0)
    df = _apply_filter(df, keep or {}, problems)
    named = [PATIENT_ID, IMAGE] + ([label_col] if label_col else [])
    required = [*named, *extra_required] + ([SPLIT] if require_split else [])
    missing = [c for c in dict.fromkeys(required) if c not in df.columns]
    if missing:
        problems.append(f"missing column(s): {', '.join(missing)} (columns present: {', '.join(df.columns)})")
        raise ValidationError(problems, f"manifest {path}")
    if df.empty:
        raise ValidationError([f"{path} has no rows"], f"manifest {path}")
    for col in named:
        df[col] = df[col].str.strip()
    rows = df.index + 2  # line numbers as a spreadsheet shows them (header is line 1)
    problems += _id_problems(df, rows, named)
    label_problems, pos = _label_problems(df, label_col, positive) if label_col else ([], None)
    problems += label_problems
    problems += _split_problems(df, rows, require_split)
    problems += _path_problems(df, rows, path.parent, image_roots, check_files)
    if problems:
        raise ValidationError(problems, f"manifest {path}")

    df[TARGET] = (df[label_col] == pos).astype(int) if label_col else float("nan")
    df[IMAGE_ID] = df[PATIENT_ID] + "#" + (df.groupby(PATIENT_ID).cumcount() + 1).astype(str)
    contract = {PATIENT_ID, IMAGE, label_col, SPLIT, STUDY_ID, SERIES_ID, IMAGE_ID, "path", TARGET}
    extra = tuple(c for c in df.columns if c not in contract)
    return Cohort(
        table=df,
        label_col=label_col,
        positive=pos,
        extra_columns=extra,
        manifest_path=path.resolve(),
        source_counts=(int(source[0]), int(source[1])),
    )


def _apply_filter(df: pd.DataFrame, keep: Mapping[str, Sequence[str]], problems: list[str]) -> pd.DataFrame:
    """The rows whose ``column`` holds one of the listed values (case and spaces ignored)."""
    for column, values in keep.items():
        if column not in df.columns:
            problems.append(f"filter: column {column!r} is not in the manifest")
            continue
        wanted = {str(v).strip().lower() for v in values}
        df = df[df[column].str.strip().str.lower().isin(wanted)].reset_index(drop=True)
    return df


def _read_table(path: Path) -> pd.DataFrame:
    """The manifest as text columns; every way it cannot be read is a listed problem."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise ValidationError([f"manifest not found: {path}"], "manifest") from None
    except UnicodeDecodeError as exc:
        raise ValidationError(
            [f"{path.name} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): save it as UTF-8"],
            "manifest",
        ) from None
    except OSError as exc:  # a name over the file system's limit, a folder, no permission
        raise ValidationError(
            [f"manifest {path.name[:80]}: cannot be read ({exc.strerror or exc})"], "manifest"
        ) from None
    # EmptyDataError and ParserError are ValueErrors: caught before the NUL-byte case below
    except pd.errors.EmptyDataError:
        raise ValidationError(
            [f"{path} is empty: a manifest needs a header row and one row per image"], "manifest"
        ) from None
    except pd.errors.ParserError as exc:
        raise ValidationError([f"{path} is not a well-formed CSV{_parser_where(exc)}"], "manifest") from None
    except ValueError as exc:  # a NUL byte in the path
        raise ValidationError([f"manifest path is not valid: {exc}"], "manifest") from None


def _parser_where(exc: Exception) -> str:
    """Where pandas' parser stopped, e.g. ``: line 7 has 4 fields where 3 were expected`` (or nothing)."""
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if found:
        expected, line, saw = found.groups()
        return f": line {line} has {saw} fields where {expected} were expected"
    found = re.search(r"starting at row (\d+)", str(exc))  # rows count from the header, 0
    if found:
        return f": a quoted value starting on line {int(found.group(1)) + 1} is never closed"
    found = re.search(r"line (\d+)", str(exc))
    return f": malformed at line {found.group(1)}" if found else f": {str(exc).strip()[:200]}"


def _id_problems(df: pd.DataFrame, rows: pd.Index, columns: list[str]) -> list[str]:
    """Empty values and patient ids that are not plain names (spreadsheet formulas included)."""
    problems: list[str] = []
    empty = [f"line {r}: {col} is empty" for col in columns for r in rows[df[col] == ""]]
    problems += _listed("empty value", empty)
    bad_ids = [
        f"line {r}: {pid!r}"
        for r, pid in zip(rows, df[PATIENT_ID], strict=False)
        if pid.startswith(_FORMULA_START) or not re.fullmatch(r"[\w.\-^ ]{1,128}", pid)
    ]
    problems += _listed(
        "patient_id must be 1-128 letters, digits, '_', '-', '.', and must not start with = + - @", bad_ids
    )
    return problems


def _label_problems(df: pd.DataFrame, label_col: str, positive: Any) -> tuple[list[str], Any]:
    """One label per patient, exactly two classes, the positive class among them; (problems, positive)."""
    problems: list[str] = []
    labelled = df[df[label_col] != ""]
    labels_per_patient = labelled.groupby(PATIENT_ID)[label_col].nunique()
    conflicting = labels_per_patient[labels_per_patient > 1].index.tolist()
    problems += _listed(
        "patient with more than one label",
        [f"{p} has labels {sorted(set(labelled.loc[labelled[PATIENT_ID] == p, label_col]))}" for p in conflicting],
    )

    classes = sorted(set(labelled[label_col]))
    pos = _coerce_positive(labelled[label_col], positive)
    if classes and pos not in classes:
        problems.append(f"task.positive {positive!r} is not a value of column {label_col!r} (values: {classes})")
    if len(classes) > 2:
        problems.append(
            f"column {label_col!r} has {len(classes)} values {classes[:10]}: a binary task needs exactly 2 "
            "(map the other classes to one label or filter the manifest)"
        )
    elif len(classes) == 1:
        problems.append(f"column {label_col!r} has a single value {classes}: both classes are needed")
    return problems, pos


def _split_problems(df: pd.DataFrame, rows: pd.Index, require_split: bool) -> list[str]:
    """Split values (normalised in place), and for a holdout study one split per patient, each present."""
    problems: list[str] = []
    if SPLIT in df.columns:
        df[SPLIT] = df[SPLIT].str.strip().str.lower()
        bad_split = [
            f"line {r}: {v!r}" for r, v in zip(rows, df[SPLIT], strict=False) if v not in SPLIT_VALUES and v != ""
        ]
        problems += _listed(f"split must be one of {', '.join(SPLIT_VALUES)}", bad_split)
        if require_split:
            problems += _listed("split is empty", [f"line {r}" for r in rows[df[SPLIT] == ""]])
            splits_per_patient = df[df[SPLIT] != ""].groupby(PATIENT_ID)[SPLIT].nunique()
            leaked = splits_per_patient[splits_per_patient > 1].index.tolist()
            problems += _listed("patient in more than one split (leakage)", leaked)
            present = set(df[SPLIT])
            problems += [f"split {s!r} has no rows" for s in SPLIT_VALUES if s not in present]
    return problems


def _path_problems(
    df: pd.DataFrame, rows: pd.Index, base: Path, image_roots: Sequence[Path | str] | None, check_files: bool
) -> list[str]:
    """Image paths: holdable, inside the allowed folders, listed once, present. Adds ``path``."""
    problems: list[str] = []
    unusable = [f"line {r}: {img!r}" for r, img in zip(rows, df[IMAGE], strict=False) if _unusable_path(img)]
    problems += _listed("image path with a NUL byte or a name over 255 bytes", unusable)
    df["path"] = [str((base / p).resolve()) if p and not _unusable_path(p) else "" for p in df[IMAGE]]
    if image_roots is not None:
        allowed = [base.resolve(), *(Path(r).resolve() for r in image_roots)]
        outside = [
            f"line {r}: {img}"
            for r, img in zip(rows, df[IMAGE], strict=False)
            if img and not _unusable_path(img) and not _under(base.resolve() / img, allowed)
        ]
        problems += _listed(
            "image outside the manifest's folder (list its folder in data.image_roots to allow it)", outside
        )
    duplicated = df[df.duplicated("path", keep="first") & (df["path"] != "")]
    problems += _listed(
        "image listed twice",
        [f"line {r}: {img}" for r, img in zip(duplicated.index + 2, duplicated[IMAGE], strict=False)],
    )
    if check_files:
        missing_files = [
            f"line {r}: {img}"
            for r, img, p in zip(rows, df[IMAGE], df["path"], strict=False)
            if img and p and not Path(p).exists()
        ]
        problems += _listed("image not found (paths are relative to the manifest's folder)", missing_files)
    return problems
