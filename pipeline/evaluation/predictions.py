"""A table of scores -> the full content of metrics.json (``evaluate_predictions``).

Layout (binary): the top level holds the primary figures (per patient when ``group_col`` is
given, else per row): ``auc``, ``auc_ci_low``, ``auc_ci_high``, ``auc_se``, ``ci_method``,
``n``, ``n_positive``, the threshold metrics at the locked threshold, and ``threshold_source``.
Sections: ``image_level`` (with group_col), ``comparison`` (with compare_col), ``calibration``,
``calibration_recalibrated``, ``decision_curve``, ``subgroups``, ``folds``, ``warnings``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ValidationError
from pipeline.evaluation.calibration import calibration_summary, fit_recalibration, is_probability
from pipeline.evaluation.compare import bootstrap_paired_test, delong_paired_test
from pipeline.evaluation.decision import net_benefit
from pipeline.evaluation.multiclass import multiclass_summary
from pipeline.evaluation.spec import EvaluationOptions, Interval, ScoreColumns
from pipeline.evaluation.subgroups import Summarise, fold_summaries, make_summariser, subgroup_summaries
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


def _comparison(y: np.ndarray, s: np.ndarray, s2: np.ndarray, interval: Interval) -> dict[str, Any]:
    """Paired test of ``s`` against ``s2`` on the same cases: DeLong, or bootstrap if the CI method is."""
    if interval.ci_method.startswith("bootstrap"):
        return bootstrap_paired_test(
            y, s, s2, n_bootstrap=interval.n_bootstrap, seed=interval.seed, level=interval.level
        )
    return delong_paired_test(y, s, s2, level=interval.level)


def _validated(df: pd.DataFrame, cols: ScoreColumns, what: str) -> pd.DataFrame:
    """A copy of ``df`` with numeric score columns; ValidationError listing every problem."""
    problems = validate_score_table(df, cols)
    if problems:
        raise ValidationError(problems, what)
    out = df.copy()
    for c in (*cols.scores, cols.compare):
        if c is not None:
            out[c] = pd.to_numeric(out[c])
    return out


def _per_unit(rows: pd.DataFrame, cols: ScoreColumns, aggregate: str) -> pd.DataFrame:
    """One row per patient when ``cols.group`` is set (scores combined by ``aggregate``), else ``rows``."""
    if cols.group is None:
        return rows.reset_index(drop=True)
    numeric = [c for c in (*cols.scores, cols.compare) if c is not None]
    return aggregate_by_patient(rows, cols.group, numeric, aggregate)


def evaluate_predictions(
    df: pd.DataFrame,
    columns: ScoreColumns,
    options: EvaluationOptions = EvaluationOptions(),
    *,
    threshold_df: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Everything metrics.json holds for a table of scores (one row per image or per case).

    With ``columns.group`` (patient ids) the primary figures are per patient (scores combined by
    ``options.aggregate``) and ``image_level`` gives the image-level AUC with a cluster interval.
    The operating point is chosen by ``options.threshold_rule`` on ``threshold_df`` (validation
    rows, same columns) and locked before these data are looked at: ``threshold_source`` is
    "validation"; "fixed" for a numeric rule; "same_data" (optimistic, with a warning) when no
    validation table is given. Several score columns mean a multi-class task.
    Raises pipeline.errors.ValidationError listing every problem in the tables.
    """
    rows = _validated(df, columns, "score table")
    if len(columns.scores) > 1:
        return _evaluate_multiclass(rows, columns, options)
    unit = _per_unit(rows, columns, options.aggregate)
    pos = resolve_positive(unit[columns.label], columns.positive)[0]
    assert pos is not None  # validated above
    y, s = binary_target(unit[columns.label], pos), unit[columns.scores[0]].to_numpy(np.float64)
    vcols = columns.for_validation(pos)
    vrows = None if threshold_df is None else _validated(threshold_df, vcols, "validation table")
    val = _validation_arrays(vrows, vcols, columns.fold, options.aggregate)
    threshold, source, warnings = _locked_threshold(y, s, val, options.threshold_rule)
    metrics = _binary_header(columns, pos, len(unit), len(rows), options.aggregate)
    metrics.update(binary_summary(y, s, threshold=threshold, interval=options.interval))
    if is_probability(s):  # the conventional cut-off, beside the locked one, for papers that report it
        metrics["at_0.5"] = threshold_metrics(y, s, 0.5)
    metrics.update({"threshold_rule": options.threshold_rule, "threshold_source": source})
    if val is not None:
        metrics["threshold_validation_n"] = len(val[0])
    if columns.group:
        metrics["image_level"] = _image_level(rows, columns, pos, threshold, options.interval)
    if columns.compare:
        comp = _comparison(y, s, unit[columns.compare].to_numpy(np.float64), options.interval)
        metrics["comparison"] = {"score_col": columns.score, "compare_col": columns.compare, **comp}
    if options.calibration:
        metrics.update(_calibration_sections(y, s, val, options.recalibration))
    metrics.update(_breakdowns(unit, columns, y, s, make_summariser(threshold, options.interval)))
    if "folds" in metrics:
        own = _fold_own_thresholds(unit, columns, y, s, vrows, vcols, options)
        if own is not None:
            metrics["folds"]["own_thresholds"] = own
    metrics["warnings"] = warnings + metrics.pop("warnings") + _nested_warnings(metrics)
    return metrics


