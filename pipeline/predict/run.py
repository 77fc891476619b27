"""``predict_cohort``: a cohort streamed through a study's preprocessing and fold ensemble.

Images go through in chunks of ``PredictOptions.chunk``: the study's deterministic chain runs in
worker processes (a bad scan is recorded with its reason and skipped), each fold network scores
the chunk, and the chunk's rows go to a part file before the ledger names them. Nothing per image
is held for the whole cohort while scoring. At the end the parts are merged into
``predictions.csv`` (one row per image: the ensemble's mean probability, the spread over folds and
each fold's score), ``per_patient.csv`` (combined as in the study, with the decision at the
study's locked threshold) and ``excluded.csv``; ``provenance.json`` names the model, config, code
and input hashes, and every table carries its ``predict_id``. A labelled cohort also gets
``metrics.json`` from ``evaluate_predictions`` at the locked threshold (external validation), on
the patients that have a label, when they hold both classes (else a warning says why there are
none); blank or one-class labels never stop the scoring.

The leakage guard (``leakage``, ``refuse_leakage``) runs before anything is written: images whose
content the study used, and patients whose id trained or validated a model, compared by the
model's keyed digest (HMAC-SHA256). An archive's key comes from ``--leakage-key-file`` or from
``model.zip.leakage-key`` beside it; without it only the image check runs, and a warning says
so. A run folder is keyed with a random key held in memory, so its check always runs. The
refusal names no patient id and no digest of one: it gives the counts and the manifest lines.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline import __version__, runfolder
from pipeline.errors import CohortnetError, ValidationError
from pipeline.manifest import Cohort, load_manifest
from pipeline.predict.ledger import Ledger
from pipeline.predict.model import (
    HMAC_DIGEST,
    LEAKAGE_KEY_SUFFIX,
    PLAIN_DIGEST,
    LeakageKeyUnreadable,
    StudyModel,
    key_file_for,
    model_files,
    new_leakage_key,
    read_leakage_key,
    study_image_roots,
)
from pipeline.provenance import content_hash, content_hashes, file_sha256, git_commit
from pipeline.reporting import artifacts
from pipeline.schema import (
    EXCLUDED_FILE,
    IMAGE_ID,
    METRICS_FILE,
    PATIENT_ID,
    PER_PATIENT_FILE,
    PREDICTIONS_FILE,
    PROVENANCE_FILE,
    SCORE,
)

log = logging.getLogger("pipeline")

STAMP_FILE = "predict.json"
DECISION = "decision"  # 1 when the patient's (or image's) score reaches the locked threshold
SCORE_SD = "score_sd"
LINE = "_manifest_line"  # a cohort row's line in its manifest (header: line 1), kept through sharding
MAX_RANGES = 20  # manifest line ranges a leakage message lists before "... and N more"


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """``folds``: "all" (the ensemble), "best" (the fold that validated best) or a fold number;
    ``chunk``: images per part file; ``workers``: preprocessing processes (None: per CPU);
    ``allow_study_patients``: predict patients or images the study trained or validated on (the
    outputs then say so); ``retry_failed``: try again the images that failed before; ``shard``:
    (i, N) scores only the patients of share i of N (``merge_shards`` joins the N folders);
    ``leakage_key_file``: the archive's leakage key (read again where a ``--shard`` run opens it);
    ``image_roots``: folders (absolute) besides the manifest's own where its images may lie
    (``--image-root``); ``leakage_checked``: the leakage guard ran on the whole cohort before this
    share was handed out (``--dask``: a worker shard neither checks again nor reads the key), with
    ``patient_check`` its ``PATIENT_CHECK`` value and ``study_images`` the ids of the images it
    found (predicted under ``--allow-study-patients``)."""

    folds: str = "all"
    chunk: int = 256
    workers: int | None = None
    device: str = "auto"
    allow_study_patients: bool = False
    retry_failed: bool = False
    progress: bool = True
    shard: tuple[int, int] | None = None  # (i, N): this run's share, 0 <= i < N, grouped by patient
    leakage_key_file: Path | None = None
    image_roots: tuple[str, ...] = ()
    leakage_checked: bool = False
    patient_check: str | None = None
    study_images: frozenset[str] = frozenset()


# provenance.json's "patient_check": whether the cohort's patient ids were compared with the study's
CHECK_RUN = "run"
CHECK_NO_KEY = "not run (no leakage key)"
CHECK_PLAIN = "plain sha256 (format 1)"
PATIENT_CHECKS = (CHECK_RUN, CHECK_NO_KEY, CHECK_PLAIN)


def patient_check(model: StudyModel) -> str:
    """How ``leakage`` compares this model's study patients with a cohort's (``PATIENT_CHECKS``)."""
    if model.patient_scheme == PLAIN_DIGEST:
        return CHECK_PLAIN
    return CHECK_RUN if model.checks_patients else CHECK_NO_KEY


def open_model(
    source: Path, leakage_key_file: Path | None = None, image_roots: Sequence[str] = (), keyless: bool = False
) -> StudyModel:
    """A run folder (its patient check keyed with a random key made now, in memory) or a
    ``model.zip`` (verified first; keyed with ``leakage_key_file``, else with the key file
    beside it when there is one and it can be read). ``image_roots`` (``--image-root``) extend
    where a new manifest's images may lie; ``keyless``: the leakage guard ran elsewhere (a
    ``--dask`` worker's shard), no key is looked for."""
    extra = tuple(str(r) for r in image_roots)
    if source.is_dir():
        if leakage_key_file is not None:
            log.warning("--leakage-key-file is for a model archive: a run folder's patients are checked without it")
        key = new_leakage_key()
        model = StudyModel.from_files(model_files(source, key)).with_leakage_key(key, "the run folder's key")
        return dataclasses.replace(model, image_roots=(*study_image_roots(source), *extra), from_run_dir=True)
    from pipeline.predict.archive import read_archive

    if not source.exists():
        raise ValidationError([f"{source}: no such run folder or model archive"], "predict arguments")
    if not source.is_file():
        raise ValidationError([f"{source}: neither a run folder nor a model archive"], "predict arguments")
    model = StudyModel.from_files(read_archive(source))
    # an archive's own roots (a format-1 config's are the study machine's) mean nothing here: --image-root only
    model = dataclasses.replace(model, expected_key_file=key_file_for(source), image_roots=extra)
    if model.patient_scheme == PLAIN_DIGEST and model.leaked_patients:
        log.warning(
            "%s is a format-1 model archive: it lists the study's patients by the plain SHA-256 of their ids, "
            "which anyone who can guess the ids (record numbers, study codes) reverses. Its patient check "
            "still runs; re-export it from its run folder (cohortnet export RUN_DIR model.zip: keyed digests) "
            "and share the new archive, without its .leakage-key file",
            source,
        )
    if keyless:
        return model
    if leakage_key_file is not None:
        return keyed(model, leakage_key_file)  # given explicitly: any problem with it is an error
    key_file = key_file_for(source)
    if not key_file.is_file():
        return model  # the patient check does not run: ``leakage`` says so
    try:
        return keyed(model, key_file)
    except LeakageKeyUnreadable:  # another user's key (mode 0600): as if it were not there, and said so
        return dataclasses.replace(model, key_unavailable="cannot be read (permission denied)")


