"""Nested cross-validation (``validation.scheme: nested`` with a ``search`` space).

For each outer fold, every search point is trained on each inner fold of the outer fold's training
patients, its epoch chosen on the inner validation patients (``fold_<k>/inner_<i>_point_<p>/``).
The point whose pooled inner validation scores (one score per patient, every training patient
validated once) have the highest AUC is chosen (ties: the earlier point), with the median of its
inner folds' best epochs. The outer model is then refitted on all of the outer fold's training
patients with that point for that many epochs of its schedule, without validation, and predicts
the outer test patients, which none of its fold's choices has seen. Its validation rows are the
chosen point's inner validation scores. As in plain k-fold, the study's threshold rule is locked on
every fold's validation rows pooled, so a patient tested in one fold can be among the validation
patients of another fold's inner models (one threshold for the study, never fitted on test scores).
``nested.json`` records every inner AUC, each fold's choice and how often each point was chosen.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import crossval, runfolder
from pipeline.config import WorkflowConfig, point_config, search_grid
from pipeline.errors import ValidationError
from pipeline.manifest import Cohort
from pipeline.reporting import artifacts
from pipeline.schema import (
    EXCLUDED_FILE,
    FOLD,
    FOLD_DONE_FILE,
    IMAGE_ID,
    INNER,
    NESTED_FILE,
    PATIENT_ID,
    PATIENTS_FILE,
    PREDICTIONS_FILE,
    ROLE,
    TARGET,
)

log = logging.getLogger(__name__)


def _variant(cfg: WorkflowConfig) -> str:
    """Points with the same data section share one preprocessing."""
    return json.dumps(cfg.to_dict()["data"], sort_keys=True)


def _prepare_points(
    cfg: WorkflowConfig, cohort: Cohort, run: Any, hashes: dict[str, str]
) -> tuple[list[WorkflowConfig], dict[str, Any], set[str]]:
    """Each point's config, one preprocessing per distinct data section, and the images excluded
    by any of them (excluded for every point, so the points are compared on the same images)."""
    from pipeline.datasets import prepare_for_workflow

    points = [point_config(cfg, p) if p else cfg for p in search_grid(cfg)]
    prepared: dict[str, Any] = {}
    for point in points:
        key = _variant(point)
        if key not in prepared:
            prepared[key] = prepare_for_workflow(
                point, cohort.table, hashes, device=None if run.dask else run.device, progress=run.progress
            )
    failures = pd.concat([p.failures for p in prepared.values()], ignore_index=True).drop_duplicates(IMAGE_ID)
    if run.ctx.is_main:
        artifacts.write_csv(run.run_dir / EXCLUDED_FILE, failures)
    log.info(
        "nested CV: %d search point(s), %d preprocessing(s), %d image(s) excluded",
        len(points),
        len(prepared),
        len(failures),
    )
    return points, prepared, set(failures[IMAGE_ID]) if len(failures) else set()


def run_nested(cfg: WorkflowConfig, cohort: Cohort, splits: pd.DataFrame, run: Any, hashes: dict[str, str]) -> None:
    """Both levels: the inner jobs, the choice per outer fold, then the refitted outer folds."""
    from pipeline.study import FoldJob, role_items, run_jobs

    points, prepared, excluded = _prepare_points(cfg, cohort, run, hashes)
    table = cohort.table.set_index(IMAGE_ID)
    usable = table[~table.index.isin(excluded)]

    def items(point: WorkflowConfig, part: pd.DataFrame) -> dict[str, Any]:
        return role_items(prepared[_variant(point)], usable, part)

    outer = crossval.outer_level(splits)
    inner = splits[splits[INNER].astype(int) >= 0]
    inner_jobs = []
    for (fold, i), part in inner.groupby([FOLD, INNER], sort=True):
        for p, point in enumerate(points):
            seed = cfg.train.seed + 1000 * (int(str(i)) + 1) + int(str(fold))
            job = FoldJob(int(str(fold)), inner_folder(int(str(fold)), int(str(i)), p), seed, point)
            inner_jobs.append((job, items(point, part)))
    _check_jobs(inner_jobs)
    run_jobs(cfg, run, inner_jobs, cohort)
    choices = choose_points(run.run_dir, cfg, outer, inner, len(points), run.seal)
    outer_jobs = []
    for key, part in outer.groupby(FOLD, sort=True):
        fold = int(str(key))
        choice = choices[fold]
        p, n_inner = choice["point"], choice["n_inner"]
        job = FoldJob(
            fold,
            f"fold_{fold}",
            cfg.train.seed + fold,
            points[p],
            stop_after=choice["epoch"],
            adopt_val=tuple(inner_folder(fold, i, p) for i in range(n_inner)),
        )
        outer_jobs.append((job, items(points[p], part)))
    _check_jobs(outer_jobs)
    run_jobs(cfg, run, outer_jobs, cohort)
    if run.ctx.is_main:
        artifacts.write_json(run.run_dir / NESTED_FILE, nested_record(cfg, choices))


def inner_folder(fold: int, inner: int, point: int) -> str:
    return f"fold_{fold}/inner_{inner}_point_{point}"


def parse_inner_folder(name: str) -> tuple[int, int]:
    """(inner fold, point) of an inner job's folder name ``inner_<i>_point_<p>`` (``inner_folder``)."""
    _, inner, _, point = name.split("_")
    return int(inner), int(point)


