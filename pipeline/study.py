"""The only module that wires the stages together.

``run_study(cfg)``: manifest -> validated cohort -> splits -> preprocessing (once per image) ->
per fold: train on ``train`` patients, choose the epoch on ``val`` patients, predict ``test``
patients -> pooled predictions -> per-patient table -> metrics -> report. Each step leaves a
file in the run folder that the next one reads, so ``finalize_run`` (``cohortnet report``)
rebuilds everything downstream of the predictions without retraining.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import crossval, runfolder
from pipeline.config import (
    WorkflowConfig,
    config_from_dict,
    dump_config,
    load_config,
    read_workflow,
    split_seed,
    study_members,
)
from pipeline.errors import CohortnetError, NonFiniteError, ValidationError
from pipeline.logs import add_run_log
from pipeline.manifest import Cohort, load_manifest
from pipeline.provenance import MISSING, environment_record, file_sha256, git_commit, image_hashes, job_environment
from pipeline.reporting import artifacts
from pipeline.reporting.cohort import flow_source
from pipeline.resources import is_file
from pipeline.schema import (
    CHECKPOINT_FILE,
    DATA_HASHES_FILE,
    ENVIRONMENT_FILE,
    EXCLUDED_FILE,
    FLOW_FILE,
    FOLD,
    FOLD_DONE_FILE,
    HISTORY_FILE,
    IMAGE_ID,
    MEMBER_COLUMNS,
    MEMBER_PREDICTIONS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    NESTED_FILE,
    PATIENT_ID,
    PATIENTS_FILE,
    PER_PATIENT_FILE,
    PREDICTIONS_FILE,
    REPEAT,
    REPORT_FILE,
    RESOLVED_CONFIG_FILE,
    ROLE,
    SCORE,
    SCORE_SINGLE,
    SCORE_SINGLE_MODEL,
    SEED,
    SPLITS_FILE,
    TARGET,
    VAL_PREDICTIONS_FILE,
)

if TYPE_CHECKING:
    from pipeline.evaluation import EvaluationOptions

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- validation


def _manifest_options(
    cfg: WorkflowConfig | None, raw: dict[str, Any], base: Path
) -> tuple[Path | None, dict[str, Any]]:
    """The manifest and how to read it: from the checked workflow, or, when the workflow has
    problems, from its raw sections with the workflow's own defaults for what they lack."""
    from pipeline.config import TaskConfig, ValidationConfig

    if cfg is not None:
        return cfg.manifest, {
            "label_col": cfg.task.label,
            "positive": cfg.task.positive,
            "require_split": cfg.validation.scheme == "holdout",
            "keep": dict(cfg.filter) or None,
            "image_roots": cfg.data.image_roots,
        }

    def section(name: str) -> dict[str, Any]:
        return raw[name] if isinstance(raw.get(name), dict) else {}

    task, validation = section("task"), section("validation")
    manifest = raw.get("manifest")
    return (base / manifest if isinstance(manifest, str) else None), {
        "label_col": str(task.get("label", TaskConfig.label)),
        "positive": task.get("positive", TaskConfig.positive),
        "require_split": validation.get("scheme", ValidationConfig.scheme) == "holdout",
        "keep": section("filter") or None,
    }


def validate_workflow(path: Path | str, overrides: tuple[str, ...] | list[str] = ()) -> tuple[WorkflowConfig, Cohort]:
    """Check the workflow and its manifest before any work; one ValidationError lists every problem."""
    raw = read_workflow(path, overrides)
    problems: list[str] = []
    cfg = None
    try:
        cfg = config_from_dict(raw, base_dir=Path(path).parent, source=str(path))
    except ValidationError as exc:
        problems += exc.problems
    # Check the manifest too, even when the workflow has problems, so the user sees everything at once.
    manifest, options = _manifest_options(cfg, raw, Path(path).parent)
    cohort = None
    if manifest is not None and is_file(manifest):
        try:
            cohort = load_manifest(manifest, **options)
        except ValidationError as exc:
            problems += [f"manifest: {p}" for p in exc.problems]
    if cfg is not None and cohort is not None:
        problems += _cohort_vs_config(cfg, cohort)
    if cfg is not None and cfg.model.pretrained and is_file(cfg.model.pretrained):
        problems += _pretrained_problems(cfg)
    if problems:
        raise ValidationError(problems, f"workflow {path}")
    assert cfg is not None
    assert cohort is not None
    return cfg, cohort


def _pretrained_problems(cfg: WorkflowConfig) -> list[str]:
    """A pretrained file that cannot be loaded into the model is found at --check, not after preprocessing."""
    from pipeline.models import build_model

    try:
        build_model(cfg.model)
    except CohortnetError as exc:
        return [str(exc)]
    return []


def _cohort_vs_config(cfg: WorkflowConfig, cohort: Cohort) -> list[str]:
    problems = []
    patients = cohort.patients
    if cfg.validation.scheme in ("kfold", "nested"):
        per_class = patients[TARGET].value_counts()
        if per_class.min() < cfg.validation.folds:
            problems.append(
                f"{cfg.validation.folds}-fold cross-validation needs at least {cfg.validation.folds} patients "
                f"per class; the manifest has {per_class.to_dict()} (target 1 = positive)"
            )
    problems += _group_problems(cfg, cohort)
    missing = [c for c in cfg.evaluation.subgroups if c not in cohort.table.columns]
    if missing:
        problems.append(f"evaluation.subgroups: column(s) not in the manifest: {', '.join(missing)}")
    missing = [c for c in cfg.report.covariates if c not in cohort.table.columns]
    if missing:
        problems.append(f"report.covariates: column(s) not in the manifest: {', '.join(missing)}")
    return problems


