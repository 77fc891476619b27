"""Per-image predictions -> per-patient table (pandas only)."""

from __future__ import annotations

import pandas as pd

from pipeline.evaluation.table import aggregate_by_patient
from pipeline.schema import FOLD, N_IMAGES, PATIENT_ID, SCORE


def per_patient(
    predictions: pd.DataFrame,
    *,
    aggregate: str,
    label_col: str,
    patients: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per patient: patient_id, label, score (``aggregate`` of the patient's image scores),
    fold, n_images, then the manifest's extra columns from ``patients`` (one row per patient).

    ``predictions`` has one row per image with patient_id, image_id, fold, label and score.
    A patient's images are always in the same fold (splits are grouped by patient).
    """
    table = aggregate_by_patient(predictions[[PATIENT_ID, label_col, SCORE, FOLD]], PATIENT_ID, [SCORE], aggregate)
    out = table[[PATIENT_ID, label_col, SCORE, FOLD, N_IMAGES]]
    if patients is not None:
        extra = [c for c in patients.columns if c not in out.columns]
        out = out.merge(patients[[PATIENT_ID, *extra]], on=PATIENT_ID, how="left")
    return out
