"""Join labels from a CSV by patient or by study (``cohortnet scan --labels F --label-col C``).

The labels CSV holds the data controller's own keys: ``patient_id`` (PatientID as in the DICOM
header, a NIfTI file's stem, or an already pseudonymised id) or ``study_id`` (StudyInstanceUID,
AccessionNumber or StudyID, or a pseudonym). When both columns exist, the study wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.schema import PATIENT_ID, STUDY_ID


@dataclass
class LabelTable:
    by: str  # PATIENT_ID or STUDY_ID
    labels: dict[str, str]
    used: set[str] = field(default_factory=set)

    def lookup(self, keys: Iterable[str]) -> str:
        """The label of the first key found (raw values first, then pseudonyms), else ``""``."""
        for k in keys:
            if k and k in self.labels:
                self.used.add(k)
                return self.labels[k]
        return ""

    @property
    def unmatched(self) -> int:
        return len(set(self.labels) - self.used)


def read_labels(path: Path, label_col: str) -> tuple[LabelTable | None, list[str]]:
    """Parse the labels CSV; returns the table or the list of every problem found."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        return None, [f"labels file cannot be read as CSV ({type(exc).__name__})"]
    problems = []
    if label_col not in df.columns:
        problems.append(f"labels file has no column {label_col!r} (columns: {', '.join(map(str, df.columns))})")
    by = STUDY_ID if STUDY_ID in df.columns else PATIENT_ID if PATIENT_ID in df.columns else ""
    if not by:
        problems.append(f"labels file needs a {PATIENT_ID!r} or {STUDY_ID!r} column")
    if problems:
        return None, problems
    df = df[df[by].str.strip() != ""]
    conflicts = df.groupby(by)[label_col].nunique()
    n_conflicts = int((conflicts > 1).sum())
    if n_conflicts:
        problems.append(f"{n_conflicts} {by} value(s) have conflicting labels in the labels file")
        return None, problems
    labels = dict(zip(df[by].str.strip(), df[label_col].str.strip(), strict=True))
    return LabelTable(by, labels), []
