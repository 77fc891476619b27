"""Fixtures for the evaluation tests: the aSAH reference data and small simulated score tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def asah() -> pd.DataFrame:
    """pROC's aSAH data (113 patients; see data/README.md), with ``y`` = 1 for a Poor outcome."""
    df = pd.read_csv(DATA / "aSAH.csv")
    df["y"] = (df["outcome"] == "Poor").astype(int)
    return df


def binormal(n_pos: int, n_neg: int, mu: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y (n,) with n_pos ones first, scores N(mu, 1) for positives and N(0, 1) for negatives."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    return y, np.r_[rng.normal(mu, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]


def probability_table(n_patients: int, images_per_patient: int, seed: int) -> pd.DataFrame:
    """Image-level table: patient_id, label (0/1), score (a probability), site, fold, split."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_patients)
    latent = rng.normal(1.2 * label, 1.0)
    rows = []
    for p in range(n_patients):
        for _ in range(images_per_patient):
            logit = latent[p] + rng.normal(0.0, 0.5) - 0.6
            rows.append(
                {
                    "patient_id": f"P{p:03d}",
                    "label": int(label[p]),
                    "score": float(1.0 / (1.0 + np.exp(-logit))),
                    "other": float(1.0 / (1.0 + np.exp(-(0.3 * latent[p] + rng.normal())))),
                    "site": "A" if p % 3 else "B",
                    "fold": p % 4,
                    "split": "val" if p % 5 == 0 else "test",
                }
            )
    return pd.DataFrame(rows)
