"""A table of scores -> the full content of metrics.json (``evaluate_predictions``).

Layout (binary): the top level holds the primary figures (per patient when ``group_col`` is
given, else per row): ``auc``, ``auc_ci_low``, ``auc_ci_high``, ``auc_se``, ``ci_method``,
``n``, ``n_positive``, the threshold metrics at the locked threshold, and ``threshold_source``.
Sections: ``image_level`` (with group_col), ``comparison`` (with compare_col), ``calibration``,
``calibration_recalibrated``, ``decision_curve``, ``subgroups``, ``folds``, ``warnings``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ValidationError
from pipeline.evaluation.calibration import calibration_summary, fit_recalibration, is_probability
from pipeline.evaluation.compare import bootstrap_paired_test, delong_paired_test
from pipeline.evaluation.decision import net_benefit
from pipeline.evaluation.multiclass import multiclass_summary
from pipeline.evaluation.subgroups import fold_summaries, make_summariser, subgroup_summaries
from pipeline.evaluation.summary import binary_summary
from pipeline.evaluation.table import (
    aggregate_by_patient,
    binary_target,
    norm_label,
    resolve_positive,
    validate_score_table,
)
from pipeline.evaluation.thresholds import choose_threshold, parse_rule, threshold_metrics

SCHEMA_VERSION = 1
NOT_PROBABILITIES = "scores are not probabilities in [0, 1]"


def _locked_threshold(
    y: np.ndarray, s: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, rule: str
) -> tuple[float, str, list[str]]:
    """(threshold, source, warnings): chosen on validation data when given, else on the data itself."""
    if parse_rule(rule)[0] == "fixed":
        return choose_threshold(y, s, rule), "fixed", []
    if val is not None:
        return choose_threshold(val[0], val[1], rule), "validation", []
    warning = (
        f"no validation data: the {rule!r} threshold was chosen on the evaluated data themselves, "
        "so the metrics at that threshold are optimistic"
    )
    return choose_threshold(y, s, rule), "same_data", [warning]


def _calibration_sections(
    y: np.ndarray, s: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, recalibration: str | None
) -> dict[str, Any]:
    if not is_probability(s):
        skipped = {"skipped": NOT_PROBABILITIES}
        return {"calibration": skipped, "decision_curve": skipped}
    out = {"calibration": calibration_summary(y, s), "decision_curve": net_benefit(y, s)}
    if recalibration is not None:
        if val is None or not is_probability(val[1]):
            out["calibration_recalibrated"] = {"skipped": "recalibration needs validation probabilities"}
        else:
            recal = fit_recalibration(val[0], val[1], recalibration)
            out["calibration_recalibrated"] = {"method": recalibration, **calibration_summary(y, recal(s))}
    return out


def _comparison(y: np.ndarray, s: np.ndarray, s2: np.ndarray, opts: dict[str, Any]) -> dict[str, Any]:
    """Paired test of ``s`` against ``s2`` on the same cases: DeLong, or bootstrap if the CI method is."""
    if opts["ci_method"].startswith("bootstrap"):
        return bootstrap_paired_test(y, s, s2, n_bootstrap=opts["n_bootstrap"], seed=opts["seed"], level=opts["level"])
    return delong_paired_test(y, s, s2, level=opts["level"])


def _validated(df: pd.DataFrame, cols: dict[str, Any], score_cols: Sequence[str], what: str) -> pd.DataFrame:
    """A copy of ``df`` with numeric score columns; ValidationError listing every problem."""
    problems = validate_score_table(df, score_cols=score_cols, **cols)
    if problems:
        raise ValidationError(problems, what)
    out = df.copy()
    for c in (*score_cols, cols["compare_col"]):
        if c is not None:
            out[c] = pd.to_numeric(out[c])
    return out


def _per_unit(rows: pd.DataFrame, cols: dict[str, Any], score_cols: Sequence[str], aggregate: str) -> pd.DataFrame:
    """One row per patient when ``group_col`` is set (scores combined by ``aggregate``), else ``rows``."""
    if cols["group_col"] is None:
        return rows.reset_index(drop=True)
    numeric = [c for c in (*score_cols, cols["compare_col"]) if c is not None]
    return aggregate_by_patient(rows, cols["group_col"], numeric, aggregate)


def evaluate_predictions(
    df: pd.DataFrame,
    *,
    label_col: str,
    score_col: str | Sequence[str],
    positive: Any = None,
    compare_col: str | None = None,
    group_col: str | None = None,
    subgroup_cols: Sequence[str] = (),
    fold_col: str | None = None,
    threshold_df: pd.DataFrame | None = None,
    threshold_rule: str = "youden",
    ci_method: str = "delong",
    n_bootstrap: int = 2000,
    seed: int = 0,
    calibration: bool = True,
    aggregate: str = "mean",
    recalibration: str | None = None,
    classes: Sequence[Any] | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """Everything metrics.json holds for a table of scores (one row per image or per case).

    With ``group_col`` (patient ids) the primary figures are per patient (scores combined by
    ``aggregate``) and ``image_level`` gives the image-level AUC with a cluster interval.
    The operating point is chosen by ``threshold_rule`` on ``threshold_df`` (validation rows,
    same columns) and locked before these data are looked at: ``threshold_source`` is
    "validation"; "fixed" for a numeric rule; "same_data" (optimistic, with a warning) when no
    validation table is given. Several ``score_col`` names mean a multi-class task, one column per
    class in the order of ``classes`` (default: the sorted label values).
    Raises pipeline.errors.ValidationError listing every problem in the tables.
    """
    score_cols = [score_col] if isinstance(score_col, str) else list(score_col)
    cols = {
        "label_col": label_col,
        "positive": positive,
        "compare_col": compare_col,
        "group_col": group_col,
        "subgroup_cols": tuple(subgroup_cols),
        "fold_col": fold_col,
    }
    rows = _validated(df, cols, score_cols, "score table")
    if len(score_cols) > 1:
        return _evaluate_multiclass(
            rows,
            cols,
            score_cols,
            classes=classes,
            aggregate=aggregate,
            n_bootstrap=n_bootstrap,
            seed=seed,
            level=level,
        )
    score = score_cols[0]
    unit = _per_unit(rows, cols, score_cols, aggregate)
    pos = resolve_positive(unit[label_col], positive)[0]
    assert pos is not None  # validated above
    y, s = binary_target(unit[label_col], pos), unit[score].to_numpy(np.float64)
    val = _validation_arrays(threshold_df, cols, score, pos, aggregate)
    threshold, source, warnings = _locked_threshold(y, s, val, threshold_rule)
    opts: dict[str, Any] = {"ci_method": ci_method, "n_bootstrap": n_bootstrap, "seed": seed, "level": level}
    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "task": "binary",
        "label_col": label_col,
        "score_col": score,
        "positive": pos,
        "unit": "patient" if group_col else "row",
    }
    if group_col:
        metrics.update({"n_patients": len(unit), "n_images": len(rows), "aggregate": aggregate})
    metrics.update(binary_summary(y, s, threshold=threshold, **opts))
    if is_probability(s):  # the conventional cut-off, beside the locked one, for papers that report it
        metrics["at_0.5"] = threshold_metrics(y, s, 0.5)
    metrics.update({"threshold_rule": threshold_rule, "threshold_source": source})
    if val is not None:
        metrics["threshold_validation_n"] = len(val[0])
    if group_col:  # image-level figures with a patient-cluster interval (none when one image each)
        y_img = binary_target(rows[label_col], pos)
        s_img = rows[score].to_numpy(np.float64)
        metrics["image_level"] = (
            binary_summary(y_img, s_img, groups=rows[group_col].to_numpy(), threshold=threshold, **opts)
            if len(rows) != len(unit)
            else None
        )
    if compare_col:
        s2 = unit[compare_col].to_numpy(np.float64)
        comp = _comparison(y, s, s2, opts)
        metrics["comparison"] = {"score_col": score, "compare_col": compare_col, **comp}
    if calibration:
        metrics.update(_calibration_sections(y, s, val, recalibration))
    summarise = make_summariser(threshold=threshold, **opts)
    if subgroup_cols:
        metrics["subgroups"] = subgroup_summaries(unit, y, s, list(subgroup_cols), summarise)
    if fold_col:
        metrics["folds"] = fold_summaries(unit[fold_col], y, s, summarise)
    metrics["warnings"] = warnings + metrics.pop("warnings") + _nested_warnings(metrics)
    return metrics


def _validation_arrays(
    threshold_df: pd.DataFrame | None, cols: dict[str, Any], score_col: str, pos: str, aggregate: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(y, s) of the validation table, validated and aggregated like the evaluated table."""
    if threshold_df is None:
        return None
    vcols = {**cols, "positive": pos, "compare_col": None, "subgroup_cols": (), "fold_col": None}
    vrows = _validated(threshold_df, vcols, [score_col], "validation table")
    fold, group = cols["fold_col"], cols["group_col"]
    if fold is not None and group is not None and fold in vrows.columns:
        # cross-validation: a patient may validate several folds; each fold's scores come from that
        # fold's own model, so a validation unit is (fold, patient), never a mix of models
        vrows = vrows.assign(**{group: vrows[fold].astype(str) + "/" + vrows[group].astype(str)})
    vunit = _per_unit(vrows, vcols, [score_col], aggregate)
    return binary_target(vunit[cols["label_col"]], pos), vunit[score_col].to_numpy(np.float64)