def keyed(model: StudyModel, key_file: Path) -> StudyModel:
    """An archive's model with the key of ``key_file`` (a run folder's, or a format-1 model, as it is)."""
    if model.from_run_dir or model.patient_scheme != HMAC_DIGEST:
        return model
    return model.with_leakage_key(read_leakage_key(key_file), str(key_file))


def read_cohort(manifest: Path, model: StudyModel) -> Cohort:
    """The cohort to predict; labelled (external validation) when the study's label column holds
    values. The labels are read as they are, not by the study's rules: every row is scored, blank
    labels included, and ``external_metrics`` says whether the labelled patients can be evaluated.
    Image paths are relative to the manifest's folder and must stay under it, or under
    ``model.image_roots`` (a run folder's ``data.image_roots``, and ``--image-root``: an archive
    carries no roots of the study machine). Each row keeps its manifest line (``LINE``) for the
    leakage guard's messages."""
    label = model.info["label_col"]
    try:
        cohort = load_manifest(manifest, label_col=None, image_roots=model.image_roots)
    except ValidationError as exc:  # the study's advice (data.image_roots) is not predict's
        problems = [p.replace(_STUDY_ROOTS_ADVICE, _PREDICT_ROOTS_ADVICE) for p in exc.problems]
        raise ValidationError(problems, exc.what) from None
    table = cohort.table.assign(**{LINE: cohort.table.index + 2})  # the numbering of load_manifest's messages
    cohort = dataclasses.replace(cohort, table=table)
    if label not in table.columns or not (table[label].str.strip() != "").any():
        return cohort
    table = table.assign(**{label: table[label].str.strip()})
    extra = tuple(c for c in cohort.extra_columns if c != label)
    return dataclasses.replace(
        cohort, table=table, label_col=label, positive=model.info["positive"], extra_columns=extra
    )


