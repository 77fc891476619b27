"""The run's figures and HTML report from its metrics and tables (``study.finalize_run`` computes
those; this module only draws and assembles). Reads the folds' records and histories and the
exclusions from the run folder; writes ``roc.csv``, the figures and ``report.html``."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import crossval
from pipeline.config import WorkflowConfig
from pipeline.evaluation import pr_table, roc_table
from pipeline.evaluation.table import binary_target
from pipeline.reporting import artifacts, cohort, figures
from pipeline.reporting.checklist import RunFacts, fill_checklist
from pipeline.reporting.explanations import load_explanations
from pipeline.reporting.html import ReportInputs, render_report
from pipeline.reporting.redact import (
    REDACTED_METRICS_FILE,
    REDACTED_REPORT_FILE,
    Redaction,
    RedactionError,
    sensitive_columns,
)
from pipeline.schema import (
    CALIBRATION_FIGURE_FILE,
    CHECKLIST_FILE,
    DATA_HASHES_FILE,
    ENVIRONMENT_FILE,
    EXCLUDED_FILE,
    FLOW_FIGURE_FILE,
    FLOW_FILE,
    FOLD,
    FOLD_DONE_FILE,
    GROUP,
    HISTORY_FILE,
    IMAGE_ID,
    PATIENT_ID,
    PATIENTS_FILE,
    PR_FILE,
    PROVENANCE_FILE,
    REPORT_FILE,
    ROC_FIGURE_FILE,
    ROC_FILE,
    SCORE,
    SPLITS_FILE,
    TABLE1_FILE,
)

EXTERNAL_ROLE = "external"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassColumn:
    """The label column and the value that is the positive class (as text)."""

    name: str
    positive: str

    def binary(self, table: pd.DataFrame) -> Any:
        return binary_target(table[self.name], self.positive)


def write_report(
    run_dir: Path,
    cfg: WorkflowConfig,
    metrics: dict[str, Any],
    per_patient: pd.DataFrame,
    split_summary: pd.DataFrame,
    label: ClassColumn,
    *,
    n_images: int,
) -> None:
    """ROC table, figures and the self-contained report of a finished run."""
    figs = _curve_figures(run_dir, per_patient, label, metrics, f"{cfg.study}: per-patient")
    artifacts.write_bytes(run_dir / ROC_FIGURE_FILE, figs.roc)
    if figs.calibration is not None:
        artifacts.write_bytes(run_dir / CALIBRATION_FIGURE_FILE, figs.calibration)
    histories, training = _fold_records(run_dir)
    excluded = _excluded(run_dir)
    text = study_text(cfg)
    sections = cohort_sections(run_dir, cfg, excluded)
    env_path = run_dir / ENVIRONMENT_FILE
    environment = json.loads(env_path.read_text()) if env_path.is_file() else {}
    explained = load_explanations(run_dir)
    record = explained["record"] if explained else None
    facts = RunFacts(cfg, metrics, environment, cohort=sections, explanations=record)
    checklist = fill_checklist(facts)
    inputs = ReportInputs(
        study=cfg.study,
        run_id=run_dir.name,
        scheme_text=text["scheme"],
        model_text=text["model"],
        metrics=metrics,
        per_patient=per_patient,
        split_summary=split_summary,
        excluded=excluded,
        fold_training=training,
        n_images=n_images,
        roc_png=figs.roc,
        calibration_png=figs.calibration,
        pr_png=figs.pr,
        curves_png=figures.training_curves_figure(histories) if histories else None,
        decision_png=figs.decision,
        cohort=sections,
        checklist=checklist,
        explanations=explained,
    )
    page, inputs = render_linked(run_dir, inputs)
    artifacts.write_text(run_dir / REPORT_FILE, page)
    write_redacted(run_dir, inputs, facts)


def write_redacted(run_dir: Path, inputs: ReportInputs, facts: RunFacts) -> None:
    """With tracking on, the copies that go to the MLflow store: ``report_redacted.html`` (no patient,
    image or path; the sensitive columns' values as labels) and ``metrics_redacted.json``, through one
    value map (``redact.Redaction``). A copy that would still show a value in clear, or whose build
    fails at all, is not written (logged as an error naming the columns, never a value: the run
    folder and its report stand, and tracking logs no copy). Without tracking, no stale copy is left."""
    targets = (run_dir / REDACTED_REPORT_FILE, run_dir / REDACTED_METRICS_FILE)
    for path in targets:
        path.unlink(missing_ok=True)  # a rebuild without tracking (or a refused copy) leaves no older one
    if not facts.cfg.tracking.mlflow:
        return

    def failed(what: str, exc: Exception) -> None:
        if isinstance(exc, RedactionError):  # its message names the columns, never a value
            log.error("%s", exc)
        else:  # any other message may quote a value (a KeyError's key): its type only
            columns = ", ".join(sensitive_columns(facts.cfg)) or "none"
            log.error(
                "%s is not written: building it failed (%s); its sensitive columns: %s",
                what,
                type(exc).__name__,
                columns,
            )

    try:
        redaction = redaction_of(run_dir, facts.cfg, inputs.metrics)
        shared = redacted_inputs(run_dir, inputs, facts, redaction)
    except Exception as exc:  # tracking never fails a study: no copy, the run folder stands
        failed(f"{REDACTED_REPORT_FILE} (nor {REDACTED_METRICS_FILE})", exc)
        return
    try:
        artifacts.write_text(targets[0], render_report(run_dir, shared, redact=True))  # which checks the page
    except Exception as exc:
        targets[0].unlink(missing_ok=True)
        failed(REDACTED_REPORT_FILE, exc)
    try:  # the JSON's text as read (non-ASCII as itself, not escaped) is what is checked
        redaction.refuse(json.dumps(shared.metrics, ensure_ascii=False, default=str), REDACTED_METRICS_FILE)
        artifacts.write_json(targets[1], shared.metrics)
    except Exception as exc:
        targets[1].unlink(missing_ok=True)
        failed(REDACTED_METRICS_FILE, exc)


def redaction_of(run_dir: Path, cfg: WorkflowConfig, metrics: dict[str, Any]) -> Redaction:
    """The value map of a run's copies for outside its folder: every value the run knows of in each
    sensitive column (``redact.sensitive_columns``): the filter's, ``patients.csv``'s, the held-out
    groups of ``splits.csv`` and the subgroups' of ``metrics``."""
    columns = sensitive_columns(cfg)
    values: dict[str, list[Any]] = {c: list(cfg.filter.get(c, ())) for c in columns}
    if (run_dir / PATIENTS_FILE).is_file():
        patients = pd.read_csv(run_dir / PATIENTS_FILE, dtype=str, keep_default_na=False)
        for c in columns:
            values[c] += patients[c].tolist() if c in patients.columns and c != PATIENT_ID else []
    if cfg.validation.group and (run_dir / SPLITS_FILE).is_file():
        splits = pd.read_csv(run_dir / SPLITS_FILE, dtype=str, keep_default_na=False)
        values[cfg.validation.group] += splits[GROUP].tolist() if GROUP in splits.columns else []
    for c in columns:
        values[c] += [g.get("value") for g in ((metrics.get("subgroups") or {}).get(c) or {}).get("groups") or []]
    return Redaction.of(values)


def render_linked(run_dir: Path, inputs: ReportInputs) -> tuple[str, ReportInputs]:
    """The report with the checklist pointing only at sections this report has (a run without
    explanations or subgroups has no such section): rendered once to see, then for good; and the
    inputs with that checklist (the redacted copy keeps every section's heading, so its links hold)."""
    page = render_report(run_dir, inputs)
    if inputs.checklist is None:
        return page, inputs
    present = set(re.findall(r'id="([^"]+)"', page))
    header, table = inputs.checklist
    table = table.assign(where=[w if w[1:] in present else "" for w in table["where"]])
    artifacts.write_csv(run_dir / CHECKLIST_FILE, table)
    inputs = dataclasses.replace(inputs, checklist=(header, table))
    return render_report(run_dir, inputs), inputs


def redacted_inputs(run_dir: Path, inputs: ReportInputs, facts: RunFacts, redaction: Redaction) -> ReportInputs:
    """The inputs of the copy that leaves the run folder (``render_report(..., redact=True)``), with
    ``redaction`` applied to what the sections are built from: the run folder's cohort records
    (patients.csv, splits.csv, flow.json: the flow diagram, drawn again, and Table 1), the metrics
    (subgroups, warnings), the folds' held-out groups and the texts; the checklist is filled again
    from them, keeping the links ``render_linked`` checked."""
    cfg = facts.cfg
    metrics = redaction.metrics(inputs.metrics)
    group = cfg.validation.group or ""
    training = {
        fold: {**t, "held_out": redaction.value(group, t["held_out"])} if "held_out" in t else dict(t)
        for fold, t in inputs.fold_training.items()
    }
    records = _cohort_records(run_dir, inputs.excluded) if inputs.cohort is not None else None
    sections = _sections(_redacted_records(records, cfg, redaction), cfg)[0] if records is not None else None
    checklist = inputs.checklist
    if checklist is not None:
        header, table = fill_checklist(dataclasses.replace(facts, cohort=sections, metrics=metrics))
        checklist = (header, table.assign(where=checklist[1]["where"].to_numpy()))
    return dataclasses.replace(
        inputs,
        study=redaction.text(inputs.study),
        scheme_text=redaction.text(inputs.scheme_text),
        model_text=redaction.text(inputs.model_text),
        metrics=metrics,
        fold_training=training,
        cohort=sections,
        checklist=checklist,
        redaction=redaction,
    )


@dataclass(frozen=True)
class _CohortRecords:
    """What the flow diagram and Table 1 are built from (``cohort_sections``)."""

    source: dict[str, Any] | None  # flow.json
    images: list[str]  # the eligible images' ids (data_hashes.csv)
    excluded: pd.DataFrame
    patients: pd.DataFrame
    splits: pd.DataFrame  # the first member's (crossval.primary_splits)


def _cohort_records(run_dir: Path, excluded: pd.DataFrame | None = None) -> _CohortRecords | None:
    needed = (SPLITS_FILE, PATIENTS_FILE, DATA_HASHES_FILE)
    if not all((run_dir / name).is_file() for name in needed):
        return None
    source = json.loads((run_dir / FLOW_FILE).read_text()) if (run_dir / FLOW_FILE).is_file() else None
    # with members (seeds, repeats) the flow and Table 1 show the first member's partitions
    splits = crossval.primary_splits(pd.read_csv(run_dir / SPLITS_FILE, dtype={PATIENT_ID: str}))
    return _CohortRecords(
        source=source,
        images=pd.read_csv(run_dir / DATA_HASHES_FILE, dtype=str)[IMAGE_ID].tolist(),
        excluded=_excluded(run_dir) if excluded is None else excluded,
        patients=pd.read_csv(run_dir / PATIENTS_FILE, dtype=str, keep_default_na=False),
        splits=splits,
    )


def _redacted_records(records: _CohortRecords, cfg: WorkflowConfig, redaction: Redaction) -> _CohortRecords:
    """``records`` with every value of a sensitive column as its label: the patients' cells, the
    held-out groups, the filter's rule (and any value in flow.json's texts, the manifest's name say)."""
    columns = [c for c in redaction.columns if c != PATIENT_ID]  # a filter on ids: the ids stay the keys
    splits = records.splits
    if cfg.validation.group and GROUP in splits.columns:
        splits = splits.assign(**{GROUP: splits[GROUP].map(lambda v: redaction.value(str(cfg.validation.group), v))})
    source = records.source
    if source is not None:
        source = cohort.redact_flow(redaction.json(source), redaction.keep(cfg.filter))
    patients = redaction.frame(records.patients, columns)
    return dataclasses.replace(records, source=source, patients=patients, splits=splits)


def _excluded(run_dir: Path) -> pd.DataFrame:
    path = run_dir / EXCLUDED_FILE
    if path.is_file():
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.DataFrame(columns=[IMAGE_ID, "reason", "message"])


def cohort_sections(run_dir: Path, cfg: WorkflowConfig, excluded: pd.DataFrame | None = None) -> dict[str, Any] | None:
    """The patient flow (``flow.svg``, embedded as PNG) and Table 1 (``table1.csv``) of a run
    folder (``excluded``: its excluded.csv, read when not given), or None for a folder from
    before ``patients.csv``."""
    records = _cohort_records(run_dir, excluded)
    if records is None:
        return None
    sections, svg = _sections(records, cfg)
    artifacts.write_bytes(run_dir / FLOW_FIGURE_FILE, svg)
    artifacts.write_csv(
        run_dir / TABLE1_FILE, cohort.table_one_frame(sections["table1_columns"], sections["table1_rows"])
    )
    return sections


def _sections(records: _CohortRecords, cfg: WorkflowConfig) -> tuple[dict[str, Any], bytes]:
    """(the cohort sections of the report, the flow diagram as SVG) from ``records``."""
    flow = cohort.flow_counts(records.source, records.images, records.excluded, records.patients, records.splits)
    png, svg = figures.flow_figure(flow)
    per_patient_images = cohort.usable_images(records.images, records.excluded)[1][PATIENT_ID].value_counts()
    partition = cohort.patient_partition(records.splits)
    partition = partition[partition.index.isin(per_patient_images.index)]
    columns, rows = cohort.table_one(records.patients, partition, cfg.report.covariates, per_patient_images)
    random_folds = cfg.validation.scheme in ("kfold", "nested")
    if random_folds:  # random folds differ by chance only: the differences are shown, not flagged
        rows = [{**r, "large": False} for r in rows]
    sections = {
        "flow": flow,
        "flow_png": png,
        "flow_problems": cohort.flow_problems(flow),
        "table1_columns": columns,
        "table1_rows": rows,
        "large_smd": cohort.LARGE_SMD,
        "random_partitions": random_folds,
    }
    return sections, svg


def study_text(cfg: WorkflowConfig) -> dict[str, str]:
    """The study's name, evaluation scheme and model in words (the report's subtitle)."""
    v = cfg.validation
    schemes = {
        "kfold": f"{v.folds}-fold patient-grouped cross-validation",
        "holdout": "holdout (manifest split: train / val / test)",
        "leave_one_group_out": f"leave-one-{v.group}-out cross-validation (each {v.group} held out in turn)",
        "nested": f"nested cross-validation ({v.folds} outer × {v.inner_folds} inner patient-grouped folds)",
    }
    scheme = schemes[v.scheme]
    if v.repeats > 1 or len(cfg.train.seeds) > 1:
        scheme += f", {v.repeats} repeat(s) × {len(cfg.train.seeds) or 1} seed(s)"
    size = "x".join(map(str, cfg.data.spatial_size))
    return {"name": cfg.study, "scheme": scheme, "model": f"{cfg.model.arch} {cfg.model.spatial_dims}D, input {size}"}


@dataclass(frozen=True)
class _CurveFigures:
    roc: bytes
    pr: bytes
    calibration: bytes | None
    decision: bytes | None


def _curve_figures(
    out: Path, per_patient: pd.DataFrame, label: ClassColumn, metrics: dict[str, Any], title: str
) -> _CurveFigures:
    """``roc.csv`` and ``pr.csv`` of the per-patient scores, and the ROC, precision-recall,
    calibration and decision-curve figures (the last two when ``metrics`` has their data)."""
    roc = roc_table(label.binary(per_patient), per_patient[SCORE].to_numpy())
    artifacts.write_csv(out / ROC_FILE, roc)
    cal = metrics.get("calibration") or {}
    bins = cal.get("reliability_quantile") or cal.get("reliability")
    curve = metrics.get("decision_curve")
    if not isinstance(curve, dict) or "threshold" not in curve:  # {"skipped": why}: scores not probabilities
        curve = None
    return _CurveFigures(
        roc=_roc_png(roc, per_patient, label, metrics, f"{title} ROC"),
        pr=_pr_png(out, per_patient, label, metrics, f"{title} precision-recall"),
        calibration=figures.calibration_figure(pd.DataFrame(bins)) if bins else None,
        decision=figures.decision_curve_figure(pd.DataFrame(curve)) if curve else None,
    )


def _roc_png(
    roc: pd.DataFrame, per_patient: pd.DataFrame, label: ClassColumn, metrics: dict[str, Any], title: str
) -> bytes:
    """The pooled ROC curve with the per-fold curves (when there are several) and the operating point."""
    fold_curves = []
    for fold, part in per_patient.groupby(FOLD) if FOLD in per_patient.columns else ():
        y = label.binary(part)
        if 0 < y.sum() < len(y):
            fold_curves.append((f"fold {fold}", roc_table(y, part[SCORE].to_numpy())))
    op = None
    if metrics.get("sensitivity") is not None and metrics.get("specificity") is not None:
        op = (1 - metrics["specificity"], metrics["sensitivity"])
    return figures.roc_figure(
        roc,
        auc=metrics.get("auc"),
        ci=(metrics.get("auc_ci_low"), metrics.get("auc_ci_high")),
        folds=fold_curves if len(fold_curves) > 1 else (),
        operating_point=op,
        title=title,
    )


def _pr_png(out: Path, per_patient: pd.DataFrame, label: ClassColumn, metrics: dict[str, Any], title: str) -> bytes:
    """``pr.csv`` and its figure, with the locked operating point (sensitivity, PPV)."""
    table, ap, prevalence = pr_table(label.binary(per_patient), per_patient[SCORE].to_numpy())
    artifacts.write_csv(out / PR_FILE, table)
    op = None
    if metrics.get("sensitivity") is not None and metrics.get("ppv") is not None:
        op = (metrics["sensitivity"], metrics["ppv"])
    return figures.pr_figure(table, average_precision=ap, prevalence=prevalence, operating_point=op, title=title)


def _fold_records(run_dir: Path) -> tuple[list[tuple[str, pd.DataFrame]], dict[str, dict[str, Any]]]:
    """(training histories, best epoch and validation AUC) of the finished folds."""
    histories, training = [], {}
    for done in sorted(run_dir.glob(f"fold_*/{FOLD_DONE_FILE}")):
        info = json.loads(done.read_text())
        training[str(info["fold"])] = {"best_epoch": info.get("best_epoch"), "best_val_auc": info.get("best_val_auc")}
        hist = done.parent / HISTORY_FILE
        if hist.is_file():
            histories.append((f"fold {info['fold']}", pd.read_csv(hist)))
    splits_path = run_dir / SPLITS_FILE
    splits = pd.read_csv(splits_path, dtype=str) if splits_path.is_file() else pd.DataFrame()
    if GROUP in splits.columns:  # leave-one-group-out: the value each fold held out
        for fold, value in splits.groupby(FOLD)[GROUP].first().items():
            training.setdefault(str(fold), {})["held_out"] = value
    return histories, training


def write_external_report(
    out: Path,
    prov: dict[str, Any],
    metrics: dict[str, Any],
    per_patient: pd.DataFrame,
    excluded: pd.DataFrame,
    *,
    n_images: int,
) -> None:
    """``report.html`` of a prediction on a labelled cohort: the external figures beside the study's
    internal headline, and the calibration on the new cohort (``prov`` is predict's provenance)."""
    model = prov["model"]
    label = ClassColumn(model["label_col"], str(model["positive"]))
    study = prov.get("study") or {}
    name = study.get("name") or str(model.get("study_run"))
    figs = _curve_figures(out, per_patient, label, metrics, f"{name}: external per-patient")
    n_pos = int(label.binary(per_patient).sum())
    inputs = ReportInputs(
        study=f"{name}: external validation",
        run_id=str(prov["predict_id"]),
        scheme_text=f"models of study run {model.get('study_run')} applied unchanged",
        model_text=str(study.get("model") or ""),
        metrics=metrics,
        per_patient=per_patient,
        split_summary=pd.DataFrame(
            [{"fold": "–", "role": EXTERNAL_ROLE, "patients": len(per_patient), "positives": n_pos}]
        ),
        excluded=excluded,
        fold_training={},
        n_images=n_images,
        roc_png=figs.roc,
        calibration_png=figs.calibration,
        pr_png=figs.pr,
        decision_png=figs.decision,
        external=external_summary(prov, metrics),
        record_file=PROVENANCE_FILE,
    )
    artifacts.write_text(out / REPORT_FILE, render_report(out, inputs))


def external_summary(prov: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Internal (the study's own headline) against external figures, and what the calibration says."""
    internal = prov.get("study_headline") or {}
    study = prov.get("study") or {}
    delta = None
    if internal.get("auc") is not None and metrics.get("auc") is not None:
        delta = float(metrics["auc"]) - float(internal["auc"])
    calibrator = prov["model"].get("calibrator")
    return {
        "study_run": prov["model"].get("study_run"),
        "internal": internal,
        "internal_scheme": study.get("scheme") or "the study's evaluation",
        "delta_auc": delta,
        "calibration_text": calibration_statement(metrics.get("calibration") or {}),
        "calibrator_text": (
            f"The study's recalibration ({calibrator}) was applied."
            if calibrator
            else "The study fitted no recalibration: the scores are the models' own probabilities."
        ),
        "study_patients": int(prov.get("study_patients_predicted") or 0),
        "patient_check_text": _patient_check_text(prov.get("patient_check")),
    }


def _patient_check_text(check: Any) -> str | None:
    """The sentence the report shows when predict's leakage guard did not compare patient ids."""
    if not str(check or "").startswith("not run"):
        return None
    return (
        f"The leakage guard's patient-id check was not run ({check}): only images the study used were "
        "recognised, by their content, so patients who trained or validated the study's models may have been "
        "scored with new images; these figures cannot be confirmed as an independent validation."
    )


def calibration_statement(cal: dict[str, Any]) -> str:
    """One plain sentence per calibration measure (thresholds are conventional, not tests)."""
    if not cal:
        return "Calibration could not be assessed on this cohort (the scores are not probabilities)."
    parts = []
    mean, rate = cal.get("mean_predicted"), cal.get("observed_rate")
    if mean is not None and rate is not None:
        parts.append(f"Mean predicted probability {mean:.3f} against an observed rate of {rate:.3f}.")
    a = cal.get("calibration_intercept")
    if a is not None:
        side = "over-estimates" if a < -0.1 else "under-estimates" if a > 0.1 else "matches"
        parts.append(
            f"Calibration-in-the-large {a:+.2f} (0 is ideal): the model {side} the risk on this cohort on average."
        )
    b = cal.get("calibration_slope")
    if b is not None:
        ci = (cal.get("calibration_slope_ci_low"), cal.get("calibration_slope_ci_high"))
        shape = "too extreme" if b < 0.9 else "too moderate" if b > 1.1 else "about right in spread"
        text = f"Calibration slope {b:.2f}"
        if None not in ci:
            text += f" (95% CI {ci[0]:.2f}–{ci[1]:.2f})"
        parts.append(f"{text}, 1 is ideal: the scores are {shape}.")
    elif cal.get("calibration_slope_note"):
        parts.append(f"Calibration slope {cal['calibration_slope_note']}.")
    if cal.get("brier") is not None:
        parts.append(f"Brier score {cal['brier']:.3f} (predicting the prevalence scores {cal['brier_reference']:.3f}).")
    return " ".join(parts)