def _check_jobs(jobs: list[tuple[Any, dict[str, Any]]]) -> None:
    """Every job trains on both classes and has images to choose on or to test."""
    problems = []
    for job, items in jobs:
        classes = {int(it[TARGET]) for it in items["train"]}
        if len(classes) < 2:
            problems.append(f"{job.label}: the usable training images are not of both classes")
        if not items["val"] and not items["test"]:
            problems.append(f"{job.label}: no usable validation or test image")
    if problems:
        raise ValidationError(problems, "nested cross-validation after exclusions")


def _pooled_auc(frames: list[pd.DataFrame]) -> float | None:
    """AUC of one point's inner validation scores, one (mean) score per patient."""
    from sklearn.metrics import roc_auc_score

    rows = pd.concat(frames, ignore_index=True)
    per_patient = rows.groupby(PATIENT_ID).agg(score=("score", "mean"), target=("target", "first"))
    if per_patient["target"].nunique() < 2:
        return None
    return float(roc_auc_score(per_patient["target"], per_patient["score"]))


def choose_points(
    run_dir: Any, cfg: WorkflowConfig, outer: pd.DataFrame, inner: pd.DataFrame, n_points: int, seal: str
) -> dict[int, dict[str, Any]]:
    """Per outer fold: each point's pooled inner validation AUC and best epochs, and the choice."""
    table = runfolder.read_table(run_dir / PATIENTS_FILE, run_dir, (PATIENT_ID, TARGET), dtype={PATIENT_ID: str})
    patients: pd.Series = table.set_index(PATIENT_ID)[TARGET]
    choices = {}
    for fold in sorted(int(str(f)) for f in outer[FOLD].unique()):
        n_inner = int(inner.loc[inner[FOLD] == fold, INNER].nunique())
        per_point: list[dict[str, Any]] = []
        for p in range(n_points):
            frames, epochs = [], []
            for i in range(n_inner):
                folder = run_dir / inner_folder(fold, i, p)
                record = runfolder.job_record(folder / FOLD_DONE_FILE, seal)
                epochs.append(int(record["best_epoch"]))
                preds = runfolder.read_table(
                    folder / PREDICTIONS_FILE, run_dir, (PATIENT_ID, ROLE), dtype={PATIENT_ID: str, IMAGE_ID: str}
                )
                val = preds[preds[ROLE] == "val"]
                frames.append(val.assign(target=val[PATIENT_ID].map(patients).to_numpy()))
            per_point.append({"point": p, "inner_auc": _pooled_auc(frames), "best_epochs": epochs})
        ranked = [(-(q["inner_auc"] if q["inner_auc"] is not None else -1.0), q["point"]) for q in per_point]
        best = min(ranked)[1]
        epoch = max(1, int(np.floor(np.median(per_point[best]["best_epochs"]) + 0.5)))
        choices[fold] = {"point": best, "epoch": epoch, "n_inner": n_inner, "points": per_point}
        log.info(
            "outer fold %d: point %d chosen (inner AUC %s), refit for %d epoch(s)",
            fold,
            best,
            per_point[best]["inner_auc"],
            epoch,
        )
    return choices


def nested_record(cfg: WorkflowConfig, choices: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """What nested.json holds: the search space, every fold's inner AUCs and choice, the stability."""
    grid = search_grid(cfg)
    counts = Counter(c["point"] for c in choices.values())
    return {
        "outer_folds": cfg.validation.folds,
        "inner_folds": cfg.validation.inner_folds,
        "search": {k: list(v) for k, v in cfg.search.items()},
        "points": grid,
        "folds": [{"fold": f, **c} for f, c in sorted(choices.items())],
        "chosen_counts": [{"point": p, "values": grid[p], "folds": counts.get(p, 0)} for p in range(len(grid))],
        "stability": max(counts.values()) / len(choices) if choices else None,
    }


def chosen_config(run_dir: Path, cfg: WorkflowConfig) -> WorkflowConfig | None:
    """The model and input the outer fold models share: the study's config, or for nested CV its
    config with the model/data values of the points the folds chose (None when the folds chose
    points that differ in model or data: their models do not form one ensemble). Points that
    differ only in train.* keys still give models of one kind."""
    path = run_dir / NESTED_FILE
    if cfg.validation.scheme != "nested" or not path.is_file():
        return cfg
    record = runfolder.read_record(path, run_dir)
    chosen = [record["points"][f["point"]] for f in record["folds"]]
    kinds = [{k: v for k, v in p.items() if not k.startswith("train.")} for p in chosen]
    if any(k != kinds[0] for k in kinds):
        return None
    return point_config(cfg, kinds[0]) if kinds[0] else cfg