def _nested_warnings(metrics: dict[str, Any]) -> list[str]:
    """Warnings of subgroups and folds, collected so the top level lists every one."""
    found: list[str] = []
    for col in metrics.get("subgroups", {}).values():
        for g in col["groups"]:
            found += g.get("warnings", [])
    for f in metrics.get("folds", {}).get("per_fold", []):
        found += f.get("warnings", [])
    return found


def _evaluate_multiclass(
    rows: pd.DataFrame,
    cols: dict[str, Any],
    score_cols: Sequence[str],
    *,
    classes: Sequence[Any] | None,
    aggregate: str,
    n_bootstrap: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    unit = _per_unit(rows, cols, score_cols, aggregate)
    labels = np.asarray([norm_label(v) for v in unit[cols["label_col"]]], dtype=object)
    names = [norm_label(c) for c in classes] if classes is not None else sorted(set(labels))
    if len(names) != len(score_cols) or set(names) != set(labels):
        raise ValidationError(
            [f"classes {names} do not match the label values {sorted(set(labels))} one-to-one"], "score table"
        )
    mc = multiclass_summary(
        labels,
        unit[list(score_cols)].to_numpy(np.float64),
        names,
        n_bootstrap=n_bootstrap,
        seed=seed,
        level=level,
    )
    for row, col in zip(mc["per_class"], score_cols, strict=True):
        row["score_col"] = col
    warnings = []
    if cols["subgroup_cols"] or cols["fold_col"] or cols["compare_col"]:
        warnings.append("subgroups, folds and comparisons are computed for binary tasks only; ignored here")
    return {
        "schema_version": SCHEMA_VERSION,
        "task": "multiclass",
        "label_col": cols["label_col"],
        "score_col": list(score_cols),
        "unit": "patient" if cols["group_col"] else "row",
        "n": len(unit),
        "n_positive": None,
        "n_per_class": {r["class"]: r["n"] for r in mc["per_class"]},
        "auc": mc["macro_auc"],
        "auc_ci_low": mc["macro_auc_ci_low"],
        "auc_ci_high": mc["macro_auc_ci_high"],
        "ci_method": mc["macro_ci_method"],
        "ci_level": level,
        "multiclass": mc,
        "warnings": warnings,
    }
