"""The TRIPOD+AI and CLAIM 2024 reporting checklist of a run: every item of the versioned file
``checklists/tripod-ai-claim-2024.yaml`` with a status and, where the run can answer it, the
answer and the report section that holds the evidence. Written as ``checklist.csv`` and shown
as a section of the report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline.config import WorkflowConfig, search_grid, study_members

CHECKLIST = "tripod-ai-claim-2024.yaml"
FILLED, PARTIAL, AUTHOR, NOT_DONE = "from the run", "partly from the run", "for the author", "not done in this run"
STATUSES = (FILLED, PARTIAL, AUTHOR, NOT_DONE)


@dataclass(frozen=True)
class RunFacts:
    """What the checklist reads: the run's config and records and the report's own sections."""

    cfg: WorkflowConfig
    metrics: dict[str, Any]
    environment: dict[str, Any]
    cohort: dict[str, Any] | None = None  # build.cohort_sections
    explanations: dict[str, Any] | None = None  # explanations.json
    external: dict[str, Any] | None = None  # build.external_summary, for a prediction on a labelled cohort


Answer = tuple[str, str]
Fill = Callable[[RunFacts], Answer]


def load_items() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header: version and sources, items) of the packaged checklist."""
    text = resources.files("pipeline.reporting").joinpath("checklists", CHECKLIST).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return {"version": data["version"], "sources": data["sources"], "file": CHECKLIST}, list(data["items"])


def _flow(f: RunFacts) -> dict[str, Any]:
    return (f.cohort or {}).get("flow") or {}


def _n_members(cfg: WorkflowConfig) -> int:
    """Members of the study: repeats of the splits × training seeds (1: a plain run)."""
    return len(study_members(cfg))


def _members_text(cfg: WorkflowConfig) -> str:
    return f"{cfg.validation.repeats} repeat(s) of the splits × {len(cfg.train.seeds) or 1} training seed(s)"


def _ensembled(cfg: WorkflowConfig) -> bool:
    """Whether the study's scores are averaged over several members (evaluation.ensemble mean)."""
    return _n_members(cfg) > 1 and cfg.evaluation.ensemble == "mean"


def _reasons(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1])) or "none"


def _data_sources(f: RunFacts) -> Answer:
    man = _flow(f).get("manifest") or {}
    sha = f.environment.get("manifest_sha256", "")
    text = (
        f"manifest {man.get('file', f.cfg.manifest.name)} (SHA-256 {sha[:16]}…)" if sha else "the workflow's manifest"
    )
    if man:
        text += f": {man['images']} images of {man['patients']} patients"
    return PARTIAL, text + "; where and how the images were collected is for the author"


def _centres(f: RunFacts) -> Answer:
    if f.cohort is None:
        return AUTHOR, "this run folder has no Table 1"
    sites = [c for c in ("site", "centre", "center", "hospital", "institution") if c in _table_names(f)]
    if sites:
        return PARTIAL, f"patients per {sites[0]} are in Table 1; the kind of setting is for the author"
    return AUTHOR, "Table 1 describes no site (name the manifest's site column in report.covariates)"


def _table_names(f: RunFacts) -> set[str]:
    rows = (f.cohort or {}).get("table1_rows") or []
    return {str(r["characteristic"]).split(",")[0] for r in rows if not r.get("level")}


def _eligibility(f: RunFacts) -> Answer:
    flow = _flow(f)
    parts = []
    if flow.get("filter"):
        parts.append(f"workflow filter {flow['filter']['rule']} removed {flow['filter']['images']} images")
    if flow.get("scan"):
        parts.append(f"cohortnet scan excluded {flow['scan']['excluded']} ({_reasons(flow['scan']['by_reason'])})")
    load = flow.get("loading") or {}
    if load:
        parts.append(f"{load['images']} images failed to load ({_reasons(load['by_reason'])})")
    text = "; ".join(parts) or "every image of the manifest was used"
    return PARTIAL, text + "; the clinical inclusion criteria are for the author"


