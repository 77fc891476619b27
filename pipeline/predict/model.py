"""The study's model as a set of named files, from a run folder or from an archive.

``model_files(run_dir, key)`` collects what prediction needs from a finished run folder:
``config.yaml`` (what prediction and its report read of the trained config: study name, task,
model, data preprocessing, train, validation and evaluation settings; no manifest, output
folder, filter, tracking, search, image roots or pretrained path), ``fold_<k>/model.pt`` (the
state_dicts), ``model.json`` (the locked threshold and rule, how images of a patient are combined,
the label and positive class, the headline metrics, hashes of the training manifest and code
versions) and ``leakage.json`` (the keyed digest, HMAC-SHA256 under ``key``, of the id of every
patient that trained or validated a model, a check value of the key, and the content hashes of
their images). An archive holds exactly these files; ``StudyModel.from_files`` reads either.

The key is what keeps the patient list private: without it a digest cannot be tested against a
guessed id (a plain SHA-256 of record numbers is reversed by hashing every candidate). ``cohortnet
export`` draws a random key and writes it beside the archive (``key_file_for``), never inside;
a run folder read for prediction is keyed with a random key held in memory only. Format-1
archives list plain SHA-256 digests (``PLAIN_DIGEST``); they are still read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from torch import nn

from pipeline import crossval, runfolder
from pipeline.config import WorkflowConfig, config_from_dict, yaml_load
from pipeline.errors import CohortnetError, ValidationError
from pipeline.schema import (
    DATA_HASHES_FILE,
    ENVIRONMENT_FILE,
    IMAGE_ID,
    METRICS_FILE,
    MODEL_FILE,
    PATIENT_ID,
    PREDICTIONS_FILE,
    RESOLVED_CONFIG_FILE,
    ROLE,
    SPLITS_FILE,
)

MODEL_INFO_FILE = "model.json"
LEAKAGE_FILE = "leakage.json"
LEAKAGE_KEY_SUFFIX = ".leakage-key"  # the key file beside an archive: model.zip.leakage-key
FORMAT_VERSION = 2  # 2: keyed patient digests and the archived config; 1: plain SHA-256 digests
HMAC_DIGEST = "hmac-sha256"
PLAIN_DIGEST = "sha256"  # format 1
KEY_BYTES = 32
_KEY_CHECK_MESSAGE = b"cohortnet-leakage-key-check"
_KEY_TEXT = re.compile(r"[0-9a-fA-F]{64}")
# the sections of the trained config a model keeps: what predict and its report read
ARCHIVED_SECTIONS = ("study", "task", "model", "data", "train", "validation", "evaluation")
NOT_ARCHIVED = "(not archived)"  # the required manifest key of an archived config
_HEADLINE = ("auc", "auc_ci_low", "auc_ci_high", "ci_method", "n_patients", "n_images", "n_positive")


def new_leakage_key() -> bytes:
    """A random key for the patient digests of one model (``secrets``: not reproducible)."""
    return secrets.token_bytes(KEY_BYTES)


def patient_digest(patient_id: str, key: bytes) -> str:
    """How a study patient id is kept in a model: HMAC-SHA256 under the model's leakage key."""
    return hmac.new(key, str(patient_id).encode(), hashlib.sha256).hexdigest()


def plain_patient_digest(patient_id: str) -> str:
    """A format-1 model's digest of a patient id: its plain SHA-256 (reversible by guessing ids)."""
    return hashlib.sha256(str(patient_id).encode()).hexdigest()


def key_check(key: bytes) -> str:
    """The check value ``leakage.json`` stores, so that a key from another export is recognised."""
    return hmac.new(key, _KEY_CHECK_MESSAGE, hashlib.sha256).hexdigest()


def key_file_for(archive: Path) -> Path:
    """Where ``cohortnet export`` writes an archive's leakage key, and where predict looks for it."""
    return archive.with_name(archive.name + LEAKAGE_KEY_SUFFIX)


class LeakageKeyUnreadable(ValidationError):
    """A key file this user may not read (another user's, mode 0600): predict takes the key found
    beside an archive as absent then, and refuses only a ``--leakage-key-file`` it cannot read."""


