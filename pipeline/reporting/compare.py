"""Comparing runs scored on the same patients: ``cohortnet compare RUN_A RUN_B [RUN_C ...]``.

A run is a study run folder (``cohortnet run``) or a ``cohortnet predict`` folder of a labelled
cohort. The comparability checks come first and refuse (ValidationError, every problem at once)
runs that are not finished, not on the same patients with the same labels and positive class,
(study runs) not on the same splits, or (prediction folders, unless allowed) scored by models that
trained or validated on some of these patients. Labels are read as the pipeline reads them
(``norm_label``: 1, 1.0 and True are one class); patients without a label are left out. Each run
after the first is then compared with the first (the reference): paired DeLong and bootstrap tests
of the per-patient AUCs (difference = run minus reference), and sensitivity and specificity at each
run's own locked threshold with exact McNemar tests on the discordant patients. With three or more
runs the p-values are Holm-adjusted across the comparisons, separately for each test. Outputs hold
no patient identifiers.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pipeline import __version__, crossval
from pipeline.errors import ValidationError
from pipeline.evaluation import bootstrap_paired_test, delong_ci, delong_paired_test, roc_table
from pipeline.evaluation.table import binary_target, label_texts, norm_label
from pipeline.reporting import artifacts
from pipeline.schema import (
    FOLD,
    METRICS_FILE,
    PATIENT_ID,
    PER_PATIENT_FILE,
    PREDICTIONS_FILE,
    PROVENANCE_FILE,
    RESOLVED_CONFIG_FILE,
    ROLE,
    SCORE,
    SPLITS_FILE,
    TARGET,
    VAL_PREDICTIONS_FILE,
)

COMPARE_JSON = "compare.json"
COMPARE_CSV = "compare.csv"
COMPARE_HTML = "compare.html"
ROC_OVERLAY_FILE = "roc_overlay.png"
STUDY_FILES = (
    PER_PATIENT_FILE,
    METRICS_FILE,
    SPLITS_FILE,
    RESOLVED_CONFIG_FILE,
    PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
)
PREDICT_FILES = (PER_PATIENT_FILE, PROVENANCE_FILE)
HOLM_TESTS = ("delong_p", "bootstrap_p", "sensitivity_mcnemar_p", "specificity_mcnemar_p")


@dataclass(frozen=True)
class CompareOptions:
    """Statistical choices: bootstrap replicates and seed, confidence level, splits policy and
    whether predictions of patients the models trained on may be compared."""

    n_bootstrap: int = 2000
    seed: int = 0
    level: float = 0.95
    allow_different_splits: bool = False
    allow_study_patients: bool = False


@dataclass
class RunResults:
    """One run as compare reads it. ``patients``: one row per patient, columns patient_id, label
    (as text), target (0/1) and score; ``splits``: fold, patient_id, role (study runs only)."""

    key: str  # A, B, C ... in the order given; A is the reference
    name: str  # study/run_id
    kind: str  # "study" or "prediction"
    description: dict[str, str]  # study, run_id, scheme, model
    label_col: str
    positive: str
    threshold: float | None
    metrics: dict[str, Any]
    patients: pd.DataFrame
    splits: pd.DataFrame | None = None
    unlabelled: int = 0  # patients without a label, left out (prediction folders)
    study_patients: int = 0  # patients the models trained or validated on (provenance.json)
    patient_check: str | None = None  # predict's leakage guard on patient ids (provenance.json; None: not recorded)


@dataclass
class Comparison:
    """What compare computed: ``summary`` is compare.json; ``runs`` keeps the per-patient scores."""

    summary: dict[str, Any]
    runs: list[RunResults] = field(default_factory=list)


# --------------------------------------------------------------------------- reading runs


def _kind(folder: Path) -> tuple[str | None, str | None]:
    """("study" | "prediction" | None, why it is not a finished run or None)."""
    if not folder.is_dir():
        return None, "not a folder"
    if (folder / RESOLVED_CONFIG_FILE).is_file():
        missing = [f for f in STUDY_FILES if not (folder / f).is_file()]
        return "study", f"not a finished run: missing {', '.join(missing)}" if missing else None
    if (folder / PROVENANCE_FILE).is_file():
        missing = [f for f in PREDICT_FILES if not (folder / f).is_file()]
        if missing:
            return "prediction", f"not a finished prediction: missing {', '.join(missing)}"
        if not (folder / METRICS_FILE).is_file():
            return "prediction", "no metrics.json (an unlabelled cohort or an unmerged shard): compare needs labels"
        return "prediction", None
    return (
        None,
        f"neither a study run folder (no {RESOLVED_CONFIG_FILE}) nor a prediction folder (no {PROVENANCE_FILE})",
    )


def _description(folder: Path, kind: str) -> dict[str, str]:
    if kind == "prediction":
        prov = json.loads((folder / PROVENANCE_FILE).read_text())
        study = prov.get("study") or {}
        source = (prov.get("model") or {}).get("study_run")
        return {
            "study": str(study.get("name", "?")),
            "run_id": folder.name,
            "scheme": f"prediction by study run {source} ({study.get('scheme', '?')})",
            "model": str(study.get("model", "?")),
        }
    from pipeline.config import load_config
    from pipeline.reporting.build import study_text

    cfg = load_config(folder / RESOLVED_CONFIG_FILE, check_files=False)
    text = study_text(cfg)
    return {"study": cfg.study, "run_id": folder.name, "scheme": text["scheme"], "model": text["model"]}


def _read_patients(folder: Path, label_col: str, positive: str) -> tuple[pd.DataFrame | None, int, str | None]:
    """(patient_id, label (``norm_label`` text), score, target of the labelled patients, how many
    patients have no label, why the table cannot be compared or None)."""
    table = pd.read_csv(folder / PER_PATIENT_FILE, dtype={PATIENT_ID: str, label_col: str})
    missing = [c for c in (PATIENT_ID, label_col, SCORE) if c not in table.columns]
    if missing:
        return None, 0, f"{PER_PATIENT_FILE} lacks column(s) {', '.join(missing)}"
    if table[PATIENT_ID].duplicated().any():
        return None, 0, f"{PER_PATIENT_FILE} has {int(table[PATIENT_ID].duplicated().sum())} repeated patient row(s)"
    labels = label_texts(table[label_col])
    unlabelled = int(labels.isna().sum())
    table, labels = table[labels.notna()], labels[labels.notna()]
    scores = pd.to_numeric(table[SCORE], errors="coerce")
    if not np.isfinite(scores.to_numpy(dtype=float)).all():
        return None, 0, f"{PER_PATIENT_FILE} has missing or non-finite scores"
    frame = pd.DataFrame({PATIENT_ID: table[PATIENT_ID], "label": labels, SCORE: scores}).reset_index(drop=True)
    frame[TARGET] = binary_target(frame["label"], positive)
    if frame[TARGET].nunique() < 2:
        return None, 0, f"{PER_PATIENT_FILE} needs positive ({label_col}={positive}) and negative patients"
    return frame, unlabelled, None


def load_run(folder: Path, key: str) -> RunResults:
    """Read one run; ValidationError naming the folder when it is not a finished, binary run."""
    folder = Path(folder)
    kind, why = _kind(folder)
    if why is not None or kind is None:
        raise ValidationError([f"{key} ({folder.name}): {why}"], "runs to compare")
    metrics = json.loads((folder / METRICS_FILE).read_text())
    if metrics.get("task", "binary") != "binary" or metrics.get("unit", "patient") != "patient":
        raise ValidationError([f"{key} ({folder.name}): not a binary per-patient evaluation"], "runs to compare")
    label_col, positive = str(metrics.get("label_col", "label")), norm_label(metrics.get("positive", "1"))
    patients, unlabelled, why = _read_patients(folder, label_col, positive)
    if patients is None:
        raise ValidationError([f"{key} ({folder.name}): {why}"], "runs to compare")
    desc = _description(folder, kind)
    splits = None
    if kind == "study":
        # the partitions the figures come from (a seed ensemble's first member, a nested CV's outer folds)
        splits = crossval.primary_splits(pd.read_csv(folder / SPLITS_FILE, dtype=str))[[FOLD, PATIENT_ID, ROLE]]
    threshold = metrics.get("threshold")
    return RunResults(
        key=key,
        name=f"{desc['study']}/{desc['run_id']}",
        kind=kind,
        description=desc,
        label_col=label_col,
        positive=positive,
        threshold=None if threshold is None else float(threshold),
        metrics=metrics,
        patients=patients,
        splits=splits,
        unlabelled=unlabelled,
        **(_study_patients(folder) if kind == "prediction" else {}),
    )


def _study_patients(folder: Path) -> dict[str, Any]:
    """How many of a prediction's patients trained or validated the study's models (predict's
    ``--allow-study-patients``; 0 in an older provenance.json without the count) and whether its
    leakage guard compared patient ids (``patient_check``; without a model archive's key it
    recognised the study's images only)."""
    prov = json.loads((folder / PROVENANCE_FILE).read_text())
    check = prov.get("patient_check")
    return {
        "study_patients": int(prov.get("study_patients_predicted") or 0),
        "patient_check": None if check is None else str(check),
    }


def load_runs(folders: Sequence[Path]) -> list[RunResults]:
    """Read every run; one ValidationError listing every folder that cannot be compared."""
    runs, problems = [], []
    for i, folder in enumerate(folders):
        try:
            runs.append(load_run(folder, _key(i)))
        except ValidationError as exc:
            problems += exc.problems
    if problems:
        raise ValidationError(problems, "runs to compare")
    return runs


def _key(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"R{i + 1}"


# --------------------------------------------------------------------------- comparability


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "passed": passed, "detail": detail}


def _pair_problems(ref: RunResults, run: RunResults) -> list[str]:
    """Patients, labels and positive class of ``run`` against ``ref``; empty when they agree."""
    who = f"{run.key} ({run.name}) against {ref.key} ({ref.name})"
    problems = []
    if (ref.label_col, ref.positive) != (run.label_col, run.positive):
        problems.append(
            f"{who}: label column / positive class {run.label_col!r}={run.positive!r} "
            f"differ from {ref.label_col!r}={ref.positive!r}"
        )
    a, b = set(ref.patients[PATIENT_ID]), set(run.patients[PATIENT_ID])
    if a != b:
        problems.append(
            f"{who}: the patient sets differ: {len(a - b)} patient(s) only in {ref.key}, {len(b - a)} only in {run.key}"
        )
    both = ref.patients.merge(run.patients, on=PATIENT_ID, suffixes=("_a", "_b"))
    differ = int(((both["label_a"] != both["label_b"]) | (both[f"{TARGET}_a"] != both[f"{TARGET}_b"])).sum())
    if differ:
        problems.append(f"{who}: {differ} patient(s) have a different label or target")
    return problems


def _split_difference(ref: pd.DataFrame, run: pd.DataFrame) -> int:
    """How many patients are tested in another fold (or tested in one run only) in two splits.csv
    tables (0: the same test folds). How each fold's training patients were used (a validation
    share, inner folds) is part of the method being compared, so it is not checked."""

    def assignment(splits: pd.DataFrame) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for pid, fold, role in splits[[PATIENT_ID, FOLD, ROLE]].itertuples(index=False):
            out.setdefault(str(pid), set())
            if role == "test":
                out[str(pid)].add(str(fold))
        return out

    a, b = assignment(ref), assignment(run)
    return sum(a.get(p) != b.get(p) for p in a.keys() | b.keys())


def _independence(
    runs: Sequence[RunResults], allow_study_patients: bool
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(checks, problems, warnings) of prediction folders whose models trained or validated on some
    of the patients they scored: their scores are not held-out predictions, so a paired test against
    another run's would compare a fitted score with a tested one."""
    checks, problems, warnings = [], [], []
    for run in runs:
        if run.kind != "prediction":
            continue
        n = run.study_patients
        unchecked = (run.patient_check or "").startswith("not run")
        detail = f"{n} patient(s) trained or validated the models that scored them" if n else "held-out patients only"
        if unchecked:
            detail = (
                f"{n} patient(s) recognised by image content; their patient ids were not checked ({run.patient_check})"
            )
            warnings.append(
                f"{run.key} ({run.name}): the leakage guard's patient-id check was not run ({run.patient_check}): "
                "only the study's images were recognised, so the independence of its patients from the study's "
                "cannot be confirmed by id (predict with the archive's --leakage-key-file to check them)"
            )
        checks.append(_check(f"predictions of held-out patients {run.key}", n == 0 and not unchecked, detail))
        if n and not allow_study_patients:
            problems.append(
                f"{run.key} ({run.name}): {detail} (predicted with --allow-study-patients): its scores are not "
                "an independent test; compare with --allow-study-patients to compare them anyway"
            )
        elif n:
            warnings.append(f"{run.key}: {detail}; compared anyway (--allow-study-patients): not an independent test")
    return checks, problems, warnings


def check_comparable(
    runs: Sequence[RunResults], allow_different_splits: bool = False, allow_study_patients: bool = False
) -> dict[str, Any]:
    """The checks run against the reference: {"checks": [...], "warnings": [...]}; ValidationError
    naming the runs and the reasons when they are not comparable."""
    ref, others = runs[0], runs[1:]
    names = ", ".join(f"{r.key} ({r.name})" for r in runs)
    checks = [_check("finished runs", True, f"{names}: finished, binary, per-patient")]
    problems = [p for run in others for p in _pair_problems(ref, run)]
    checks.append(_check("same patients, labels and positive class", not problems, f"{len(ref.patients)} patients"))
    warnings = [f"{r.key} ({r.name}): {r.unlabelled} patient(s) without a label left out" for r in runs if r.unlabelled]
    independence = _independence(runs, allow_study_patients)
    checks += independence[0]
    problems += independence[1]
    warnings += independence[2]
    for run in others:
        if ref.splits is None or run.splits is None:
            checks.append(_check(f"same splits {ref.key}-{run.key}", True, "not applicable: a prediction folder"))
            continue
        n = _split_difference(ref.splits, run.splits)
        detail = f"{n} patient(s) are tested in another fold in {run.key} than in {ref.key}"
        if n and not allow_different_splits:
            problems.append(f"{run.key} ({run.name}) against {ref.key} ({ref.name}): splits differ: {detail}")
        elif n:
            warnings.append(f"splits differ ({detail}); compared anyway (--allow-different-splits)")
        checks.append(_check(f"same splits {ref.key}-{run.key}", n == 0, detail if n else "the same test folds"))
    if problems:
        raise ValidationError([*problems, "the runs are not comparable"], f"comparison of {names}")
    return {"checks": checks, "warnings": warnings}


# --------------------------------------------------------------------------- statistics


def mcnemar_exact(ref_only: int, run_only: int) -> float:
    """Exact (binomial) McNemar p-value, two-sided, from the two discordant counts; 1 when none."""
    n = ref_only + run_only
    return 1.0 if n == 0 else float(stats.binomtest(ref_only, n, 0.5).pvalue)


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count)."""
    known = [(p, i) for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(known)):
        running = max(running, min(1.0, (len(known) - rank) * p))
        out[i] = running
    return out


def _at_threshold(y: np.ndarray, ref: np.ndarray, run: np.ndarray, positives: bool) -> dict[str, Any]:
    """Sensitivity (``positives``) or specificity of two runs' calls and McNemar on the discordant."""
    rows = y == (1 if positives else 0)
    ok_ref, ok_run = ref[rows] == positives, run[rows] == positives  # a correct call
    ref_only, run_only = int((ok_ref & ~ok_run).sum()), int((~ok_ref & ok_run).sum())
    n = int(rows.sum())
    a, b = (ok_ref.mean(), ok_run.mean()) if n else (float("nan"), float("nan"))
    return {
        "n": n,
        "reference": float(a),
        "run": float(b),
        "difference": float(b - a),
        "discordant_reference_only": ref_only,
        "discordant_run_only": run_only,
        "mcnemar_p": mcnemar_exact(ref_only, run_only),
    }


def compare_pair(ref: RunResults, run: RunResults, options: CompareOptions) -> dict[str, Any]:
    """``run`` against ``ref`` on the reference's patient order (comparability already checked)."""
    aligned = ref.patients.merge(run.patients[[PATIENT_ID, SCORE]], on=PATIENT_ID, suffixes=("_ref", "_run"))
    y, s_ref, s_run = aligned[TARGET].to_numpy(), aligned[f"{SCORE}_ref"].to_numpy(), aligned[f"{SCORE}_run"].to_numpy()
    delong = delong_paired_test(y, s_run, s_ref, level=options.level)
    boot = bootstrap_paired_test(
        y, s_run, s_ref, n_bootstrap=options.n_bootstrap, seed=options.seed, level=options.level
    )
    out: dict[str, Any] = {"reference": ref.key, "run": run.key, "n": len(y), "n_positive": int(y.sum())}
    out["delong"], out["bootstrap"] = delong, boot
    if ref.threshold is None or run.threshold is None:
        out["sensitivity"] = out["specificity"] = None
        out["note"] = "no locked threshold in a metrics.json: no McNemar test"
        return out
    calls_ref, calls_run = s_ref >= ref.threshold, s_run >= run.threshold
    out["sensitivity"] = _at_threshold(y, calls_ref, calls_run, positives=True)
    out["specificity"] = _at_threshold(y, calls_ref, calls_run, positives=False)
    return out


def _run_summary(run: RunResults, level: float) -> dict[str, Any]:
    """The run's names and its per-patient AUC (DeLong, logit interval) and locked operating point."""
    p = run.patients
    ci = delong_ci(p[TARGET].to_numpy(), p[SCORE].to_numpy(), level=level)
    at = {}
    if run.threshold is not None:
        calls, y = p[SCORE].to_numpy() >= run.threshold, p[TARGET].to_numpy()
        at = {"sensitivity": float(calls[y == 1].mean()), "specificity": float((~calls[y == 0]).mean())}
    return {
        "key": run.key,
        "name": run.name,
        "kind": run.kind,
        **run.description,
        "n_patients": len(p),
        "n_positive": int(p[TARGET].sum()),
        "auc": ci.auc,
        "auc_ci_low": ci.low,
        "auc_ci_high": ci.high,
        "auc_ci_method": f"{ci.method}, logit scale",
        "auc_in_metrics_json": run.metrics.get("auc"),
        "threshold": run.threshold,
        "threshold_rule": run.metrics.get("threshold_rule"),
        **at,
    }


def _add_holm(comparisons: list[dict[str, Any]]) -> None:
    flat = [comparison_row(c) for c in comparisons]
    for test in HOLM_TESTS:
        for c, adjusted in zip(comparisons, holm_adjust([row[test] for row in flat]), strict=True):
            c.setdefault("holm", {})[test] = adjusted


def compare_runs(folders: Sequence[Path], options: CompareOptions = CompareOptions()) -> Comparison:
    """Read, check and compare the runs; the first is the reference. See the module docstring."""
    if len(folders) < 2:
        raise ValidationError([f"compare needs at least two runs, got {len(folders)}"], "runs to compare")
    runs = load_runs(folders)
    checked = check_comparable(runs, options.allow_different_splits, options.allow_study_patients)
    comparisons = [compare_pair(runs[0], run, options) for run in runs[1:]]
    if len(comparisons) > 1:
        _add_holm(comparisons)
    summary = {
        "schema_version": 1,
        "cohortnet": __version__,
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "reference": runs[0].key,
        "difference": "run minus reference",
        "options": {
            "n_bootstrap": options.n_bootstrap,
            "seed": options.seed,
            "level": options.level,
            "allow_different_splits": options.allow_different_splits,
            "allow_study_patients": options.allow_study_patients,
        },
        **checked,
        "runs": [_run_summary(r, options.level) for r in runs],
        "comparisons": comparisons,
    }
    return Comparison(summary, runs)


# --------------------------------------------------------------------------- outputs


def comparison_row(c: dict[str, Any]) -> dict[str, Any]:
    """One flat row of compare.csv from one entry of compare.json's ``comparisons``."""
    d, b = c["delong"], c["bootstrap"]
    row = {
        "reference": c["reference"],
        "run": c["run"],
        "n": c["n"],
        "n_positive": c["n_positive"],
        "auc_reference": d["auc2"],
        "auc_run": d["auc1"],
        "auc_difference": d["auc_difference"],
        "delong_se": d["se"],
        "delong_z": d["z"],
        "delong_p": d["p_value"],
        "delong_ci_low": d["ci_low"],
        "delong_ci_high": d["ci_high"],
        "bootstrap_p": b["p_value"],
        "bootstrap_ci_low": b["ci_low"],
        "bootstrap_ci_high": b["ci_high"],
        "n_bootstrap": b["n_bootstrap"],
    }
    for name in ("sensitivity", "specificity"):
        block = c.get(name) or {}
        for k in ("reference", "run", "difference", "discordant_reference_only", "discordant_run_only", "mcnemar_p"):
            row[f"{name}_{k}"] = block.get(k)
    for test, p in (c.get("holm") or {}).items():
        row[f"{test}_holm"] = p
    return row


def roc_overlay_figure(curves: Sequence[tuple[str, pd.DataFrame, float]], title: str = "Per-patient ROC") -> bytes:
    """PNG of several ROC curves (tables with fpr, tpr), each labelled with its AUC."""
    from pipeline.reporting.figures import _png, plt

    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    for i, (name, table, auc) in enumerate(curves):
        ax.plot(table["fpr"], table["tpr"], color=f"C{i % 10}", lw=2, label=f"{name} AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def render_compare_html(summary: dict[str, Any], roc_png: bytes) -> str:
    """The self-contained comparison page (``templates/compare.html``)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from pipeline.reporting.html import fmt

    env = Environment(loader=PackageLoader("pipeline.reporting", "templates"), autoescape=select_autoescape(["html"]))
    env.globals["fmt"] = fmt
    rows = [comparison_row(c) for c in summary["comparisons"]]
    names = {r["key"]: r["name"] for r in summary["runs"]}
    return env.get_template(COMPARE_HTML).render(
        **summary, rows=rows, names=names, roc_png=base64.b64encode(roc_png).decode("ascii")
    )


def write_comparison(out: Path, comparison: Comparison) -> list[Path]:
    """compare.json, compare.csv, roc_overlay.png and compare.html in ``out`` (each written atomically)."""
    out = Path(out)
    summary = comparison.summary
    aucs = {r["key"]: r["auc"] for r in summary["runs"]}
    curves = [
        (f"{r.key} {r.name}", roc_table(r.patients[TARGET].to_numpy(), r.patients[SCORE].to_numpy()), aucs[r.key])
        for r in comparison.runs
    ]
    png = roc_overlay_figure(curves)
    return [
        artifacts.write_json(out / COMPARE_JSON, summary),
        artifacts.write_csv(out / COMPARE_CSV, pd.DataFrame([comparison_row(c) for c in summary["comparisons"]])),
        artifacts.write_bytes(out / ROC_OVERLAY_FILE, png),
        artifacts.write_text(out / COMPARE_HTML, render_compare_html(summary, png)),
    ]
