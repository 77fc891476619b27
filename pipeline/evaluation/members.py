"""The spread of a study's members (repeats of the splits and training seeds) and the comparison of
their ensemble with a single member (``members_summary``).

Each member is evaluated on its own: its test rows per patient, with its threshold locked on its own
validation rows by the study's rule. The spread is the mean, SD (n - 1), minimum and maximum of the
members' AUC and accuracy at their locked thresholds. With an ensemble, the averaged scores are
compared with the first member's on the same patients by a paired test (DeLong, or the bootstrap
when the interval method is one).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation.predictions import _comparison, evaluate_predictions
from pipeline.evaluation.spec import EvaluationOptions, ScoreColumns
from pipeline.evaluation.table import aggregate_by_patient, binary_target, resolve_positive

_FIGURES = ("auc", "auc_ci_low", "auc_ci_high", "accuracy", "sensitivity", "specificity", "threshold")


def _spread(values: list[Any]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "sd": None, "min": None, "max": None}
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def members_summary(
    rows: pd.DataFrame,
    columns: ScoreColumns,
    options: EvaluationOptions,
    *,
    member_cols: tuple[str, str],
    role_col: str,
    ensemble: pd.DataFrame | None = None,
    single_col: str | None = None,
) -> dict[str, Any]:
    """``rows``: every member's test and validation rows (``role_col`` test or val, ``member_cols``
    naming the member). ``ensemble``: the study's combined test rows, with ``single_col`` holding
    the first member's score, for the paired comparison."""
    # the fold stays: a patient who validates several folds is one validation unit per fold (each
    # fold's own model), as in the study's own threshold
    plain = dataclasses.replace(columns, compare=None, subgroups=())
    quiet = dataclasses.replace(options, calibration=False)
    per_member = []
    for (repeat, seed), part in rows.groupby(list(member_cols), sort=False):
        test, val = part[part[role_col] == "test"], part[part[role_col] == "val"]
        m = evaluate_predictions(test, plain, quiet, threshold_df=val if len(val) else None)
        per_member.append(
            {"repeat": int(str(repeat)), "seed": int(str(seed)), "n": m.get("n"), **{k: m.get(k) for k in _FIGURES}}
        )
    out: dict[str, Any] = {
        "n_members": len(per_member),
        "repeats": len({m["repeat"] for m in per_member}),
        "seeds": sorted({m["seed"] for m in per_member}),
        "per_member": per_member,
        "auc": _spread([m["auc"] for m in per_member]),
        "accuracy": _spread([m["accuracy"] for m in per_member]),
    }
    if ensemble is not None and single_col is not None and single_col in ensemble.columns:
        out["comparison"] = _ensemble_comparison(ensemble, plain, options, single_col)
    return out


def _ensemble_comparison(
    ensemble: pd.DataFrame, columns: ScoreColumns, options: EvaluationOptions, single_col: str
) -> dict[str, Any]:
    """Averaged scores against the first member's, per patient, paired."""
    score = columns.scores[0]
    frame = ensemble.assign(**{c: pd.to_numeric(ensemble[c]) for c in (score, single_col)})
    unit = (
        aggregate_by_patient(frame, columns.group, [score, single_col], options.aggregate) if columns.group else frame
    )
    pos = resolve_positive(unit[columns.label].astype(str), columns.positive)[0]
    assert pos is not None  # the study's labels were validated with its predictions
    y = binary_target(unit[columns.label].astype(str), pos)
    s, s2 = unit[score].to_numpy(np.float64), unit[single_col].to_numpy(np.float64)
    return {"score_col": score, "compare_col": single_col, **_comparison(y, s, s2, options.interval)}