_STUDY_ROOTS_ADVICE = "list its folder in data.image_roots to allow it"
_PREDICT_ROOTS_ADVICE = "give its folder with --image-root DIR to allow it"


def chosen_folds(model: StudyModel, folds: str) -> list[int]:
    """The folds ``--folds`` names, checked against the model (before anything is written)."""
    if folds == "all":
        return list(model.states)
    if folds == "best":
        return [model.best_fold]
    try:
        fold = int(folds)
    except ValueError:
        raise ValidationError([_FOLDS_SYNTAX.format(folds)], "predict arguments") from None
    if fold not in model.states:
        raise ValidationError(
            [f"--folds {fold}: the model has no fold {fold} (its folds: {list(model.states)})"], "predict arguments"
        )
    return [fold]


_FOLDS_SYNTAX = "--folds must be all, best or a fold number, got {!r}"


def option_problems(options: PredictOptions) -> list[str]:
    """What is wrong with ``options`` on this machine (checked before anything is read or written):
    every problem, each naming its command-line option."""
    problems = []
    if options.folds not in ("all", "best") and not options.folds.strip().lstrip("-").isdigit():
        problems.append(_FOLDS_SYNTAX.format(options.folds))
    if options.chunk < 1:
        problems.append(f"--chunk must be at least 1 (images per part file), got {options.chunk}")
    if options.workers is not None and options.workers < 0:
        problems.append(f"--workers must be 0 (preprocess in this process) or more, got {options.workers}")
    if options.device == "cuda" and not torch.cuda.is_available():
        problems.append("--device cuda: no CUDA device is available on this machine (use --device auto or cpu)")
    return problems


def out_problems(out: Path) -> list[str]:
    """``--out`` must be a folder, or not exist yet."""
    if out.exists() and not out.is_dir():
        return [f"{out} exists and is not a folder (--out names the prediction folder)"]
    return []


def register_data_roots(cohort: Cohort, model: StudyModel) -> None:
    """The cohort's data folders (the manifest's folder, which holds the images or, for a scanned
    folder, the links to them; the study's image roots) are redacted as ``<path>`` in logs and
    warnings from here on, as ``cohortnet scan`` does for its root: a reader's message names the
    file it reads, and export folders are often named after the patient. Called once the leakage
    guard has spoken (its refusal names the manifest) and before any image is decoded."""
    from pipeline.privacy import register_root

    # absolute only: a relative "." would be registered as given too, and redact every dot of every message
    for root in {cohort.manifest_path.resolve().parent, *(Path(r).resolve() for r in model.image_roots)}:
        register_root(root)


def shard_of(patient_id: str, n: int) -> int:
    """The share of a patient: stable across runs, machines and manifest order."""
    return int(hashlib.sha256(str(patient_id).encode()).hexdigest()[:12], 16) % n


def take_shard(cohort: Cohort, i: int, n: int) -> Cohort:
    if not 0 <= i < n:
        raise ValidationError([f"--shard {i}/{n}: the index must be between 0 and {n - 1}"], "predict arguments")
    table = cohort.table
    mine = table[table[PATIENT_ID].map(lambda p: shard_of(p, n)) == i].reset_index(drop=True)
    return dataclasses.replace(cohort, table=mine)


def _stamp(model: StudyModel, cohort: Cohort, folds: list[int], shard: tuple[int, int] | None) -> dict[str, Any]:
    return {
        "model_sha256": model.digest,
        "config_sha256": model.file_hashes["config.yaml"],
        "manifest_sha256": file_sha256(cohort.manifest_path),
        "folds": folds,
        "threshold": model.info["threshold"],
        "shard": list(shard) if shard else None,
        "n_images": len(cohort.table),
    }