def _preprocessing(f: RunFacts) -> Answer:
    d = f.cfg.data
    size = "x".join(map(str, d.spatial_size))
    steps = ["reoriented to RAS"]
    if d.spacing:
        steps.append(f"resampled to {'x'.join(map(str, d.spacing))} mm")
    steps.append(f"{'resized' if d.resize == 'resize' else 'padded or cropped'} to {size}")
    mode = d.intensity.mode
    steps.append(f"intensity {mode}{' ' + str(list(d.intensity.window)) if mode == 'ct_window' else ''}")
    steps.append(f"non-finite voxels: {d.nonfinite}")
    return FILLED, "; ".join(steps) + " (readers refuse images they cannot place; see excluded.csv)"


def _outcome(f: RunFacts) -> Answer:
    t = f.cfg.task
    return PARTIAL, f"manifest column {t.label!r}, positive class {t.positive!r}; how it was assessed is for the author"


def _inputs(f: RunFacts) -> Answer:
    return (
        FILLED,
        f"the image alone ({f.cfg.model.spatial_dims}D, {f.cfg.model.in_channels} channel(s)); no clinical variables",
    )


def _sample_size(f: RunFacts) -> Answer:
    inc = _flow(f).get("included") or {}
    if not inc:
        m = f.metrics
        return (
            PARTIAL,
            f"{m.get('n_patients')} patients, {m.get('n_positive')} positive; the rationale is for the author",
        )
    text = f"{inc['patients']} patients ({inc['positives']} positive), {inc['images']} images"
    return PARTIAL, text + "; no sample-size calculation was made by the pipeline (for the author)"


def _missing_data(f: RunFacts) -> Answer:
    load = _flow(f).get("loading") or {}
    missing = [r for r in (f.cohort or {}).get("table1_rows") or [] if r.get("characteristic") == "missing"]
    text = f"images that could not be read were excluded, not imputed ({load.get('images', 0)} images)"
    if missing:
        text += "; missing covariate values are counted in Table 1"
    return FILLED, text


def _partitioning(f: RunFacts) -> Answer:
    v = f.cfg.validation
    if v.scheme == "leave_one_group_out":
        text = (
            f"leave-one-{v.group}-out: each {v.group} is the test set of one fold, the other groups train; "
            f"{v.inner_val_fraction:.0%} of the training patients choose the epoch and threshold (splits.csv, "
            "with the held-out group per fold)"
        )
    elif v.scheme == "nested":
        text = (
            f"nested cross-validation: {v.folds} outer folds stratified by label and grouped by patient give the "
            f"estimate; in each, {v.inner_folds} inner folds of its training patients choose the search point, "
            "the epoch and the threshold, then the model is refitted on all its training patients (splits.csv, "
            "both levels; nested.json)"
        )
    elif v.scheme == "kfold":
        text = (
            f"{v.folds}-fold cross-validation stratified by label and grouped by patient (StratifiedGroupKFold, "
            f"seed {f.cfg.train.seed}); {v.inner_val_fraction:.0%} of each fold's training patients choose the epoch "
            "and threshold; every patient is tested once (splits.csv)"
        )
    else:
        text = "the manifest's split column: train, val (epoch and threshold) and test (splits.csv)"
    if v.repeats > 1 or len(f.cfg.train.seeds) > 1:
        text += (
            f"; run {v.repeats} time(s) with new splits × {len(f.cfg.train.seeds) or 1} training seed(s), "
            f"combined by {f.cfg.evaluation.ensemble}, with every member's figures and their spread "
            "(member_predictions.csv)"
        )
    return FILLED, text


def _disjoint(f: RunFacts) -> Answer:
    return (
        FILLED,
        "patient level: a patient's images are never in two partitions, and identical image content "
        "under two patient ids is refused",
    )


def _model(f: RunFacts) -> Answer:
    m = f.cfg.model
    text = (
        f"MONAI {m.arch} ({m.spatial_dims}D, input {'x'.join(map(str, f.cfg.data.spatial_size))}, "
        f"widen {m.widen_factor}, "
        f"{m.norm} norm, stem {m.stem_kernel}/{m.stem_stride}, dropout {m.dropout}); one logit, sigmoid probability"
    )
    return FILLED, text


