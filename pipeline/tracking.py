"""A finished study logged to MLflow (``tracking.mlflow``; the ``mlflow`` extra), where researchers
already compare their runs: one parent run per study run with the resolved parameters, the final
metrics and ``report.html`` (the redacted copy) / ``metrics_redacted.json`` as artifacts, and one
nested run per fold with its per-epoch losses and validation AUC.

Nothing identifying goes to the store: paths are reduced to file names (the manifest by its name
and SHA-256) and the filter's values to their number; no patient id, table of patients or image is
logged, and no value of a sensitive column (the filter's and ``validation.group``'s: hospitals,
scanners) in clear. The store's ``report.html`` is the run folder's ``report_redacted.html``: the
report without the per-patient table, the excluded images' ids, the Grad-CAM cases and the command
line, with those values as labels (``site 1``, ``site 2``; ``reporting.redact``); its metrics are
``metrics_redacted.json``, ``metrics.json`` with the same labels (subgroup values, warnings), built
with the report from one value map. Without them (a folder from before them, or a copy refused
because a value would show) nothing is logged in their place, never the run folder's own files.
The run folder stays the record; tracking is a copy. A store that cannot be reached is a warning,
never a failed study, and ``tracking.json`` in the run folder names the MLflow run that was written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import WorkflowConfig
from pipeline.reporting import artifacts, redact
from pipeline.schema import (
    ENVIRONMENT_FILE,
    FOLD,
    FOLD_DONE_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    NESTED_FILE,
    REPEAT,
    REPORT_FILE,
    SEED,
    SPLITS_FILE,
)

log = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
LOCAL = "local"
_HEADLINE = ("auc", "auc_ci_low", "auc_ci_high", "n_patients", "n_positive", "threshold")
_AT_THRESHOLD = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "balanced_accuracy", "f1")
_EPOCH_COLUMNS = ("train_loss", "val_loss", "val_auc")
_BATCH = 900


def _now() -> int:
    return int(time.time() * 1000)


def tracking_uri(cfg: WorkflowConfig) -> str | None:
    """The store a run logs to: None (off), a file store under output_dir ("local"), or the URI."""
    uri = cfg.tracking.mlflow
    if not uri:
        return None
    if uri == LOCAL:
        return (cfg.output_dir / "mlruns").resolve().as_uri()
    return uri


def params(cfg: WorkflowConfig, environment: dict[str, Any]) -> dict[str, str]:
    """The resolved workflow as flat MLflow parameters (paths as their file names only)."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
            return
        key = prefix.rstrip(".")
        # paths as file names, the filter's kept values (patients, hospitals) by their number; roots counted
        node = len(node or ()) if key == "data.image_roots" else redact.leaf(key, node)
        flat[key] = str(node)[:500]  # MLflow's limit on a parameter value

    walk({k: v for k, v in cfg.to_dict().items() if k != "tracking"}, "")  # where it logs is not a parameter
    flat["manifest_sha256"] = str(environment.get("manifest_sha256", ""))
    flat["git_commit"] = str(environment.get("git_commit") or "")
    flat["cohortnet"] = str((environment.get("packages") or {}).get("cohortnet", ""))
    return flat


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The figures worth comparing across runs, as numbers."""
    out = {k: metrics[k] for k in (*_HEADLINE, *_AT_THRESHOLD) if isinstance(metrics.get(k), int | float)}
    cal = metrics.get("calibration") or {}
    for key in ("brier", "calibration_intercept", "calibration_slope", "ece"):
        if isinstance(cal.get(key), int | float):
            out[f"calibration_{key}" if not key.startswith("calibration") else key] = cal[key]
    folds = metrics.get("folds") or {}
    for key in ("auc_mean", "auc_sd"):
        if isinstance(folds.get(key), int | float):
            out[f"folds_{key}"] = folds[key]
    members = metrics.get("members") or {}  # seeds and repeats: the spread of the members' AUCs
    for key in ("mean", "sd", "min", "max"):
        if isinstance((members.get("auc") or {}).get(key), int | float):
            out[f"members_auc_{key}"] = members["auc"][key]
    if isinstance((metrics.get("nested") or {}).get("stability"), int | float):
        out["nested_stability"] = metrics["nested"]["stability"]
    return {k: float(v) for k, v in out.items()}


def log_run(run_dir: Path, cfg: WorkflowConfig) -> dict[str, Any] | None:
    """Log the finished run folder ``run_dir`` to the workflow's MLflow store; returns what
    ``tracking.json`` records, or None when tracking is off. Never raises for the store."""
    uri = tracking_uri(cfg)
    if uri is None:
        return None
    done = run_dir / TRACKING_FILE
    if done.is_file() and json.loads(done.read_text()).get("tracking_uri") == uri:
        log.info("already logged to MLflow (%s names the run)", TRACKING_FILE)
        return None
    if uri.startswith("file:"):
        # MLflow 3 keeps file stores in maintenance mode behind this switch; the workflow asked for one
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    # a server that does not answer costs seconds, not MLflow's default minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        import mlflow

        record = _log(mlflow, uri, run_dir, cfg)
    except ImportError:
        log.warning("tracking.mlflow is set but MLflow is not installed: pip install 'cohortnet[mlflow]'")
        return None
    except Exception as exc:  # the study stands whatever the store does
        log.warning("MLflow tracking failed (%s: %s); the run folder is complete", type(exc).__name__, exc)
        return None
    artifacts.write_json(run_dir / TRACKING_FILE, record)
    log.info("logged to MLflow %s: experiment %s, run %s", uri, record["experiment"], record["run_id"])
    return record


def _log(mlflow: Any, uri: str, run_dir: Path, cfg: WorkflowConfig) -> dict[str, Any]:
    from mlflow.entities import Metric, Param

    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    env_path = run_dir / ENVIRONMENT_FILE
    environment = json.loads(env_path.read_text()) if env_path.is_file() else {}
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    name = cfg.tracking.experiment or cfg.study
    found = client.get_experiment_by_name(name)
    experiment = found.experiment_id if found is not None else client.create_experiment(name)
    tags = {"cohortnet.run_id": run_dir.name, "cohortnet.study": cfg.study, "scheme": cfg.validation.scheme}
    parent = client.create_run(experiment, run_name=run_dir.name, tags=tags)
    rid = parent.info.run_id
    try:
        client.log_batch(
            rid,
            params=[Param(k, v) for k, v in params(cfg, environment).items()],
            metrics=[Metric(k, v, _now(), 0) for k, v in final_metrics(metrics).items()],
        )
        _log_files(client, rid, run_dir)
        dones = sorted([*run_dir.glob(f"fold_*/{FOLD_DONE_FILE}"), *run_dir.glob(f"fold_*/inner_*/{FOLD_DONE_FILE}")])
        describe = _job_descriptions(run_dir)
        folds = [_log_fold(client, experiment, rid, d, (Metric, Param), describe(d)) for d in dones]
    except Exception:
        client.set_terminated(rid, "FAILED")  # a half-logged run is marked, not left running
        raise
    client.set_terminated(rid, "FINISHED")
    return {"tracking_uri": uri, "experiment": name, "experiment_id": experiment, "run_id": rid, "fold_runs": folds}


def _log_files(client: Any, rid: str, run_dir: Path) -> None:
    """The redacted report (as the store's ``report.html``) and ``metrics_redacted.json``; never the
    run folder's own report (it has the patients) or ``metrics.json`` (the sensitive values)."""
    shared = run_dir / redact.REDACTED_REPORT_FILE
    if shared.is_file():
        client.log_text(rid, shared.read_text(encoding="utf-8"), REPORT_FILE)
    elif (run_dir / REPORT_FILE).is_file():
        log.warning(
            "no %s in the run folder: no report logged to MLflow; the copy was refused when the report was "
            "built (the error logged then names the column and the cause) or the report was built without tracking",
            shared.name,
        )
    metrics = run_dir / redact.REDACTED_METRICS_FILE
    if metrics.is_file():
        client.log_artifact(rid, str(metrics))
    elif (run_dir / METRICS_FILE).is_file():
        log.warning(
            "no %s in the run folder: no metrics file logged to MLflow; the copy was refused when the report was "
            "built (the error logged then names the column and the cause) or the report was built without tracking",
            metrics.name,
        )


def _job_descriptions(run_dir: Path) -> Any:
    """done.json path -> (run name, extra params) of its job: a member's repeat and seed, an inner
    job's search point (model settings only: nothing identifying)."""
    splits = pd.read_csv(run_dir / SPLITS_FILE) if (run_dir / SPLITS_FILE).is_file() else pd.DataFrame()
    members = {}
    if {REPEAT, SEED} <= set(splits.columns):
        members = {int(f): (int(r), int(s)) for f, r, s in splits.groupby(FOLD)[[REPEAT, SEED]].first().itertuples()}
    nested = run_dir / NESTED_FILE
    points = json.loads(nested.read_text())["points"] if nested.is_file() else []

    def describe(done: Path) -> tuple[str, dict[str, str]]:
        folder = done.parent.relative_to(run_dir)
        fold = int(folder.parts[0].removeprefix("fold_"))
        extra: dict[str, str] = {}
        if fold in members:
            extra.update(repeat=str(members[fold][0]), seed=str(members[fold][1]))
        if len(folder.parts) > 1:  # fold_<k>/inner_<i>_point_<p>
            from pipeline.nested import parse_inner_folder

            inner, point = parse_inner_folder(folder.parts[1])
            extra.update(inner_fold=str(inner), point=str(point))
            extra.update({f"point.{k}": str(v) for k, v in (points[point] if points else {}).items()})
        return str(folder).replace("_", " ").replace("/", " "), extra

    return describe


def _log_fold(
    client: Any, experiment: str, parent: str, done: Path, entities: tuple[Any, Any], job: tuple[str, dict[str, str]]
) -> str:
    """One nested run per job (fold, member's fold, inner fold of a search point): its best epoch
    and per-epoch curves (history.csv); ``entities``: MLflow's Metric and Param classes; ``job``:
    its run name and extra params (``_job_descriptions``)."""
    Metric, Param = entities
    info = json.loads(done.read_text())
    name, extra = job
    tags = {"mlflow.parentRunId": parent, "fold": str(info["fold"]), **{k: v for k, v in extra.items() if "." not in k}}
    run = client.create_run(experiment, run_name=name, tags=tags)
    rid = run.info.run_id
    now = _now()
    values = [Metric(k, float(info[k]), now, 0) for k in ("best_epoch", "best_val_auc", "seconds")
              if isinstance(info.get(k), int | float)]  # fmt: skip
    history = done.parent / HISTORY_FILE
    if history.is_file():
        table = pd.read_csv(history)
        for row in table.itertuples(index=False):
            step = int(getattr(row, "epoch", 0))
            for column in _EPOCH_COLUMNS:
                value = getattr(row, column, None)
                if value is not None and pd.notna(value):
                    values.append(Metric(column, float(value), now, step))
    fold_params = [Param("fold", str(info["fold"])), Param("precision", str(info.get("precision")))]
    fold_params += [Param(k, v) for k, v in extra.items()]
    for start in range(0, max(len(values), 1), _BATCH):  # MLflow takes at most 1000 metrics a call
        client.log_batch(rid, params=fold_params if start == 0 else [], metrics=values[start : start + _BATCH])
    client.set_terminated(rid, "FINISHED")
    return str(rid)