def _check_stamp(out: Path, stamp: dict[str, Any]) -> None:
    """One prediction folder holds one model's scores of one manifest: never pooled across either."""
    path = out / STAMP_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        changed = [k for k in stamp if before.get(k) != stamp[k]]
        if changed:
            raise CohortnetError(
                f"{out} holds predictions made with another {', '.join(changed)}; use a new --out folder"
            )
    else:
        artifacts.write_json(path, stamp)


def leakage(model: StudyModel, cohort: Cohort) -> pd.DataFrame:
    """Rows of the cohort whose image content, or patient (by the model's keyed digest of the id),
    was part of the study, with their manifest line; a warning when the patient check cannot run."""
    table = cohort.table
    if not model.checks_patients:
        where = model.expected_key_file or f"MODEL.zip{LEAKAGE_KEY_SUFFIX}"
        why = (
            f"the leakage key beside the archive, {where}, {model.key_unavailable}"
            if model.key_unavailable
            else "the leakage key of this model archive is not available"
        )
        log.warning(
            "the patient-id check was not run: %s (give it with --leakage-key-file F, or put it beside the archive "
            "as %s); only images the study used are recognised, by their content",
            why,
            where,
        )
    by_patient = model.study_patients(table[PATIENT_ID])
    leaked = model.leaked_images
    by_image = table["path"].map(lambda p: image_leaked(p, leaked)).astype(bool)
    found = table[by_patient | by_image]
    lines = found[LINE] if LINE in found.columns else pd.Series(found.index + 2, index=found.index)
    return pd.DataFrame(
        {
            PATIENT_ID: found[PATIENT_ID],
            IMAGE_ID: found[IMAGE_ID],
            "why": np.where(by_patient[found.index], "patient", "image"),
            LINE: lines.astype(int),
        }
    )


def image_leaked(path: str | Path, leaked: frozenset[str]) -> bool:
    """Whether the image's content is one the study used. A series folder is matched by its
    hash and by the legacy one (names and hashes of its files at every depth), which the models
    made before the name-free hash hold (format-1 archives, older run folders' data_hashes.csv)."""
    if Path(path).is_dir():
        return any(h in leaked for h in content_hashes(path))
    return content_hash(path) in leaked


def line_ranges(lines: Sequence[int] | pd.Series, limit: int = MAX_RANGES) -> str:
    """``[2, 3, 4, 9, 12]`` -> ``"2-4, 9, 12"``; at most ``limit`` ranges, then "... and N more"."""
    ranges: list[list[int]] = []
    for n in sorted({int(x) for x in lines}):
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    shown = [f"{a}-{b}" if b > a else str(a) for a, b in ranges[:limit]]
    if len(ranges) > limit:
        shown.append(f"... and {len(ranges) - limit} more")
    return ", ".join(shown)


def refuse_leakage(found: pd.DataFrame, allowed: bool, manifest: Path | None = None) -> None:
    """Refuse (or, ``allowed``, warn about) the rows ``leakage`` found. The message names no patient
    id and no digest of one (a digest of a guessable id is the id): counts and manifest lines."""
    if found.empty:
        return
    lines = found[LINE] if LINE in found.columns else pd.Series(dtype=int)
    where = f"manifest lines {line_ranges(lines)}" + (f" of {manifest}" if manifest is not None else "")
    by_id = int((found["why"] == "patient").sum())
    text = (
        f"{found[PATIENT_ID].nunique()} patient(s), {len(found)} image(s) of this cohort trained or validated "
        f"the study's models ({where}; {by_id} image(s) recognised by patient id, {len(found) - by_id} by "
        "image content)"
    )
    if not allowed:
        raise ValidationError([text + " (use --allow-study-patients to predict them anyway)"], "leakage guard")
    log.warning("leakage guard overridden: %s", text)


@dataclasses.dataclass(frozen=True)
class PredictResult:
    out: Path
    n_images: int
    n_predicted: int
    n_excluded: int
    metrics: dict[str, Any] | None