def _models_trained(cfg: WorkflowConfig) -> str:
    """How many models the run trained, and why: folds (outer and inner) × search points × members."""
    v, members = cfg.validation, _n_members(cfg)
    times = f" × {members} members ({_members_text(cfg)})" if members > 1 else ""
    if v.scheme == "holdout":
        return (
            f"{members} model(s) trained (one per member: {_members_text(cfg)})" if members > 1 else "1 model trained"
        )
    if v.scheme == "kfold":
        return f"{v.folds * members} models trained ({v.folds} folds{times})"
    if v.scheme == "nested":
        points = len(search_grid(cfg))
        n = v.folds * (points * v.inner_folds + 1) * members
        return (
            f"{n} models trained ({v.folds} outer folds × ({points} search point(s) × {v.inner_folds} inner folds "
            f"+ 1 refit){times})"
        )
    return f"one model trained per {v.group} value{times}"


def _search_text(cfg: WorkflowConfig) -> str:
    if cfg.validation.scheme != "nested":
        return "no hyperparameter search"
    if not cfg.search:
        return "no hyperparameter search (nested cross-validation without a search space: inner folds choose the epoch)"
    return (
        f"hyperparameter search over {len(search_grid(cfg))} point(s) of {', '.join(cfg.search)} (every "
        "combination), each outer fold choosing by its inner folds' pooled validation AUC (nested.json)"
    )


def _model_training(f: RunFacts) -> Answer:
    t, a = f.cfg.train, f.cfg.data.augment
    aug = [k for k in ("flip", "rotate90", "affine", "intensity", "noise") if getattr(a, k)]
    text = (
        f"AdamW lr {t.lr}, weight decay {t.weight_decay}, {t.epochs} epochs (warm-up {t.warmup_epochs}), batch "
        f"{t.batch_size}, train.amp {t.amp} (each fold's precision is in its done.json), "
        f"augmentation {', '.join(aug) or 'none'}; {_models_trained(f.cfg)}; {_search_text(f.cfg)}"
    )
    return FILLED, text


def _heterogeneity(f: RunFacts) -> Answer:
    folds = f.metrics.get("folds") or {}
    parts = []
    if folds.get("auc_sd") is not None:
        parts.append(f"fold AUC {folds['auc_mean']:.3f} ± {folds['auc_sd']:.3f} (SD)")
    if f.metrics.get("subgroups"):
        parts.append(f"AUC per {', '.join(f.metrics['subgroups'])} with CIs under Subgroups")
    if not parts:
        return AUTHOR, "no clusters were compared in this run (set evaluation.subgroups)"
    return PARTIAL if not f.metrics.get("subgroups") else FILLED, "; ".join(parts)


def _measures(f: RunFacts) -> Answer:
    return FILLED, (
        "per-patient ROC AUC; sensitivity, specificity, PPV, NPV, accuracy, balanced accuracy and F1 at the locked "
        "threshold; calibration (intercept, slope, Brier, reliability); decision curve; precision-recall curve"
    )


def _updating(f: RunFacts) -> Answer:
    return NOT_DONE, "no recalibration or updating was fitted; calibration is reported as it is"


def _prediction_rule(f: RunFacts) -> Answer:
    agg = f.cfg.evaluation.aggregate
    scored = "each test patient is scored by the model that did not train on them"
    if _ensembled(f.cfg):
        scored = (
            f"each test image is scored by the {_n_members(f.cfg)} members' models that did not train on it, "
            "their probabilities averaged"
        )
    return FILLED, f"{scored}; a patient's image scores are combined by {agg}"


def _class_imbalance(f: RunFacts) -> Answer:
    rule = {"weighted_loss": "positive-class weight in the loss", "sampler": "class-balanced sampling", "none": "none"}
    return FILLED, f"{rule[f.cfg.train.class_balance]} (train.class_balance: {f.cfg.train.class_balance})"


def _fairness(f: RunFacts) -> Answer:
    if f.metrics.get("subgroups"):
        return (
            PARTIAL,
            f"AUC by {', '.join(f.metrics['subgroups'])} under Subgroups; the fairness assessment is for the author",
        )
    return AUTHOR, "no subgroups were evaluated (evaluation.subgroups)"