# --------------------------------------------------------------------------- run folder


def _patient_groups(cohort: Cohort, column: str) -> np.ndarray:
    """Each patient's value of ``column`` (aligned with ``cohort.patients``), as text."""
    values = cohort.table.groupby(PATIENT_ID, sort=False)[column].first().astype(str).str.strip()
    return cohort.patients[PATIENT_ID].map(values).to_numpy()


def _group_problems(cfg: WorkflowConfig, cohort: Cohort) -> list[str]:
    """A leave-one-group-out column must exist, give each patient one value, and hold out groups
    whose complement can still train and validate."""
    column = cfg.validation.group
    if cfg.validation.scheme != "leave_one_group_out" or not column:
        return []
    table = cohort.table
    if column not in table.columns:
        return [f"validation.group: column {column!r} is not in the manifest"]
    values = table[column].astype(str).str.strip()
    if (values == "").any():
        return [f"validation.group: {int((values == '').sum())} image(s) have no {column}"]
    spread = values.groupby(table[PATIENT_ID]).nunique()
    problems = []
    if (spread > 1).any():
        problems.append(
            f"validation.group: {int((spread > 1).sum())} patient(s) have images under more than one {column} "
            "(a patient must belong to one group)"
        )
    per_group = table.groupby(values)[PATIENT_ID].nunique()
    if len(per_group) < 2:
        problems.append(
            f"validation.group: leave-one-group-out needs at least 2 values of {column}, found {len(per_group)}"
        )
        return problems
    classes = {str(v): set(t.astype(int)) for v, t in table[TARGET].groupby(values)}
    for value in per_group.index:
        rest: set[int] = set().union(*(classes[str(v)] for v in per_group.index if v != value))
        if rest != {0, 1}:
            problems.append(f"validation.group: without {column} {value!r} the other groups hold one class only")
        elif classes[str(value)] != {0, 1}:
            log.warning("%s %r holds one class only: its held-out AUC is undefined", column, value)
    return problems


def new_run_dir(cfg: WorkflowConfig, run_id: str | None = None) -> Path:
    base = cfg.output_dir / cfg.study
    run_id = run_id or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = base / run_id
    n = 1
    while run_dir.exists() and not (run_dir / RESOLVED_CONFIG_FILE).is_file():
        n += 1
        run_dir = base / f"{run_id}-{n}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise artifacts.explain_os_error(exc, run_dir / RESOLVED_CONFIG_FILE) from None
    return run_dir


def _record_inputs(
    run_dir: Path, cfg: WorkflowConfig, cohort: Cohort, splits: pd.DataFrame
) -> tuple[dict[str, str], str]:
    """Seal a new run folder or check a resumed one (nothing is overwritten when its inputs
    changed), then write the resolved config, environment, data hashes, patients and splits.
    Returns image_id -> content hash and the seal's digest."""
    hashes = image_hashes(cohort.table[IMAGE_ID].tolist(), cohort.table["path"].tolist())
    check_duplicate_content(cohort.table, hashes)
    manifest_sha = file_sha256(cohort.manifest_path)
    weights = file_sha256(Path(cfg.model.pretrained)) if cfg.model.pretrained else None
    seal = runfolder.fingerprint(cfg.to_dict(), manifest_sha, hashes, splits, git_commit(), weights)
    if runfolder.seal_or_check(run_dir, seal):
        log.info("resuming: the run folder's seal matches this run's inputs")
    artifacts.write_text(run_dir / RESOLVED_CONFIG_FILE, dump_config(cfg))
    artifacts.write_csv(
        run_dir / DATA_HASHES_FILE, pd.DataFrame({IMAGE_ID: list(hashes), "sha256": list(hashes.values())})
    )
    env = environment_record(cfg.train.seed, {"manifest_sha256": manifest_sha, "n_images": len(cohort.table)})
    artifacts.write_json(run_dir / ENVIRONMENT_FILE, env)
    artifacts.write_csv(run_dir / PATIENTS_FILE, _patients_table(cohort))
    flow = flow_source(cohort.source_counts, cohort.table, cohort.manifest_path, cfg.filter)
    artifacts.write_json(run_dir / FLOW_FILE, flow)
    artifacts.write_csv(run_dir / SPLITS_FILE, splits)
    return hashes, seal["digest"]


def check_duplicate_content(table: pd.DataFrame, hashes: dict[str, str]) -> None:
    """The same image content under two patient ids is leakage waiting to happen (one copy can
    train, the other be tested): refuse, naming the patients (as the manifest names them)."""
    frame = pd.DataFrame({IMAGE_ID: list(hashes), "sha256": list(hashes.values())}).merge(
        table[[IMAGE_ID, PATIENT_ID]], on=IMAGE_ID
    )
    frame = frame[frame["sha256"] != MISSING]
    shared = frame.groupby("sha256")[PATIENT_ID].agg(lambda p: sorted(set(p)))
    pairs = [ids for ids in shared if len(ids) > 1]
    if pairs:
        problems = [f"identical image content under patients {', '.join(ids[:5])}" for ids in pairs[:20]]
        if len(pairs) > 20:
            problems.append(f"... and {len(pairs) - 20} more groups")
        problems.append("one patient under two ids would leak between training and test: fix the manifest")
        raise ValidationError(problems, "cohort")