def predict_cohort(model: StudyModel, cohort: Cohort, out: Path, options: PredictOptions) -> PredictResult:
    """Score every image of ``cohort`` into ``out`` (resumable; see the module docstring)."""
    problems = option_problems(options) + out_problems(out)
    if problems:
        raise ValidationError(problems, "predict arguments")
    folds = chosen_folds(model, options.folds)
    if options.shard is not None:
        cohort = take_shard(cohort, *options.shard)
    if options.leakage_checked:  # a --dask worker's shard: the driver checked the whole cohort
        found = cohort.table[cohort.table[IMAGE_ID].isin(options.study_images)]
        check = options.patient_check or CHECK_NO_KEY
    else:
        if options.leakage_key_file is not None:  # a --shard run given the key file
            model = keyed(model, options.leakage_key_file)
        found = leakage(model, cohort)
        refuse_leakage(found, options.allow_study_patients, cohort.manifest_path)
        check = patient_check(model)
    register_data_roots(cohort, model)
    out.mkdir(parents=True, exist_ok=True)
    with runfolder.locked(out):
        artifacts.clean_stale_temporaries(out)
        stamp = _stamp(model, cohort, folds, options.shard)
        _check_stamp(out, stamp)
        ledger = Ledger.open(out)
        _score_all(model, cohort, ledger, folds, options)
        return _write_outputs(model, cohort, ledger, stamp, (found, check))


def _pending(cohort: Cohort, ledger: Ledger, retry_failed: bool) -> pd.DataFrame:
    table = cohort.table
    skip = set(ledger.done) | (set() if retry_failed else set(ledger.failed))
    return table[~table[IMAGE_ID].isin(skip)]


class ImageItems(Sequence[tuple[str, str, str, dict[str, Any]]]):
    """(image_id, patient_id, path, {}) of the pending rows, built on demand (a few arrays, not a
    tuple per image held for the whole cohort)."""

    def __init__(self, table: pd.DataFrame) -> None:
        self.ids = table[IMAGE_ID].astype(str).to_numpy()
        self.patients = table[PATIENT_ID].astype(str).to_numpy()
        self.paths = table["path"].astype(str).to_numpy()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: Any) -> Any:
        return (str(self.ids[k]), str(self.patients[k]), str(self.paths[k]), {})


_Item = tuple[str, str, str, dict[str, Any]]  # image_id, patient_id, path, sample


def _score_all(model: StudyModel, cohort: Cohort, ledger: Ledger, folds: list[int], options: PredictOptions) -> None:
    """One loader over every pending image: its workers prepare the next chunk while the
    networks score this one; each chunk goes to a part file and the ledger before the next."""
    from pipeline.datasets import guarded_chain
    from pipeline.training import resolve_device
    from pipeline.transforms import deterministic_transforms

    todo = _pending(cohort, ledger, options.retry_failed)
    if todo.empty:
        log.info("nothing left to predict (%d done, %d failed)", len(ledger.done), len(ledger.failed))
        return
    device = resolve_device(options.device)
    nets = {f: n.to(device) for f, n in model.networks(folds).items()}
    cfg = model.config
    transform = deterministic_transforms(cfg.data, cfg.model.spatial_dims)
    items = ImageItems(todo)
    chunk = options.chunk  # at least 1: option_problems
    loader = guarded_chain(items, transform, options.workers, lookahead=chunk, pin=device.type == "cuda")
    from pipeline.inference import mirror_views

    views = mirror_views(cfg.model.spatial_dims, cfg.evaluation.tta)
    scorer = _Scorer(nets, device, cfg.train.batch_size * 2, views)
    bar = tqdm(total=len(items), desc="predict", unit="img", disable=not options.progress)
    pending: list[tuple[_Item, Any]] = []
    for k, prepared in enumerate(loader):
        pending.append((items[k], prepared))
        if len(pending) == chunk or k == len(items) - 1:
            ledger.record_chunk(*scorer.score(pending))
            bar.update(len(pending))
            pending = []
    bar.close()