def _binary_header(cols: ScoreColumns, pos: Any, n_units: int, n_rows: int, aggregate: str) -> dict[str, Any]:
    head: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "task": "binary",
        "label_col": cols.label,
        "score_col": cols.score,
        "positive": pos,
        "unit": "patient" if cols.group else "row",
    }
    if cols.group:
        head.update({"n_patients": n_units, "n_images": n_rows, "aggregate": aggregate})
    return head


def _image_level(
    rows: pd.DataFrame, cols: ScoreColumns, pos: Any, threshold: float, interval: Interval
) -> dict[str, Any] | None:
    """Image-level figures with a patient-cluster interval (none when each patient has one image)."""
    assert cols.group is not None
    if rows[cols.group].nunique() == len(rows):
        return None
    y_img = binary_target(rows[cols.label], pos)
    s_img = rows[cols.scores[0]].to_numpy(np.float64)
    groups = rows[cols.group].to_numpy()
    return binary_summary(y_img, s_img, groups=groups, threshold=threshold, interval=interval)


def _breakdowns(
    unit: pd.DataFrame, cols: ScoreColumns, y: np.ndarray, s: np.ndarray, summarise: Summarise
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cols.subgroups:
        out["subgroups"] = subgroup_summaries(unit, y, s, list(cols.subgroups), summarise)
    if cols.fold:
        out["folds"] = fold_summaries(unit[cols.fold], y, s, summarise)
    return out


def _fold_own_thresholds(
    unit: pd.DataFrame,
    cols: ScoreColumns,
    y: np.ndarray,
    s: np.ndarray,
    vrows: pd.DataFrame | None,
    vcols: ScoreColumns,
    options: EvaluationOptions,
) -> dict[str, Any] | None:
    """Each fold's threshold locked by the rule on that fold's own validation units and applied to
    that fold's test units, with the pooled confusion matrix: the operating point in which no
    patient's label enters the threshold applied to it through another fold's model (the study's
    one threshold pools every fold's validation rows). None when the folds' validation rows are
    not the test folds' own (a single fold, repeats averaged) or the rule is a fixed number."""
    fold = cols.fold
    if fold is None or vrows is None or fold not in vrows.columns:
        return None
    if parse_rule(options.threshold_rule)[0] == "fixed":
        return None
    test_folds, val_folds = unit[fold].astype(str).to_numpy(), vrows[fold].astype(str)
    if len(set(test_folds)) < 2 or set(test_folds) != set(val_folds):
        return None
    margin, per_fold = np.empty_like(s), []
    for f in sorted(set(test_folds), key=lambda v: (len(v), v)):
        part = _per_unit(vrows[(val_folds == f).to_numpy()], vcols, options.aggregate)
        vy = binary_target(part[vcols.label], vcols.positive)
        if vy.min() == vy.max():
            return {"skipped": f"fold {f}: its validation patients are all of one class"}
        t = choose_threshold(vy, part[vcols.scores[0]].to_numpy(np.float64), options.threshold_rule)
        mask = test_folds == f
        margin[mask] = s[mask] - t  # s >= t exactly when s - t >= 0 (finite IEEE floats)
        per_fold.append({"fold": f, "threshold": float(t), "n_validation": len(part)})
    out = threshold_metrics(y, margin, 0.0, level=options.interval.level)
    out.pop("threshold")
    return {"rule": options.threshold_rule, "per_fold": per_fold, **out}


def _validation_arrays(
    vrows: pd.DataFrame | None, vcols: ScoreColumns, fold: str | None, aggregate: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(y, s) of the (validated) validation rows, aggregated like the evaluated table."""
    if vrows is None:
        return None
    group = vcols.group
    if fold is not None and group is not None and fold in vrows.columns:
        # cross-validation: a patient may validate several folds; each fold's scores come from that
        # fold's own model, so a validation unit is (fold, patient), never a mix of models
        vrows = vrows.assign(**{group: vrows[fold].astype(str) + "/" + vrows[group].astype(str)})
    vunit = _per_unit(vrows, vcols, aggregate)
    return binary_target(vunit[vcols.label], vcols.positive), vunit[vcols.scores[0]].to_numpy(np.float64)


def _nested_warnings(metrics: dict[str, Any]) -> list[str]:
    """Warnings of subgroups and folds, collected so the top level lists every one."""
    found: list[str] = []
    for col in metrics.get("subgroups", {}).values():
        for g in col["groups"]:
            found += g.get("warnings", [])
    for f in metrics.get("folds", {}).get("per_fold", []):
        found += f.get("warnings", [])
    return found


def _evaluate_multiclass(rows: pd.DataFrame, cols: ScoreColumns, options: EvaluationOptions) -> dict[str, Any]:
    unit = _per_unit(rows, cols, options.aggregate)
    labels = np.asarray([norm_label(v) for v in unit[cols.label]], dtype=object)
    names = [norm_label(c) for c in cols.classes] if cols.classes is not None else sorted(set(labels))
    if len(names) != len(cols.scores) or set(names) != set(labels):
        raise ValidationError(
            [f"classes {names} do not match the label values {sorted(set(labels))} one-to-one"], "score table"
        )
    mc = multiclass_summary(
        labels,
        unit[cols.scores].to_numpy(np.float64),
        names,
        n_bootstrap=options.interval.n_bootstrap,
        seed=options.interval.seed,
        level=options.interval.level,
        ci_method=options.interval.ci_method,  # delong_wald: per-class Wald intervals, as for a binary task
    )
    for row, col in zip(mc["per_class"], cols.scores, strict=True):
        row["score_col"] = col
    warnings = []
    if cols.subgroups or cols.fold or cols.compare:
        warnings.append("subgroups, folds and comparisons are computed for binary tasks only; ignored here")
    return {
        "schema_version": SCHEMA_VERSION,
        "task": "multiclass",
        "label_col": cols.label,
        "score_col": cols.scores,
        "unit": "patient" if cols.group else "row",
        "n": len(unit),
        "n_positive": None,
        "n_per_class": {r["class"]: r["n"] for r in mc["per_class"]},
        "auc": mc["macro_auc"],
        "auc_ci_low": mc["macro_auc_ci_low"],
        "auc_ci_high": mc["macro_auc_ci_high"],
        "ci_method": mc["macro_ci_method"],
        "ci_level": options.interval.level,
        "multiclass": mc,
        "warnings": warnings,
    }