def _patients_table(cohort: Cohort) -> pd.DataFrame:
    """What the report needs of the cohort, kept in the run folder (``report`` never reads the manifest)."""
    labels = cohort.table.groupby(PATIENT_ID, sort=False)[cohort.label].first()
    patients = cohort.patients
    return patients.assign(**{cohort.label: patients[PATIENT_ID].map(labels).to_numpy()})


@dataclass(frozen=True)
class RunCohort:
    """The cohort as the run folder records it: label column, positive value, patients table."""

    label_col: str
    positive: str
    patients: pd.DataFrame  # patient_id, target, extra columns

    @classmethod
    def from_cohort(cls, cohort: Cohort) -> RunCohort:
        return cls(cohort.label, str(cohort.positive), cohort.patients)

    @classmethod
    def from_run(cls, run_dir: Path, cfg: WorkflowConfig) -> RunCohort:
        path = run_dir / PATIENTS_FILE
        if not path.is_file():  # a run folder from before patients.csv: the manifest, if still there
            return cls.from_cohort(
                load_manifest(
                    cfg.manifest,
                    label_col=cfg.task.label,
                    positive=cfg.task.positive,
                    check_files=False,
                    keep=cfg.filter,
                )
            )
        label = cfg.task.label
        table = runfolder.read_table(path, run_dir, (PATIENT_ID, TARGET, label), dtype=str, keep_default_na=False)
        table[TARGET] = pd.to_numeric(table[TARGET]).astype(int)  # whole numbers: read_table checked
        positives = table.loc[table[TARGET] == 1, label]
        positive = str(positives.iloc[0]) if len(positives) else str(cfg.task.positive)
        return cls(label, positive, table.drop(columns=[label]))


def make_splits(cfg: WorkflowConfig, cohort: Cohort) -> pd.DataFrame:
    """The study's split table, checked for leakage. With several members (train.seeds,
    validation.repeats) it stacks one table per member: the seeds of a repeat share its splits."""
    members = study_members(cfg)
    if len(members) == 1:
        splits = _scheme_splits(cfg, cohort, cfg.train.seed)
    else:
        per_repeat = {r: _scheme_splits(cfg, cohort, split_seed(cfg, r)) for r in {r for r, _ in members}}
        splits = crossval.stack_members([(r, seed, per_repeat[r]) for r, seed in members])
    crossval.check_splits(splits, cfg.validation.scheme)
    return splits


def _scheme_splits(cfg: WorkflowConfig, cohort: Cohort, seed: int) -> pd.DataFrame:
    if cfg.validation.scheme == "holdout":
        return crossval.holdout_splits(cohort.table)
    if cfg.validation.scheme == "leave_one_group_out":
        assert cfg.validation.group is not None  # checked with the workflow
        return crossval.leave_one_group_out_splits(
            cohort.patients.assign(**{cfg.validation.group: _patient_groups(cohort, cfg.validation.group)}),
            cfg.validation.group,
            cfg.validation.inner_val_fraction,
            seed,
        )
    if cfg.validation.scheme == "nested":
        v = cfg.validation
        return crossval.nested_splits(cohort.patients, v.folds, v.inner_folds, seed)
    return crossval.kfold_splits(cohort.patients, cfg.validation.folds, cfg.validation.inner_val_fraction, seed)


def fold_seeds(cfg: WorkflowConfig, splits: pd.DataFrame) -> dict[int, int]:
    """Each fold's training seed: train.seed + k for fold k, or, with members, the member's seed + k
    for its k-th fold (so the first member with seed train.seed trains exactly the plain run)."""
    folds = sorted(int(str(f)) for f in splits[FOLD].unique())
    if not crossval.has_members(splits):
        return {f: cfg.train.seed + f for f in folds}
    per_fold = splits.groupby(FOLD)[[REPEAT, SEED]].first()
    out = {}
    for (_, seed), part in per_fold.groupby([REPEAT, SEED], sort=False):
        for k, fold in enumerate(sorted(int(str(f)) for f in part.index)):
            out[fold] = int(str(seed)) + k
    return out


# --------------------------------------------------------------------------- the study


@dataclass
class StudyResult:
    run_dir: Path
    metrics: dict[str, Any]
    seconds: float

    @property
    def report(self) -> Path:
        return self.run_dir / REPORT_FILE