@dataclasses.dataclass(frozen=True)
class _Scorer:
    nets: dict[int, torch.nn.Module]
    device: torch.device
    batch: int
    views: tuple[tuple[int, ...], ...] = ((),)  # the study's evaluation.tta views

    def score(
        self, chunk: list[tuple[tuple[str, str, str, dict[str, Any]], Any]]
    ) -> tuple[pd.DataFrame, list[dict[str, str]]]:
        """The chunk's prepared tensors through every chosen fold network; failures recorded."""
        kept: list[tuple[str, str]] = []
        tensors: list[torch.Tensor] = []
        failures: list[dict[str, str]] = []
        for (image_id, patient_id, _, _), (tensor, failure) in chunk:
            if failure is None:
                kept.append((image_id, patient_id))
                tensors.append(tensor)
            else:
                failures.append(
                    {"image_id": image_id, "patient_id": patient_id, "reason": failure[0], "message": failure[1]}
                )
                log.warning("%s: skipped (%s): %s", image_id, *failure)
        if not kept:
            return pd.DataFrame(), failures
        scores = _ensemble(tensors, self.nets, self.device, self.batch, self.views)
        rows = pd.DataFrame(kept, columns=[IMAGE_ID, PATIENT_ID])
        rows[SCORE] = scores.mean(axis=1)
        rows[SCORE_SD] = scores.std(axis=1, ddof=1) if scores.shape[1] > 1 else 0.0
        for k, fold in enumerate(self.nets):
            rows[f"score_fold_{fold}"] = scores[:, k]
        return rows, failures


def _ensemble(
    tensors: list[torch.Tensor],
    nets: dict[int, torch.nn.Module],
    device: torch.device,
    batch: int,
    views: tuple[tuple[int, ...], ...] = ((),),
) -> np.ndarray:
    """Probabilities (n_images, n_folds) in float64, in fp32 on ``device``; each fold's is the
    mean over ``views`` (the study's test-time augmentation), as the study scored its test set."""
    from pipeline.inference import view_logits

    out = np.empty((len(tensors), len(nets)), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(tensors), batch):
            x = torch.stack(tensors[start : start + batch]).to(device, non_blocking=True)
            for k, net in enumerate(nets.values()):
                logits = view_logits(net, x, views).double().cpu().numpy()
                out[start : start + len(x), k] = (1.0 / (1.0 + np.exp(-logits))).mean(axis=1)
    if not np.isfinite(out).all():
        raise CohortnetError("the model produced NaN or Inf scores; nothing of this chunk was recorded")
    return out


def _provenance(model: StudyModel, stamp: dict[str, Any], found: pd.DataFrame, check: str) -> dict[str, Any]:
    from pipeline.reporting.build import study_text  # matplotlib comes with it: imported when needed

    record = {
        **stamp,
        "model": {
            k: model.info.get(k)
            for k in ("study_run", "threshold_rule", "aggregate", "label_col", "positive", "calibrator")
        },
        "study": study_text(model.config),
        "study_headline": model.info.get("headline"),
        "code": {"cohortnet": __version__, "git_commit": git_commit()},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "study_patients_predicted": int(found[PATIENT_ID].nunique()),
        "patient_check": check,  # study_patients_predicted counts image matches only unless "run" or format 1
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return {"predict_id": digest[:16], **record}


def _write_outputs(
    model: StudyModel, cohort: Cohort, ledger: Ledger, stamp: dict[str, Any], guard: tuple[pd.DataFrame, str]
) -> PredictResult:
    """Merge the parts; write the tables, provenance and (labelled cohorts) metrics.json.
    ``guard``: the rows the leakage guard found and its ``patient_check``."""
    from pipeline.evaluation.table import aggregate_by_patient

    out = ledger.folder
    prov = _provenance(model, stamp, *guard)
    parts = [pd.read_csv(p, dtype={IMAGE_ID: str, PATIENT_ID: str}) for p in ledger.parts()]
    images = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[IMAGE_ID, PATIENT_ID, SCORE])
    order = {i: k for k, i in enumerate(cohort.table[IMAGE_ID])}
    images = images[images[IMAGE_ID].isin(order)].sort_values(IMAGE_ID, key=lambda s: s.map(order))
    images = images.drop_duplicates(IMAGE_ID, keep="last").reset_index(drop=True)
    label = cohort.label_col
    if label is not None:  # a blank label stays blank (NaN): a patient's label is its non-blank one
        labels = cohort.table[label].where(cohort.table[label] != "")
        images.insert(2, label, images[IMAGE_ID].map(dict(zip(cohort.table[IMAGE_ID], labels, strict=True))))
    threshold = float(model.info["threshold"])
    images[DECISION] = (images[SCORE] >= threshold).astype(int)
    fold_cols = [c for c in images.columns if c.startswith("score_fold_")]
    keep = [PATIENT_ID, *([label] if label is not None else []), SCORE, *fold_cols]
    patients = aggregate_by_patient(images[keep], PATIENT_ID, [SCORE, *fold_cols], model.info["aggregate"])
    patients[SCORE_SD] = patients[fold_cols].std(axis=1, ddof=1) if len(fold_cols) > 1 else 0.0
    patients[DECISION] = (patients[SCORE] >= threshold).astype(int)
    failed = [(i, *ledger.failed[i]) for i in cohort.table[IMAGE_ID] if i in ledger.failed and i not in ledger.done]
    excluded = pd.DataFrame(failed, columns=[IMAGE_ID, "reason", "message"])
    for frame in (images, patients, excluded):
        frame["predict_id"] = prov["predict_id"]
    artifacts.write_csv(out / PREDICTIONS_FILE, images)
    artifacts.write_csv(out / PER_PATIENT_FILE, patients)
    artifacts.write_csv(out / EXCLUDED_FILE, excluded)
    artifacts.write_json(out / PROVENANCE_FILE, prov)
    info = model.info
    metrics = None
    if label is not None and len(images) and stamp["shard"] is None:  # a shard's metrics come with --merge
        metrics = external_metrics(images, label, info["positive"], threshold, info["aggregate"])
    if metrics is not None:
        write_metrics_and_report(out, prov, metrics, images, patients, excluded)
    return PredictResult(out, len(cohort.table), len(images), len(excluded), metrics)


