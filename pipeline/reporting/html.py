"""The study report: one self-contained HTML file (figures embedded), built from the run folder."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from pipeline import __version__
from pipeline.reporting import redact as redacting
from pipeline.schema import ENVIRONMENT_FILE, EXCLUDED_FILE, PER_PATIENT_FILE, RESOLVED_CONFIG_FILE, SCORE_SINGLE

THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "balanced_accuracy", "f1")
MAX_PATIENT_ROWS = 5000  # beyond this the HTML gets unwieldy; per_patient.csv has every row


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_p(value: Any) -> str:
    """A p-value to three significant digits; "n/a" where the test had no variance (None or NaN)."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.3g}"


@dataclass
class ReportInputs:
    """What the report shows; figures are PNG bytes."""

    study: str
    run_id: str
    scheme_text: str
    model_text: str
    metrics: dict[str, Any]
    per_patient: pd.DataFrame
    split_summary: pd.DataFrame
    excluded: pd.DataFrame
    fold_training: dict[str, dict[str, Any]]  # fold -> {"best_epoch", "best_val_auc"}
    n_images: int
    roc_png: bytes
    calibration_png: bytes | None = None
    pr_png: bytes | None = None
    curves_png: bytes | None = None
    decision_png: bytes | None = None
    checklist: tuple[dict[str, Any], pd.DataFrame] | None = None  # checklist.fill_checklist
    explanations: dict[str, Any] | None = None  # explanations.load_explanations
    cohort: dict[str, Any] | None = None  # patient flow and Table 1 (build.cohort_sections)
    external: dict[str, Any] | None = None  # a prediction on a labelled cohort: internal against external
    record_file: str = ENVIRONMENT_FILE  # the JSON record shown under "Reproduce"
    # the copy for outside the run folder only (build.redacted_inputs): the sensitive columns' values
    # and their labels, applied to the inputs above and checked against the page; never shown
    redaction: redacting.Redaction | None = None


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data else None