def run_study(
    cfg: WorkflowConfig, cohort: Cohort, *, run_id: str | None = None, progress: bool = True, dask: str | None = None
) -> StudyResult:
    """Run the whole study; returns the run folder and the metrics.

    Under torchrun every rank runs this function: rank 0 creates the run folder and writes every
    file; the others train their share and return empty metrics. With ``dask`` (a scheduler
    address, ``local`` or ``local:N``) the folds are tasks on that cluster (``pipeline.fanout``).
    """
    from pipeline.distributed import broadcast, init_from_env

    start = time.perf_counter()
    check_start(cfg, run_id)  # before the run folder exists
    ctx = init_from_env(cfg.train.device)
    if dask and ctx.enabled:
        raise ValidationError(["--dask runs folds as cluster tasks: start it once, not under torchrun"], "command line")
    if dask and cfg.data.cache == "device":
        raise ValidationError(
            ["--dask: data.cache device keeps tensors on the driver's GPU; use auto, memory or disk"], "workflow"
        )
    if dask:
        from pipeline.fanout import check_scheduler

        check_scheduler(dask)  # before hours of preprocessing, not after
    if dask and cfg.data.cache == "auto":  # tasks read cache files, rather than each getting a copy of the cohort
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache="disk"))
    run_dir = broadcast(ctx, new_run_dir(cfg, run_id) if ctx.is_main else None)
    assert run_dir is not None
    with runfolder.locked(run_dir) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:
            artifacts.clean_stale_temporaries(run_dir)
        metrics = _run_locked(cfg, cohort, run_dir, ctx, progress, dask)
    return StudyResult(run_dir, metrics, time.perf_counter() - start)


def check_start(cfg: WorkflowConfig, run_id: str | None = None) -> None:
    """What a run refuses before it makes its run folder (``run --check`` asks the same): a run id
    that is not a plain name, and a ``train.device`` this machine does not have."""
    if run_id is not None:
        runfolder.check_run_id(run_id)
    if cfg.train.device == "cuda":  # torch is imported only when it matters: --check stays quick
        from pipeline.training import resolve_device

        resolve_device(cfg.train.device)


def _run_locked(
    cfg: WorkflowConfig, cohort: Cohort, run_dir: Path, ctx: Any, progress: bool, dask: str | None = None
) -> dict[str, Any]:
    """The study inside its run folder, which this process holds (rank 0) or shares (other ranks)."""
    from pipeline.distributed import barrier, broadcast

    handler = add_run_log(run_dir) if ctx.is_main else None
    if not ctx.is_main:
        logging.getLogger("pipeline").setLevel(logging.WARNING)
    metrics: dict[str, Any] = {}
    try:
        log.info("study %s: run folder %s", cfg.study, run_dir)
        splits = make_splits(cfg, cohort)
        recorded = broadcast(ctx, _record_inputs(run_dir, cfg, cohort, splits) if ctx.is_main else None)
        assert recorded is not None
        hashes, seal = recorded
        summary = crossval.describe_splits(crossval.primary_splits(splits), cohort.patients)
        log.info("splits (%s):\n%s", cfg.validation.scheme, summary.to_string(index=False))
        run = resolve_run_context(cfg, ctx, run_dir, seal, progress=progress and ctx.is_main)
        run = dataclasses.replace(run, dask=dask)
        train_and_predict(cfg, cohort, splits, run, content_hashes=hashes)
        if ctx.is_main:
            metrics = finalize_run(run_dir, cfg, cohort)
            _track(run_dir, cfg)
        barrier(ctx)
    except CohortnetError as exc:
        if handler is not None:  # the run log says why the run stopped (the CLI tells the console)
            handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "run stopped: %s", (exc,), None))
        raise
    finally:
        if handler is not None:
            logging.getLogger("pipeline").removeHandler(handler)
            handler.close()
    return metrics


@dataclass(frozen=True)
class RunContext:
    """Resolved once per run and handed to every stage: distributed context, device, the seal's
    digest, the run folder, and whether to show progress bars (rank 0 only)."""

    ctx: Any  # pipeline.distributed.DistContext
    device: Any  # torch.device
    seal: str
    run_dir: Path
    progress: bool = True
    dask: str | None = None  # folds as tasks on this dask.distributed scheduler (pipeline.fanout)


def resolve_run_context(cfg: WorkflowConfig, ctx: Any, run_dir: Path, seal: str, *, progress: bool) -> RunContext:
    """The device of this rank (and torch's thread count when the workflow sets one), once per run."""
    import torch

    from pipeline.distributed import device_for
    from pipeline.training import resolve_device

    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    return RunContext(ctx, device_for(ctx, resolve_device(cfg.train.device)), seal, run_dir, progress)


@dataclass(frozen=True)
class FoldJob:
    """One training job: the fold its predictions belong to, its folder in the run folder, its
    training seed and, for nested cross-validation, a search point's config, a fixed number of
    epochs without validation (the refit) and the inner folders whose validation rows it adopts."""

    fold: int
    folder: str
    seed: int
    cfg: WorkflowConfig | None = None
    stop_after: int | None = None
    adopt_val: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"fold {self.fold}" if self.folder == f"fold_{self.fold}" else self.folder.replace("/", " ")


def run_jobs(cfg: WorkflowConfig, run: RunContext, jobs: list[tuple[FoldJob, dict[str, Any]]], cohort: Cohort) -> None:
    """Every job without a ``done.json`` yet, one after another, or as tasks on ``run.dask``."""
    from pipeline.distributed import barrier

    table = cohort.table.set_index(IMAGE_ID)
    pending = []
    for job, items in jobs:
        if runfolder.is_finished(run.run_dir / job.folder):
            log.info("%s: already done, skipping", job.label)
        else:
            pending.append((job, items))
    if run.dask:
        from pipeline.fanout import run_folds

        run_folds(cfg, run, pending, table[[PATIENT_ID, cohort.label]], cohort.label)
        return
    for job, items in pending:
        run_job_once(cfg, run, job, items, table, cohort.label)
        barrier(run.ctx)