def _threshold(f: RunFacts) -> Answer:
    m = f.metrics
    if m.get("threshold") is None:
        return PARTIAL, "a probability per patient; no threshold was locked"
    return FILLED, (
        f"a probability per patient; threshold {m['threshold']:.3f} by rule {m.get('threshold_rule')} chosen on "
        f"{m.get('threshold_source')} patients before testing"
    )


def _shift(f: RunFacts) -> Answer:
    rows = [r for r in (f.cohort or {}).get("table1_rows") or [] if r.get("large")]
    if f.cohort is None:
        return AUTHOR, "no Table 1 in this run"
    if f.cohort.get("random_partitions"):
        return PARTIAL, (
            "internal cross-validation: the folds are random patient-grouped partitions of one cohort; "
            "Table 1 shows them per fold; an external cohort is for the author (cohortnet predict)"
        )
    names = ", ".join(str(r["characteristic"]).split(",")[0] for r in rows) or "none"
    return PARTIAL, f"standardised differences between partitions in Table 1 (large: {names})"


def _code(f: RunFacts) -> Answer:
    commit = f.environment.get("git_commit") or "not recorded"
    version = (f.environment.get("packages") or {}).get("cohortnet")
    return PARTIAL, f"cohortnet {version}, commit {commit}; the repository address is for the author"


def _flow_answer(f: RunFacts) -> Answer:
    inc = _flow(f).get("included")
    if not inc:
        return AUTHOR, "this run folder has no flow records"
    return (
        FILLED,
        f"flow diagram: {inc['patients']} patients included ({inc['positives']} positive, {inc['negatives']} negative)",
    )


def _characteristics(f: RunFacts) -> Answer:
    return (FILLED, "Table 1 per partition with standardised differences") if f.cohort else (AUTHOR, "no Table 1")


def _analysis_counts(f: RunFacts) -> Answer:
    parts = _flow(f).get("partitions") or []

    def one(p: dict[str, Any]) -> str:
        trained = f", trained on {p['train']} with {p['val']} validating" if "train" in p else ""
        return f"{p['name']}: {p['patients']} tested ({p['positives']} positive){trained}"

    text = "; ".join(one(p) for p in parts)
    return (FILLED, text) if text else (AUTHOR, "")


def _model_object(f: RunFacts) -> Answer:
    return FILLED, "fold_<k>/model.pt (state_dicts) with config.yaml; `cohortnet export` writes a verifiable model.zip"


def _performance(f: RunFacts) -> Answer:
    m = f.metrics
    if m.get("auc") is None:
        return AUTHOR, ""
    if m.get("auc_ci_low") is None or m.get("auc_ci_high") is None:
        return PARTIAL, f"AUC {m['auc']:.3f} without a confidence interval (see the statistical warnings)"
    return (
        FILLED,
        f"AUC {m['auc']:.3f} [{m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}] ({m.get('ci_method')}); "
        "threshold metrics with CIs",
    )


def _input_quality(f: RunFacts) -> Answer:
    return (
        PARTIAL,
        "unreadable or implausible images are refused with a reason code (excluded.csv); "
        "clinical handling is for the author",
    )


def _study_goal(f: RunFacts) -> Answer:
    return (
        (FILLED, "external testing of a developed model")
        if f.external
        else (FILLED, "model development with internal testing")
    )


def _subsets(f: RunFacts) -> Answer:
    flt = _flow(f).get("filter")
    return (FILLED, f"workflow filter {flt['rule']}") if flt else (FILLED, "no subset was selected: the whole manifest")


def _deidentification(f: RunFacts) -> Answer:
    return PARTIAL, (
        "cohortnet keeps no identifying DICOM text in logs, reports or caches and can pseudonymise ids at scan; "
        "the explanation figures show image slices (check them for burned-in text or facial features); "
        "the de-identification of the source data is for the author"
    )