def _threshold_rows(metrics: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    rows = []
    for name in THRESHOLD_METRICS:
        if name in metrics:
            rows.append(
                (
                    name.replace("_", " "),
                    metrics[name],
                    metrics.get(f"{name}_ci_low"),
                    metrics.get(f"{name}_ci_high"),
                )
            )
    return rows


def _fold_rows(metrics: dict[str, Any], training: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
    folds = metrics.get("folds") or {}
    rows = []
    for values in folds.get("per_fold") or []:
        fold = str(values.get("fold"))
        rows.append({**values, "fold": fold, **training.get(fold, {})})
    summary = {"mean": folds.get("auc_mean"), "sd": folds.get("auc_sd")} if "auc_mean" in folds else None
    return rows, summary


def _calibration_rows(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    cal = metrics.get("calibration") or {}
    keys = ("brier", "calibration_intercept", "calibration_slope", "ece")
    return [(k.replace("_", " "), cal[k]) for k in keys if k in cal]


def _tta(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The paired comparison of test-time-augmented against single-view scores, when the run has it."""
    comp = metrics.get("comparison") or {}
    if comp.get("compare_col") != SCORE_SINGLE or comp.get("auc1") is None or comp.get("auc2") is None:
        return None
    return comp


def _members(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Repeats and seeds: each member's figures, their spread, and the ensemble against one member."""
    block = metrics.get("members")
    if not block:
        return None
    comp = block.get("comparison") or {}
    usable = comp.get("auc1") is not None and comp.get("auc2") is not None
    return {**block, "comparison": comp if usable else None}


def _point_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in point.items()) or "the workflow as written"


def _nested(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Nested CV: each outer fold's inner AUC per search point, its choice and refit epochs."""
    block = metrics.get("nested")
    if not block:
        return None
    points = [_point_text(p) for p in block["points"]]
    folds = [
        {
            "fold": f["fold"],
            "chosen": points[f["point"]],
            "epoch": f["epoch"],
            "aucs": [q["inner_auc"] for q in f["points"]],
            "point": f["point"],
        }
        for f in block["folds"]
    ]
    counts = [(points[c["point"]], c["folds"]) for c in block["chosen_counts"]]
    return {**block, "point_names": points, "fold_rows": folds, "counts": counts}


def _heterogeneity_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Cochran's Q and I^2 across the values of each subgroup column that has them."""
    rows = []
    for column, block in (metrics.get("subgroups") or {}).items():
        het = (block or {}).get("heterogeneity")
        if het:
            rows.append({"column": column, **het})
    return rows


def _subgroup_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for column, block in (metrics.get("subgroups") or {}).items():
        for group in (block or {}).get("groups") or []:
            rows.append({"column": column, **group, "note": "; ".join(group.get("warnings") or [])})
    return rows


# keys the template reads from metrics.json even when a run has none of them (multi-class, say)
_HEADLINE_KEYS = (
    "auc",
    "auc_ci_low",
    "auc_ci_high",
    "ci_method",
    "n_patients",
    "n_positive",
    "threshold",
    "threshold_rule",
    "threshold_source",
)


def render_report(run_dir: Path, inputs: ReportInputs, *, redact: bool = False) -> str:
    """The report's HTML; ``redact``: the copy that leaves the run folder (the MLflow store's), without
    the per-patient table, the excluded images' ids, the Grad-CAM cases and the command line, with
    the workflow's paths as file names and the sensitive columns' values as labels (``inputs`` from
    ``build.redacted_inputs``; ``reporting.redact``). A redacted page that still shows such a value
    raises ``redact.RedactionError``."""
    redaction = _check_redacted(inputs) if redact else None
    env = Environment(
        loader=PackageLoader("pipeline.reporting", "templates"),
        autoescape=select_autoescape(["html"]),
    )
    env.globals["fmt"] = fmt
    env.globals["fmt_p"] = fmt_p
    context = {
        "study": inputs.study,
        "run_id": inputs.run_id,
        "scheme_text": inputs.scheme_text,
        "model_text": inputs.model_text,
        "generated": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "version": __version__,
        **_headline(inputs),
        **_figures(inputs),
        **_tables(inputs),
        "external": inputs.external,
        "cohort": _cohort(inputs.cohort),
        "checklist": _checklist(inputs.checklist),
        "explanations": _explanations(inputs.explanations),
        **_provenance(run_dir, inputs.record_file, redaction),
    }
    if redaction is None:
        return env.get_template("report.html").render(**context)
    for key in ("patient_columns", "patient_rows", "n_patient_rows", "excluded_rows", "explanations"):
        del context[key]
    context["redacted"] = {  # the template says where the left-out parts are
        "explanations": inputs.explanations is not None,
        "patients_file": PER_PATIENT_FILE,
        "excluded_file": EXCLUDED_FILE,
        "columns": redaction.columns,
    }
    page = env.get_template("report.html").render(**context)
    check_redacted_page(page, redaction)
    return page


def check_redacted_page(page: str, redaction: redacting.Redaction) -> None:
    """The last check before ``report_redacted.html`` is written: no value of a sensitive column in
    what the page shows (``redact.page_text``: its text and title/alt attributes, HTML entities read
    as the characters they are; no tag, style, script or figure data), a value spelled only by the
    report's own words aside (``redact.ordinary``). The page's note on the labels gives the stock
    example "<column> 1, <column> 2, …": not read as values (a column of values "Site 1", "Site 2"
    has labels of another stem, ``redact.Redaction.of``). Raises ``redact.RedactionError`` naming
    the column, never the value."""
    text = redacting.page_text(page)
    if redaction.columns:
        column = redaction.columns[0]
        text = text.replace(f"{column} 1, {column} 2, …", "")
    redaction.refuse(text, redacting.REDACTED_REPORT_FILE)


def _check_redacted(inputs: ReportInputs) -> redacting.Redaction:
    """A redacted copy is built from inputs with the sensitive columns' values as labels
    (``build.redacted_inputs``): it has the value map, and its flow (diagram and checklist answers)
    shows the workflow filter as labels (``cohort.redact_flow``)."""
    if inputs.redaction is None:
        raise ValueError("a redacted report needs the inputs of build.redacted_inputs (the value map)")
    flt = ((inputs.cohort or {}).get("flow") or {}).get("filter")
    if not flt:
        return inputs.redaction
    checklist_ok = inputs.checklist is None or inputs.checklist[0].get("redacted")
    if not flt.get("redacted") or not checklist_ok:
        raise ValueError(
            "a redacted report needs the workflow filter's values as labels in its flow diagram and "
            "checklist (build.redacted_inputs)"
        )
    return inputs.redaction


def _headline(inputs: ReportInputs) -> dict[str, Any]:
    m = inputs.metrics
    return {
        "metrics": {**dict.fromkeys(_HEADLINE_KEYS), **m},
        "n_images": inputs.n_images,
        "n_excluded": len(inputs.excluded),
        "confusion": {k: m[k] for k in ("tp", "fp", "tn", "fn")} if "tp" in m else None,
        "warnings": m.get("warnings") or [],
        "at_half": m.get("at_0.5"),
    }


def _figures(inputs: ReportInputs) -> dict[str, Any]:
    return {
        "roc_png": _b64(inputs.roc_png),
        "calibration_png": _b64(inputs.calibration_png),
        "pr_png": _b64(inputs.pr_png),
        "curves_png": _b64(inputs.curves_png),
        "decision_png": _b64(inputs.decision_png),
    }


def _explanations(explained: dict[str, Any] | None) -> dict[str, Any] | None:
    if explained is None:
        return None
    figures = explained["figures"]
    cases = [{**c, "png": _b64(figures.get(c["image_id"]))} for c in explained["cases"]]
    counts = [(k.replace("_", " "), v) for k, v in (explained["record"].get("counts") or {}).items()]
    return {"record": explained["record"], "cases": cases, "counts": counts}


def _checklist(checklist: tuple[dict[str, Any], pd.DataFrame] | None) -> dict[str, Any] | None:
    if checklist is None:
        return None
    header, table = checklist
    counts = table["status"].value_counts()
    return {**header, "rows": table.to_dict("records"), "counts": [(k, int(v)) for k, v in counts.items()]}


def _cohort(sections: dict[str, Any] | None) -> dict[str, Any] | None:
    if sections is None:
        return None
    blank = {"smd": None, "smd_pair": "", "large": False, "level": False}
    rows = [{**blank, **r, "cells": [fmt(v) for v in r["values"]]} for r in sections["table1_rows"]]
    for r in rows:
        smd = r["smd"]
        r["smd_text"] = "" if smd is None else "separated" if math.isinf(smd) else f"{smd:.2f}"
    return {**sections, "flow_png": _b64(sections["flow_png"]), "table1_rows": rows}


def _tables(inputs: ReportInputs) -> dict[str, Any]:
    fold_rows, fold_summary = _fold_rows(inputs.metrics, inputs.fold_training)
    pp = inputs.per_patient.head(MAX_PATIENT_ROWS)
    return {
        "threshold_rows": _threshold_rows(inputs.metrics),
        "fold_rows": fold_rows,
        "fold_summary": fold_summary,
        "fold_own": (inputs.metrics.get("folds") or {}).get("own_thresholds"),
        "calibration_rows": _calibration_rows(inputs.metrics),
        "subgroup_rows": _subgroup_rows(inputs.metrics),
        "heterogeneity_rows": _heterogeneity_rows(inputs.metrics),
        "tta": _tta(inputs.metrics),
        "members": _members(inputs.metrics),
        "nested": _nested(inputs.metrics),
        "split_rows": inputs.split_summary.to_dict("records"),
        "excluded_rows": inputs.excluded.to_dict("records"),
        "n_patient_rows": len(inputs.per_patient),
        "patient_columns": list(pp.columns),
        "patient_rows": [[fmt(v) for v in row] for row in pp.itertuples(index=False)],
    }


def _provenance(run_dir: Path, record_file: str, redaction: redacting.Redaction | None = None) -> dict[str, Any]:
    """The resolved config, the environment (or prediction) record and the folder's file listing
    (``redaction``: as ``reporting.redact`` lets them leave the run folder, the filter's values and
    any sensitive value in their texts as labels)."""
    config_path = run_dir / RESOLVED_CONFIG_FILE
    env_path = run_dir / record_file
    record = json.loads(env_path.read_text()) if env_path.is_file() else {}
    commit = record.get("git_commit") or (record.get("code") or {}).get("git_commit")
    config_text = config_path.read_text() if config_path.is_file() else ""
    listing = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    if redaction is not None:
        config_text = redacting.config_text(config_text, redaction)
        record = redaction.json(redacting.record(record, record_file))
        listing = [redaction.text(name) for name in listing]
    return {
        "git_commit": commit,
        "config_text": config_text,
        "environment_text": json.dumps(record, indent=2) if record else "",
        "files": {"config": RESOLVED_CONFIG_FILE, "environment": record_file},
        "listing": listing,
    }