def run_job_once(
    cfg: WorkflowConfig, run: RunContext, job: FoldJob, items: dict[str, Any], table: pd.DataFrame, label_col: str
) -> None:
    """``run_fold`` under the job folder's own lock, which rank 0 holds: a second writer (a cluster
    task left running by an interrupted driver, or a Dask retry) is refused, and a job that
    finished while this one waited for its turn is not trained again."""
    from pipeline.distributed import broadcast

    fold_dir = run.run_dir / job.folder
    with contextlib.ExitStack() as held:
        state: str | None = None
        failure: CohortnetError | None = None
        if run.ctx.is_main:
            try:
                fold_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(runfolder.locked(fold_dir))
                artifacts.clean_stale_temporaries(fold_dir)  # a killed writer's leftovers (it held this lock)
                state = "done" if runfolder.is_finished(fold_dir) else "run"
            except runfolder.RunLockedError as exc:
                failure = exc
            except OSError as exc:  # a full or read-only disk: every rank stops, none waits in a collective
                failure = artifacts.explain_os_error(exc, fold_dir)
        failure, state = broadcast(run.ctx, (failure, state))  # every rank of a torchrun job follows rank 0
        if failure is not None:
            raise failure
        if state == "done":
            log.info("%s: finished meanwhile by another process, skipping", job.label)
        else:
            run_fold(cfg, run, job, items, table, label_col)