def _acquisition(f: RunFacts) -> Answer:
    found = _table_names(f) & {
        "modality",
        "manufacturer",
        "format",
        "slices",
        "slice spacing (mm)",
        "in-plane spacing (mm)",
    }
    if found:
        return PARTIAL, f"{', '.join(sorted(found))} per partition in Table 1; the protocol itself is for the author"
    return AUTHOR, "the manifest carries no acquisition fields (cohortnet scan writes them)"


def _software(f: RunFacts) -> Answer:
    pk = f.environment.get("packages") or {}
    cuda = f.environment.get("cuda") or {}
    device = cuda.get("device") or f"CPU ({f.environment.get('cpu_count')} cores)"
    versions = ", ".join(f"{k} {v}" for k, v in pk.items())
    return FILLED, f"Python {f.environment.get('python')}, {versions}; {device}"


def _initialisation(f: RunFacts) -> Answer:
    p, t = f.cfg.model.pretrained, f.cfg.train
    seeds = f"seeds {', '.join(map(str, t.seeds))}" if len(t.seeds) > 1 else f"seed {t.seed}"
    # the file's name only: the report (and its redacted copy) names no directory of the machine
    return FILLED, (f"from local weights {Path(p).name}" if p else f"random (PyTorch defaults), {seeds}")


def _model_selection(f: RunFacts) -> Answer:
    t = f.cfg.train
    patience = f" (patience {t.patience})" if t.patience else ""
    if f.cfg.validation.scheme == "nested":
        point = (
            "the search point with the best pooled inner validation AUC (ties: the earlier) and "
            if f.cfg.search
            else ""
        )
        return FILLED, (
            f"per outer fold: {point}the median of its inner folds' best epochs (by validation {t.select}"
            f"{patience}); the model is then refitted on all the outer fold's training patients for that many "
            "epochs, without validation (nested.json)"
        )
    where = "on the val split" if f.cfg.validation.scheme == "holdout" else "per fold"
    members = " of each member" if _n_members(f.cfg) > 1 else ""
    return FILLED, f"the epoch with the best validation {t.select} {where}{members}{patience}"


def _ensembling(f: RunFacts) -> Answer:
    tta = (
        "; test-time augmentation: the mean over every mirrored view (evaluation.tta: flips)"
        if f.cfg.evaluation.tta == "flips"
        else ""
    )
    members, holdout = _n_members(f.cfg), f.cfg.validation.scheme == "holdout"
    if _ensembled(f.cfg):
        own = "its model" if holdout else "its fold model that did not train on the patient"
        return FILLED, (
            f"each test image's probability is the mean over {members} members ({_members_text(f.cfg)}; "
            f"evaluation.ensemble mean), each member scoring it with {own}; every member's figures, their "
            f"spread and the ensemble against the first member are under Repeats and seeds{tta}"
        )
    if members > 1:
        text = (
            f"none: the figures are the first of {members} members' (evaluation.ensemble none); the other "
            "members give the spread under Repeats and seeds"
        )
        return (FILLED, text + tta) if tta else (NOT_DONE, text)
    if not holdout:
        return (
            FILLED,
            "none in the evaluation (each patient is scored by one fold model); "
            f"`cohortnet predict` averages the fold models{tta}",
        )
    return (FILLED, f"a single model{tta}") if tta else (NOT_DONE, "a single model")


def _uncertainty(f: RunFacts) -> Answer:
    ev = f.cfg.evaluation
    boot = f", {ev.n_bootstrap} bootstrap replicates" if ev.ci_method.startswith("bootstrap") else ""
    return FILLED, f"95% CIs: AUC by {ev.ci_method}{boot}; proportions by Wilson intervals"


def _robustness(f: RunFacts) -> Answer:
    if f.metrics.get("subgroups"):
        return PARTIAL, "subgroup analyses; other sensitivity analyses are for the author"
    return AUTHOR, ""


def _explainability(f: RunFacts) -> Answer:
    e = f.explanations
    if not e:
        return NOT_DONE, "no explanations in this run"
    if e.get("skipped"):
        return NOT_DONE, f"explanations skipped: {e['skipped']}"
    n = e.get("n_cases", 0)
    return (
        PARTIAL,
        f"{e.get('method')} maps (ReLU, scaled to [0, 1]) of {n} chosen test cases; "
        "their clinical reading is for the author",
    )


