"""Per-image predictions -> per-patient table (pandas only)."""

from __future__ import annotations

import pandas as pd

from pipeline.options import AGGREGATES
from pipeline.schema import FOLD, IMAGE_ID, N_IMAGES, PATIENT_ID, SCORE


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
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    grouped = predictions.groupby(PATIENT_ID, sort=False)
    out = grouped.agg(
        label=(label_col, "first"),
        score=(SCORE, aggregate),
        fold=(FOLD, "first"),
        n_images=(IMAGE_ID, "size"),
    ).reset_index()
    out = out.rename(columns={"label": label_col, "score": SCORE, "fold": FOLD, "n_images": N_IMAGES})
    if patients is not None:
        extra = [c for c in patients.columns if c not in out.columns]
        out = out.merge(patients[[PATIENT_ID, *extra]], on=PATIENT_ID, how="left")
    return out