def role_items(prepared: Any, table: pd.DataFrame, part: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """The prepared images of each role of one fold's split rows (patient_id, role)."""
    roles = table[PATIENT_ID].map(dict(zip(part[PATIENT_ID], part[ROLE], strict=True)))
    return {r: prepared.items(roles.index[roles == r].tolist()) for r in crossval.ROLES}


def train_and_predict(
    cfg: WorkflowConfig, cohort: Cohort, splits: pd.DataFrame, run: RunContext, *, content_hashes: dict[str, str]
) -> None:
    """Preprocess once, then per fold: train, save the model, predict test and val patients.

    Writes ``excluded.csv``, ``fold_<k>/{model.pt,history.csv,predictions.csv,done.json}`` and the
    pooled ``predictions.csv`` (role test) and ``val_predictions.csv`` (role val). A fold whose
    ``done.json`` exists is not trained again, so a rerun into the same run folder resumes.
    Nested cross-validation runs its two levels in ``pipeline.nested``.
    """
    from pipeline.distributed import barrier

    if cfg.validation.scheme == "nested":
        from pipeline.nested import run_nested

        run_nested(cfg, cohort, splits, run, content_hashes)
    else:
        prepared = _preprocess(cfg, cohort, run, content_hashes)
        table = cohort.table.set_index(IMAGE_ID)
        fold_items = {int(str(f)): role_items(prepared, table, part) for f, part in splits.groupby(FOLD, sort=True)}
        _check_usable(fold_items, len(prepared.failures))
        seeds = fold_seeds(cfg, splits)
        jobs = [(FoldJob(fold, f"fold_{fold}", seeds[fold]), items) for fold, items in fold_items.items()]
        run_jobs(cfg, run, jobs, cohort)
    if run.ctx.is_main:
        _pool_folds(run, splits, cfg.evaluation.ensemble)
    barrier(run.ctx)


def _preprocess(cfg: WorkflowConfig, cohort: Cohort, run: RunContext, content_hashes: dict[str, str]) -> Any:
    """Every image through the deterministic transforms once (cached); rank 0 writes excluded.csv."""
    from pipeline.datasets import prepare_for_workflow

    t0 = time.perf_counter()
    prepared = prepare_for_workflow(
        cfg,
        cohort.table,
        content_hashes,
        device=None if run.dask else run.device,  # cluster tasks get host tensors or cache files
        progress=run.progress,
        ranks_per_node=run.ctx.local_world_size,
    )
    log.info(
        "preprocessed %d images in %.1fs (%s cache), %d excluded",
        len(prepared.samples),
        time.perf_counter() - t0,
        prepared.cache,
        len(prepared.failures),
    )
    if run.ctx.is_main:
        artifacts.write_csv(run.run_dir / EXCLUDED_FILE, prepared.failures)
    return prepared


def _pool_folds(run: RunContext, splits: pd.DataFrame, ensemble: str) -> None:
    """The folds' predictions pooled into the run's tables, after checking that every fold was made
    from the sealed inputs (folds made from other inputs are never pooled). With members, every
    member's rows are kept in ``member_predictions.csv`` and combined (``combine_members``)."""
    folds = sorted(int(str(f)) for f in splits[FOLD].unique())
    runfolder.check_fold_records(run.run_dir, folds, run.seal)
    parts = [run.run_dir / f"fold_{f}" / PREDICTIONS_FILE for f in folds]
    pooled = pd.concat([_read_predictions(run.run_dir, p, (ROLE,)) for p in parts], ignore_index=True)
    if crossval.has_members(splits):
        pooled = pooled.join(splits.groupby(FOLD)[[REPEAT, SEED]].first(), on=FOLD)
        artifacts.write_csv(run.run_dir / MEMBER_PREDICTIONS_FILE, pooled)
        test, val = combine_members(pooled, ensemble)
    else:
        test, val = pooled[pooled[ROLE] == "test"], pooled[pooled[ROLE] == "val"]
    artifacts.write_csv(run.run_dir / PREDICTIONS_FILE, test.drop(columns=ROLE))
    artifacts.write_csv(run.run_dir / VAL_PREDICTIONS_FILE, val.drop(columns=ROLE))


def combine_members(pooled: pd.DataFrame, ensemble: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(test, val) rows of a study with members, from every member's rows (with repeat and seed).

    ``none``: the first member's rows. ``mean``: each test image's scores averaged over the members,
    with the first member's score kept as ``score_single_model`` and its fold (explanations and
    fold tables follow that member). Validation rows are averaged the same way, per fold position
    (a member's k-th fold) and image, when every member validated the same images in the same
    fold positions (seeds on one set of splits: the threshold is locked on the ensemble's own
    validation scores, and a patient who validates several folds keeps one row per fold, never a
    mix of folds); otherwise (repeats) every member's (fold, patient) rows are kept."""
    first = pooled[list(MEMBER_COLUMNS)].iloc[0]
    is_first = (pooled[REPEAT] == first.iloc[0]) & (pooled[SEED] == first.iloc[1])
    head = pooled[is_first].drop(columns=list(MEMBER_COLUMNS))
    if ensemble == "none":
        return head[head[ROLE] == "test"], head[head[ROLE] == "val"]
    members = pooled.groupby(list(MEMBER_COLUMNS), sort=False)[FOLD]
    # a member's folds are m*K .. m*K+K-1: the position is the fold less the member's first fold
    pooled = pooled.assign(_position=pooled[FOLD] - members.transform("min"))
    test = _averaged(pooled, is_first, "test", [IMAGE_ID])
    val_rows = pooled[pooled[ROLE] == "val"]
    keys = pd.Series(list(zip(val_rows["_position"], val_rows[IMAGE_ID], strict=True)), index=val_rows.index)
    per_member = keys.groupby([val_rows[c] for c in MEMBER_COLUMNS]).agg(frozenset)
    if per_member.nunique() > 1:
        val = val_rows.drop(columns=[*MEMBER_COLUMNS, "_position"])
    else:
        val = _averaged(pooled, is_first, "val", ["_position", IMAGE_ID])
    return test, val


def _averaged(pooled: pd.DataFrame, is_first: pd.Series, role: str, by: list[str]) -> pd.DataFrame:
    """The first member's ``role`` rows with their scores replaced by the mean over the members'
    rows of the same ``by`` key (its own score kept as ``score_single_model``)."""
    scores = [c for c in (SCORE, SCORE_SINGLE) if c in pooled.columns]
    in_role = pooled[ROLE] == role
    rows, own = pooled[in_role], pooled[in_role & is_first]
    mean = rows.groupby(by)[scores].mean()
    combined = own.assign(**{SCORE_SINGLE_MODEL: own[SCORE].to_numpy()})
    index = pd.MultiIndex.from_frame(own[by]) if len(by) > 1 else pd.Index(own[by[0]])
    for c in scores:
        combined[c] = mean[c].reindex(index).to_numpy()
    return combined.drop(columns=[*MEMBER_COLUMNS, "_position"])


def _check_usable(fold_items: dict[int, dict[str, list[dict[str, Any]]]], n_excluded: int) -> None:
    """After the exclusions every fold still needs training images of both classes and validation
    and test images; say so before any training rather than fail at the end."""
    problems = []
    for fold, items in fold_items.items():
        for role in crossval.ROLES:
            if not items[role]:
                problems.append(f"fold {fold}: no usable {role} image is left")
        classes = {int(it[TARGET]) for it in items["train"]}
        if items["train"] and len(classes) < 2:
            problems.append(f"fold {fold}: the usable training images are all of one class")
    if problems:
        problems.append(f"{n_excluded} image(s) were excluded (see excluded.csv)")
        raise ValidationError(problems, "cohort after exclusions")


def run_fold(
    cfg: WorkflowConfig,
    run: RunContext,
    job: FoldJob,
    items: dict[str, list[dict[str, Any]]],
    table: pd.DataFrame,
    label_col: str,
) -> None:
    """Train one job into its folder (``fold_<k>/``) with its seed and config, then predict its
    test and validation images (rank 0 writes the files)."""
    from pipeline.augment import make_augmentation
    from pipeline.models import build_model, count_parameters
    from pipeline.precision import choose_precision
    from pipeline.training import FoldSpec, recorded_precision, seed_everything, train_fold

    cfg = job.cfg or cfg
    fold_dir = run.run_dir / job.folder
    ctx, device = run.ctx, run.device
    seed_everything(job.seed, cfg.train.deterministic)  # the initial weights depend on the seed only
    model = build_model(cfg.model).to(device)
    checkpoint = fold_dir / MODEL_FILE
    precision = recorded_precision(checkpoint, model) or choose_precision(cfg, model, device)
    log.info(
        "%s: %d train / %d val / %d test images on %s%s (%s), %s (%.1fM parameters)",
        job.label,
        len(items["train"]),
        len(items["val"]),
        len(items["test"]),
        device,
        f" x {ctx.world_size} ranks" if ctx.enabled else "",
        precision.describe(),
        cfg.model.arch,
        count_parameters(model) / 1e6,
    )
    start = time.perf_counter()
    spec = FoldSpec(
        cfg.train,
        make_augmentation(cfg.data, cfg.model.spatial_dims),
        device,
        checkpoint,
        seed=job.seed,
        precision=precision,
        spatial_dims=cfg.model.spatial_dims,
        label=f"{job.label}: ",
        ctx=ctx,
        stop_after=job.stop_after,
    )
    # nested refit: the inner folds' validation rows of the chosen point, read before the training
    adopted = [_read_predictions(run.run_dir, run.run_dir / f / PREDICTIONS_FILE, (ROLE,)) for f in job.adopt_val]
    result = train_fold(model, items["train"], items["val"], spec)
    predictions = _predict_roles(cfg, run, job.fold, model, precision, items, table, label_col)
    if adopted:
        predictions = pd.concat([predictions, *(a[a[ROLE] == "val"] for a in adopted)], ignore_index=True)
    if ctx.is_main:
        seconds = time.perf_counter() - start
        _write_fold(fold_dir, job.fold, result, precision, predictions, run.seal, seconds, job_environment(device))


def _write_fold(
    fold_dir: Path,
    fold: int,
    result: Any,
    precision: Any,
    predictions: pd.DataFrame,
    seal: str,
    seconds: float,
    environment: dict[str, Any],
) -> None:
    """A trained fold's history, predictions and ``done.json`` (last, with the seal); then its
    resumable state goes."""
    artifacts.write_csv(fold_dir / HISTORY_FILE, result.history)
    artifacts.write_csv(fold_dir / PREDICTIONS_FILE, predictions)
    done = {
        "fold": fold,
        "best_epoch": result.best_epoch,
        "best_val_auc": result.best_val_auc,
        "precision": precision.name,
        "fp32_layers": list(precision.fp32_layers),
        **runfolder.fold_record(seal, predictions),
    }
    artifacts.write_json(fold_dir / FOLD_DONE_FILE, {**done, "seconds": seconds, "environment": environment})
    (fold_dir / CHECKPOINT_FILE).unlink(missing_ok=True)


def _predict_roles(
    cfg: WorkflowConfig,
    run: RunContext,
    fold: int,
    model: Any,
    precision: Any,
    items: dict[str, list[dict[str, Any]]],
    table: pd.DataFrame,
    label_col: str,
) -> pd.DataFrame:
    """The fold model's scores for its test and validation images (NaN or Inf stops the fold)."""
    from pipeline.inference import predict_scores_tta

    frames = []
    tta = cfg.evaluation.tta
    for role in ("test", "val"):
        if not items[role]:  # an inner fold of nested CV has no test images; its refit, no val
            continue
        ids = [it[IMAGE_ID] for it in items[role]]
        batch = cfg.train.batch_size * 2  # the views of a batch run one after another
        scores, single = predict_scores_tta(
            model,
            items[role],
            spatial_dims=cfg.model.spatial_dims,
            tta=tta,
            device=run.device,
            bf16=precision.bf16,
            batch_size=batch,
            ctx=run.ctx,
        )
        if not np.isfinite(scores).all():
            raise NonFiniteError(
                f"fold {fold} ({precision.name}): {int((~np.isfinite(scores)).sum())} {role} scores are NaN or Inf; "
                "the fold's model is kept in its folder, nothing is pooled"
            )
        frames.append(
            pd.DataFrame(
                {
                    PATIENT_ID: table.loc[ids, PATIENT_ID].to_numpy(),
                    IMAGE_ID: ids,
                    FOLD: fold,
                    label_col: table.loc[ids, label_col].to_numpy(),
                    SCORE: scores,
                    ROLE: role,
                    **({SCORE_SINGLE: single} if tta != "none" else {}),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- after training


def _evaluation_options(cfg: WorkflowConfig) -> EvaluationOptions:
    """The workflow's evaluation section as the options `cohortnet evaluate` takes (seed: train.seed)."""
    from pipeline.evaluation import EvaluationOptions, Interval

    ev = cfg.evaluation
    interval = Interval(ci_method=ev.ci_method, n_bootstrap=ev.n_bootstrap, seed=cfg.train.seed)
    return EvaluationOptions(threshold_rule=ev.threshold_rule, interval=interval, aggregate=ev.aggregate)


def finalize_run(run_dir: Path, cfg: WorkflowConfig | None = None, cohort: Cohort | None = None) -> dict[str, Any]:
    """Per-patient table, metrics, ROC table and figures, and the HTML report, from the saved
    predictions of ``run_dir`` (no model, manifest or image is needed)."""
    from pipeline.evaluation import ScoreColumns, evaluate_predictions
    from pipeline.reporting.build import ClassColumn, write_report
    from pipeline.reporting.tables import per_patient

    if cfg is None:
        cfg = load_config(run_dir / RESOLVED_CONFIG_FILE, check_files=False)
    known = RunCohort.from_cohort(cohort) if cohort is not None else RunCohort.from_run(run_dir, cfg)
    label = known.label_col
    preds = _read_predictions(run_dir, run_dir / PREDICTIONS_FILE, (label,))
    val = _read_predictions(run_dir, run_dir / VAL_PREDICTIONS_FILE, (label,))
    splits = runfolder.read_table(run_dir / SPLITS_FILE, run_dir, (FOLD, PATIENT_ID, ROLE), dtype={PATIENT_ID: str})
    members = _read_members(run_dir, preds, val, splits)
    for frame in (preds, val):
        frame[label] = frame[label].astype(str)
    extra = known.patients.drop(columns=[TARGET])
    pp = per_patient(preds, aggregate=cfg.evaluation.aggregate, label_col=label, patients=extra)
    artifacts.write_csv(run_dir / PER_PATIENT_FILE, pp)
    # The same call as `cohortnet evaluate` on the per-image predictions with the patients'
    # columns: --group-col patient_id --fold-col fold --val-table val_predictions.csv (tested).
    images = preds.merge(extra, on=PATIENT_ID, how="left")
    compare = SCORE_SINGLE if SCORE_SINGLE in preds.columns else None  # test-time augmentation against one view
    columns = ScoreColumns(
        label,
        SCORE,
        positive=known.positive,
        group=PATIENT_ID,
        fold=FOLD,
        subgroups=evaluated_subgroups(cfg),
        compare=compare,
    )
    metrics = evaluate_predictions(images, columns, _evaluation_options(cfg), threshold_df=val if len(val) else None)
    if members is not None:
        metrics["members"] = _members_section(members, preds, columns, cfg)
    if (run_dir / NESTED_FILE).is_file():  # nested CV: each outer fold's choice and its stability
        metrics["nested"] = runfolder.read_record(run_dir / NESTED_FILE, run_dir)
    artifacts.write_json(run_dir / METRICS_FILE, metrics)
    if cohort is not None:  # a rebuilt report (no cohort, perhaps no images) keeps the explanations it has
        _explain(run_dir, cfg, cohort)
    write_report(
        run_dir,
        cfg,
        metrics,
        pp,
        crossval.describe_splits(crossval.primary_splits(splits), known.patients),
        ClassColumn(label, str(known.positive)),
        n_images=len(preds),
    )
    return metrics


def _read_members(run_dir: Path, preds: pd.DataFrame, val: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame | None:
    """Every member's rows (None for a study of one member), after checking the saved predictions
    against what the folds recorded: per fold in member_predictions.csv when the study has members."""
    path = run_dir / MEMBER_PREDICTIONS_FILE
    if not crossval.has_members(splits) or not path.is_file():
        runfolder.check_predictions_complete(run_dir, preds, val, splits)
        return None
    members = _read_predictions(run_dir, path, (ROLE,))
    by_role = [members[members[ROLE] == r].drop(columns=ROLE) for r in ("test", "val")]
    runfolder.check_predictions_complete(run_dir, by_role[0], by_role[1], splits)
    return members


def _read_predictions(run_dir: Path, path: Path, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """A run folder's prediction table, refused with a ValidationError naming it when it is damaged."""
    required = (PATIENT_ID, FOLD, SCORE, *extra)
    return runfolder.read_table(path, run_dir, required, dtype={PATIENT_ID: str, IMAGE_ID: str})


def _members_section(members: pd.DataFrame, preds: pd.DataFrame, columns: Any, cfg: WorkflowConfig) -> dict[str, Any]:
    """metrics.json's ``members``: each member's figures, their spread, and the ensemble against the
    first member (paired) when the study averages them."""
    from pipeline.evaluation.members import members_summary

    label = columns.label
    rows = members.assign(**{label: members[label].astype(str)})
    summary = members_summary(
        rows,
        columns,
        _evaluation_options(cfg),
        member_cols=MEMBER_COLUMNS,
        role_col=ROLE,
        ensemble=preds if cfg.evaluation.ensemble == "mean" else None,
        single_col=SCORE_SINGLE_MODEL,
    )
    return {"ensemble": cfg.evaluation.ensemble, **summary}


def _track(run_dir: Path, cfg: WorkflowConfig) -> None:
    """The finished run copied to the workflow's MLflow store (tracking.mlflow), if any."""
    if cfg.tracking.mlflow:
        from pipeline.tracking import log_run

        log_run(run_dir, cfg)


def _explain(run_dir: Path, cfg: WorkflowConfig, cohort: Cohort) -> None:
    """Grad-CAM of the chosen test cases (report.explain), between the metrics and the report."""
    from pipeline.explain import explain_run

    record = explain_run(run_dir, cfg, cohort)
    if record.get("skipped"):
        log.info("explanations skipped: %s", record["skipped"])
    else:
        log.info("explained %d test case(s) with %s", record.get("n_cases", 0), record.get("method"))


def evaluated_subgroups(cfg: WorkflowConfig) -> tuple[str, ...]:
    """The workflow's subgroups, and a leave-one-group-out study's group (its per-site AUCs)."""
    extra = (cfg.validation.group,) if cfg.validation.scheme == "leave_one_group_out" and cfg.validation.group else ()
    return tuple(dict.fromkeys([*cfg.evaluation.subgroups, *extra]))


def check_run_complete(run_dir: Path) -> None:
    missing = [f for f in (PREDICTIONS_FILE, VAL_PREDICTIONS_FILE, SPLITS_FILE) if not (run_dir / f).is_file()]
    if missing:
        raise CohortnetError(f"{run_dir} is not a finished run: missing {', '.join(missing)}")