def _internal(f: RunFacts) -> Answer:
    if f.external:
        return (
            FILLED,
            f"the study's internal figure is shown beside this external one ({f.external.get('internal_scheme')})",
        )
    internal = {
        "kfold": "out-of-fold predictions",
        "leave_one_group_out": "each group predicted by models it did not train",
        "nested": (
            "outer-fold predictions of nested cross-validation: each outer test fold is unseen by its fold's "
            "search, epoch choice and refit"
        ),
    }
    text = internal.get(f.cfg.validation.scheme, "the held-out test split")
    if _ensembled(f.cfg):
        text += f", averaged over {_n_members(f.cfg)} members ({_members_text(f.cfg)})"
    return FILLED, text


def _external(f: RunFacts) -> Answer:
    if f.external:
        return FILLED, "this report is the external test of the study's models"
    return NOT_DONE, "no external testing in this run (`cohortnet predict` on a labelled cohort reports it)"


def _diagnostic(f: RunFacts) -> Answer:
    m = f.metrics
    if m.get("sensitivity") is None:
        return AUTHOR, ""
    return (
        FILLED,
        f"sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f} with 95% CIs and the 2×2 table",
    )


def _failures(f: RunFacts) -> Answer:
    e = f.explanations
    if e and not e.get("skipped"):
        return PARTIAL, "the most confident false positives and negatives and borderline cases are shown with maps"
    return PARTIAL, "the 2×2 table at the locked threshold; a review of the errors is for the author"


def _technical(f: RunFacts) -> Answer:
    return FILLED, "config.yaml, environment.json, splits.csv and data_hashes.csv reproduce the run"


FILLS: dict[str, Fill] = {
    "data_sources": _data_sources,
    "centres": _centres,
    "eligibility": _eligibility,
    "preprocessing": _preprocessing,
    "outcome": _outcome,
    "inputs": _inputs,
    "sample_size": _sample_size,
    "missing_data": _missing_data,
    "partitioning": _partitioning,
    "disjoint": _disjoint,
    "model": _model,
    "model_training": _model_training,
    "heterogeneity": _heterogeneity,
    "measures": _measures,
    "updating": _updating,
    "prediction_rule": _prediction_rule,
    "class_imbalance": _class_imbalance,
    "fairness": _fairness,
    "threshold": _threshold,
    "shift": _shift,
    "code": _code,
    "flow": _flow_answer,
    "characteristics": _characteristics,
    "analysis_counts": _analysis_counts,
    "model_object": _model_object,
    "performance": _performance,
    "input_quality": _input_quality,
    "study_goal": _study_goal,
    "subsets": _subsets,
    "deidentification": _deidentification,
    "acquisition": _acquisition,
    "software": _software,
    "initialisation": _initialisation,
    "model_selection": _model_selection,
    "ensembling": _ensembling,
    "uncertainty": _uncertainty,
    "robustness": _robustness,
    "explainability": _explainability,
    "internal": _internal,
    "external": _external,
    "diagnostic": _diagnostic,
    "failures": _failures,
    "technical_details": _technical,
}


def fill_checklist(facts: RunFacts) -> tuple[dict[str, Any], pd.DataFrame]:
    """(header, one row per item: guideline, item, section, title, status, answer, where)."""
    header, items = load_items()
    # a flow whose filter values are labels (cohort.redact_flow): the checklist may leave the run folder
    header["redacted"] = bool((_flow(facts).get("filter") or {}).get("redacted"))
    rows = []
    for item in items:
        fill = FILLS.get(item.get("fill") or "")
        status, answer = fill(facts) if fill else (AUTHOR, "")
        where = f"#{item['where']}" if item.get("where") and status != AUTHOR else ""
        rows.append(
            {
                "guideline": item["guideline"],
                "item": str(item["item"]),
                "section": item["section"],
                "title": item["title"],
                "status": status,
                "answer": answer,
                "where": where,
            }
        )
    return header, pd.DataFrame(rows)