def write_metrics_and_report(
    out: Path,
    prov: dict[str, Any],
    metrics: dict[str, Any],
    images: pd.DataFrame,
    patients: pd.DataFrame,
    excluded: pd.DataFrame,
) -> None:
    """``metrics.json`` and the external-validation ``report.html`` of a labelled cohort (the
    report's patients and images are the labelled ones, those the metrics are computed on)."""
    from pipeline.reporting.build import write_external_report

    label = prov["model"]["label_col"]
    artifacts.write_json(out / METRICS_FILE, {**metrics, "predict_id": prov["predict_id"]})
    n_images = len(labelled_rows(images, label))
    write_external_report(out, prov, metrics, labelled_rows(patients, label), excluded, n_images=n_images)


def labelled_rows(table: pd.DataFrame, label: str) -> pd.DataFrame:
    """The rows of the patients that have a label, each row with its patient's label (canonical
    text, ``norm_label``): a blank row of a labelled patient takes the patient's label."""
    from pipeline.evaluation.table import label_texts

    text = label_texts(table[label])
    text = text.fillna(text.groupby(table[PATIENT_ID]).transform("first"))
    return table.assign(**{label: text})[text.notna()].reset_index(drop=True)


def external_metrics(
    images: pd.DataFrame, label: str, positive: str, threshold: float, aggregate: str
) -> dict[str, Any] | None:
    """``cohortnet evaluate``'s figures at the study's locked threshold (a fixed rule here), on the
    labelled patients only (``labelled_rows``); None, with a warning that says why, when they do
    not hold both classes or cannot be evaluated. The scores are written either way."""
    from pipeline.evaluation import EvaluationOptions, ScoreColumns, evaluate_predictions
    from pipeline.evaluation.table import norm_label

    rows = labelled_rows(images, label)
    n_all, n_rows = images[PATIENT_ID].nunique(), rows[PATIENT_ID].nunique()
    counts = rows.groupby(PATIENT_ID)[label].first().value_counts().sort_index()
    if len(counts) < 2 or norm_label(positive) not in counts.index:
        classes = ", ".join(f"{n} labelled {c!r}" for c, n in counts.items()) or "none labelled"
        log.warning(
            "no external-validation metrics: %d of %d scored patient(s) have a label (%s); both the "
            "positive class %r and the other class are needed",
            n_rows,
            n_all,
            classes,
            str(positive),
        )
        return None
    if n_rows < n_all:
        log.warning("external-validation metrics on the %d of %d scored patients that have a label", n_rows, n_all)
    cols = ScoreColumns(label, SCORE, positive=positive, group=PATIENT_ID)
    options = EvaluationOptions(threshold_rule=repr(float(threshold)), aggregate=aggregate)
    try:
        return evaluate_predictions(rows, cols, options)
    except ValidationError as exc:  # a patient with two labels, say: the scores are still written
        log.warning("no external-validation metrics: %s", exc)
        return None