def read_leakage_key(path: Path) -> bytes:
    """The key of a key file (64 hexadecimal characters); a clear error naming the file otherwise
    (``LeakageKeyUnreadable`` when permission to read it is denied)."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(256).decode("ascii").strip()
    except FileNotFoundError:
        raise ValidationError([f"{path}: no such leakage key file"], "leakage key") from None
    except PermissionError as exc:
        raise LeakageKeyUnreadable(
            [f"{path}: the leakage key file cannot be read ({exc.strerror or 'permission denied'})"], "leakage key"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ValidationError([f"{path}: the leakage key file cannot be read ({why})"], "leakage key") from None
    if not _KEY_TEXT.fullmatch(text):
        raise ValidationError(
            [f"{path} is not a cohortnet leakage key (expected 64 hexadecimal characters, as cohortnet export writes)"],
            "leakage key",
        )
    return bytes.fromhex(text)


def model_files(run_dir: Path, leakage_key: bytes) -> dict[str, bytes]:
    """The files that define the study's model, read from a finished run folder; the patient
    digests of ``leakage.json`` are keyed with ``leakage_key``."""
    for name in (RESOLVED_CONFIG_FILE, METRICS_FILE, SPLITS_FILE, DATA_HASHES_FILE):
        if not (run_dir / name).is_file():
            raise CohortnetError(f"{run_dir} is not a finished run: {name} is missing")
    splits = runfolder.read_table(run_dir / SPLITS_FILE, run_dir, (PATIENT_ID, ROLE, "fold"), dtype={PATIENT_ID: str})
    cfg = _trained_config(run_dir)
    # a study of several members reports their mean (its models are the ensemble) or, with
    # evaluation.ensemble none, its first member (whose folds are then the model)
    used = crossval.primary_member(splits) if cfg.evaluation.ensemble == "none" else splits
    folds = sorted(int(f) for f in used["fold"].unique())
    records = runfolder.check_fold_records(run_dir, folds)
    files = {RESOLVED_CONFIG_FILE: archived_config(cfg)}
    for fold in folds:
        files[f"fold_{fold}/{MODEL_FILE}"] = (run_dir / f"fold_{fold}" / MODEL_FILE).read_bytes()
    files[MODEL_INFO_FILE] = _json(_model_info(run_dir, records))
    files[LEAKAGE_FILE] = _json(_study_members(run_dir, splits, leakage_key))
    return files


def study_image_roots(run_dir: Path) -> tuple[str, ...]:
    """The run's ``data.image_roots`` (absolute, of this machine): where a run folder's new
    manifests may also point. An archive carries none."""
    return _trained_config(run_dir).data.image_roots


def _read_config(text: bytes) -> WorkflowConfig:
    return config_from_dict(
        yaml_load(text.decode()), base_dir=Path("."), source=RESOLVED_CONFIG_FILE, check_files=False
    )


def _trained_config(run_dir: Path) -> WorkflowConfig:
    """The config the fold models were trained with: the run's, or a nested CV's chosen point."""
    from pipeline.nested import chosen_config

    cfg = _read_config((run_dir / RESOLVED_CONFIG_FILE).read_bytes())
    chosen = chosen_config(run_dir, cfg)
    if chosen is None:
        raise CohortnetError(
            f"{run_dir}: the outer folds of this nested cross-validation chose search points with different "
            "model or data settings, so its models do not form one ensemble; it estimates performance. To "
            "deploy, run the chosen point as a kfold study"
        )
    return chosen


def archived_config(cfg: WorkflowConfig) -> bytes:
    """The config as a model keeps it: ``ARCHIVED_SECTIONS`` only, without the study machine's
    paths (``data.image_roots`` emptied, ``model.pretrained`` dropped: the weights are the folds'),
    and a placeholder for the required ``manifest``. No manifest path, output folder, filter values
    (they may name hospitals or patients), tracking URI or search space."""
    tree = cfg.to_dict()
    kept: dict[str, Any] = {"study": tree["study"], "manifest": NOT_ARCHIVED}
    kept.update({k: tree[k] for k in ARCHIVED_SECTIONS if k != "study"})
    kept["model"] = {**kept["model"], "pretrained": None}
    kept["data"] = {**kept["data"], "image_roots": []}
    return yaml.safe_dump(kept, sort_keys=False).encode()


def _study_members(run_dir: Path, splits: pd.DataFrame, key: bytes) -> dict[str, Any]:
    """Keyed digests of the patients that trained or validated a model, the key's check value, and
    the content hashes of their images. A holdout study's test patients did neither: predicting
    them is not leakage."""
    seen = set(splits.loc[splits[ROLE].isin(["train", "val"]), PATIENT_ID])
    test_only = set(splits[PATIENT_ID]) - seen
    hashes = runfolder.read_table(run_dir / DATA_HASHES_FILE, run_dir, (IMAGE_ID, "sha256"), dtype=str)
    if test_only:
        scored = runfolder.read_table(run_dir / PREDICTIONS_FILE, run_dir, (IMAGE_ID, PATIENT_ID), dtype=str)
        unseen = set(scored.loc[scored[PATIENT_ID].isin(test_only), IMAGE_ID])
        hashes = hashes[~hashes[IMAGE_ID].isin(unseen)]
    return {
        "patient_digest": HMAC_DIGEST,
        "key_check": key_check(key),
        "patients": sorted(patient_digest(p, key) for p in seen),
        "images": sorted(set(hashes["sha256"])),
    }


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _model_info(run_dir: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    metrics = runfolder.read_record(run_dir / METRICS_FILE, run_dir)
    if metrics.get("task") != "binary" or metrics.get("threshold") is None:
        raise CohortnetError(f"{run_dir}: only binary studies with a locked threshold can be exported")
    env_path = run_dir / ENVIRONMENT_FILE
    env = runfolder.read_record(env_path, run_dir) if env_path.is_file() else {}
    return {
        "format_version": FORMAT_VERSION,
        "study_run": run_dir.name,
        "folds": [{k: r.get(k) for k in ("fold", "best_epoch", "best_val_auc", "precision")} for r in records],
        "threshold": metrics["threshold"],
        "threshold_rule": metrics.get("threshold_rule"),
        "threshold_source": metrics.get("threshold_source"),
        "aggregate": metrics.get("aggregate", "mean"),
        "label_col": metrics["label_col"],
        "positive": str(metrics["positive"]),
        "calibrator": None,  # studies fit no recalibration; predict refuses a model that records one
        "headline": {k: metrics.get(k) for k in _HEADLINE},
        "training_manifest_sha256": env.get("manifest_sha256"),
        "versions": {"python": env.get("python"), "git_commit": env.get("git_commit"), **env.get("packages", {})},
    }


@dataclasses.dataclass(frozen=True)
class _Leakage:
    scheme: str  # HMAC_DIGEST (format 2) or PLAIN_DIGEST (format 1)
    key_check: str | None
    patients: frozenset[str]
    images: frozenset[str]


def _read_leakage(data: bytes, info: Mapping[str, Any]) -> _Leakage:
    """``leakage.json`` of either format; anything else is refused, not guessed."""
    version = info.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CohortnetError(
            f"the model is of format {version!r}; this version of cohortnet reads formats up to {FORMAT_VERSION}"
        )
    try:
        leakage = json.loads(data)
        scheme = leakage.get("patient_digest", PLAIN_DIGEST)
        patients, images = frozenset(leakage["patients"]), frozenset(leakage["images"])
    except (AttributeError, KeyError, TypeError, ValueError):
        raise CohortnetError(f"the model's {LEAKAGE_FILE} is unreadable") from None
    check = leakage.get("key_check")
    if scheme not in (HMAC_DIGEST, PLAIN_DIGEST) or (scheme == HMAC_DIGEST and not isinstance(check, str)):
        raise CohortnetError(f"the model's {LEAKAGE_FILE} names an unknown patient digest {str(scheme)[:40]!r}")
    return _Leakage(scheme, check if scheme == HMAC_DIGEST else None, patients, images)


@dataclasses.dataclass(frozen=True)
class StudyModel:
    """A study's fold models with everything prediction needs; ``files`` hashes name it.

    The patient check needs ``leakage_key`` for a format-2 model (``with_leakage_key``); a
    format-1 model's plain digests need none. ``image_roots``: folders besides a new manifest's
    own where its images may lie (a run folder's study roots; an archive has none)."""

    config: WorkflowConfig
    states: dict[int, dict[str, torch.Tensor]]  # fold -> state_dict
    info: dict[str, Any]
    leaked_patients: frozenset[str]  # digests of study patient ids (``patient_scheme``)
    leaked_images: frozenset[str]  # content hashes of study images
    file_hashes: dict[str, str]  # name -> SHA-256 of the file it was read from
    patient_scheme: str = HMAC_DIGEST
    key_check: str | None = None
    leakage_key: bytes | None = dataclasses.field(default=None, repr=False)
    image_roots: tuple[str, ...] = ()
    from_run_dir: bool = False
    expected_key_file: Path | None = None  # an archive's: where its key is looked for by default
    key_unavailable: str | None = None  # why the key at ``expected_key_file`` was not used ("cannot be read ...")

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> StudyModel:
        needed = (RESOLVED_CONFIG_FILE, MODEL_INFO_FILE, LEAKAGE_FILE)
        missing = [n for n in needed if n not in files]
        if missing:
            raise CohortnetError(f"the model lacks {', '.join(missing)}")
        cfg = _read_config(files[RESOLVED_CONFIG_FILE])
        # the weights come from the folds; a pretrained path (a format-1 config records the
        # training machine's) is never opened
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=None))
        states = {}
        for name, data in files.items():
            if name.endswith("/" + MODEL_FILE):
                fold = int(name.split("/")[0].removeprefix("fold_"))
                states[fold] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not states:
            raise CohortnetError("the model holds no fold weights")
        info = json.loads(files[MODEL_INFO_FILE])
        if info.get("calibrator") is not None:  # its scores would not be the study's: refused, not ignored
            raise CohortnetError(
                f"the model records a calibrator ({str(info['calibrator'])[:80]}), which this version of "
                "cohortnet cannot apply: its scores would not be the study's"
            )
        leakage = _read_leakage(files[LEAKAGE_FILE], info)
        return cls(
            config=cfg,
            states=dict(sorted(states.items())),
            info=info,
            leaked_patients=leakage.patients,
            leaked_images=leakage.images,
            file_hashes={n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())},
            patient_scheme=leakage.scheme,
            key_check=leakage.key_check,
        )

    def with_leakage_key(self, key: bytes, source: str) -> StudyModel:
        """This model with the key of its patient digests; a key of another export (``source``
        names its file) is refused. A format-1 model needs no key and is returned as it is."""
        if self.patient_scheme != HMAC_DIGEST:
            return self
        if not hmac.compare_digest(key_check(key), self.key_check or ""):
            raise ValidationError(
                [
                    f"{source} is not the leakage key of this model (it does not match the key check in "
                    f"{LEAKAGE_FILE}): give the key file that the `cohortnet export` of this archive wrote beside it"
                ],
                "leakage key",
            )
        return dataclasses.replace(self, leakage_key=key)

    @property
    def checks_patients(self) -> bool:
        """Whether patient ids can be compared with the study's (a key, or a format-1 model)."""
        return self.patient_scheme == PLAIN_DIGEST or self.leakage_key is not None

    def study_patients(self, patient_ids: pd.Series) -> pd.Series:
        """True where the id is one of a patient that trained or validated a model; all False
        when the check cannot run (``checks_patients``)."""
        if self.patient_scheme == PLAIN_DIGEST:
            digests = patient_ids.map(plain_patient_digest)
        elif self.leakage_key is not None:
            key = self.leakage_key
            digests = patient_ids.map(lambda p: patient_digest(p, key))
        else:
            return pd.Series(False, index=patient_ids.index)
        return digests.isin(self.leaked_patients)

    @property
    def digest(self) -> str:
        """One hash of the model: every file's name and hash but ``leakage.json``'s, which changes
        no score and is keyed afresh for each export (and each time a run folder is read)."""
        text = "\n".join(f"{n} {h}" for n, h in self.file_hashes.items() if n != LEAKAGE_FILE)
        return hashlib.sha256(text.encode()).hexdigest()

    def networks(self, folds: list[int] | None = None) -> dict[int, nn.Module]:
        """The fold networks (eval mode, CPU), all of them or the chosen folds."""
        from pipeline.models import build_model

        chosen = folds if folds is not None else list(self.states)
        unknown = [f for f in chosen if f not in self.states]
        if unknown:
            raise CohortnetError(f"fold(s) {unknown} are not in the model (folds: {list(self.states)})")
        out = {}
        for fold in chosen:
            net = build_model(self.config.model)
            net.load_state_dict(self.states[fold])
            out[fold] = net.eval()
        return out

    @property
    def best_fold(self) -> int:
        """The fold whose chosen epoch scored best on its validation patients."""
        folds = self.info["folds"]
        return int(max(folds, key=lambda r: (r.get("best_val_auc") or 0.0, -r["fold"]))["fold"])
