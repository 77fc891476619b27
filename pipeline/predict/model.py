"""The study's model as a set of named files, from a run folder or from an archive.

``model_files(run_dir)`` collects what prediction needs from a finished run folder:
``config.yaml`` (the resolved workflow: preprocessing and network), ``fold_<k>/model.pt`` (the
state_dicts), ``model.json`` (the locked threshold and rule, how images of a patient are combined,
the label and positive class, the headline metrics, hashes of the training manifest and code
versions) and ``leakage.json`` (SHA-256 of the id of every patient that trained or validated a
model, and the content hashes of their images). An archive holds exactly these files;
``StudyModel.from_files`` reads either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from pipeline import crossval, runfolder
from pipeline.config import WorkflowConfig, config_from_dict, dump_config, yaml_load
from pipeline.errors import CohortnetError
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
FORMAT_VERSION = 1
_HEADLINE = ("auc", "auc_ci_low", "auc_ci_high", "ci_method", "n_patients", "n_images", "n_positive")


def patient_digest(patient_id: str) -> str:
    """How a study patient id is kept in a model: its SHA-256 (an archive carries no id)."""
    return hashlib.sha256(str(patient_id).encode()).hexdigest()


def model_files(run_dir: Path) -> dict[str, bytes]:
    """The files that define the study's model, read from a finished run folder."""
    for name in (RESOLVED_CONFIG_FILE, METRICS_FILE, SPLITS_FILE, DATA_HASHES_FILE):
        if not (run_dir / name).is_file():
            raise CohortnetError(f"{run_dir} is not a finished run: {name} is missing")
    splits = pd.read_csv(run_dir / SPLITS_FILE, dtype={PATIENT_ID: str})
    config = _trained_config(run_dir)
    cfg = config_from_dict(
        yaml_load(config.decode()), base_dir=Path("."), source=RESOLVED_CONFIG_FILE, check_files=False
    )
    # a study of several members reports their mean (its models are the ensemble) or, with
    # evaluation.ensemble none, its first member (whose folds are then the model)
    used = crossval.primary_member(splits) if cfg.evaluation.ensemble == "none" else splits
    folds = sorted(int(f) for f in used["fold"].unique())
    records = runfolder.check_fold_records(run_dir, folds)
    files = {RESOLVED_CONFIG_FILE: config}
    for fold in folds:
        files[f"fold_{fold}/{MODEL_FILE}"] = (run_dir / f"fold_{fold}" / MODEL_FILE).read_bytes()
    files[MODEL_INFO_FILE] = _json(_model_info(run_dir, records))
    files[LEAKAGE_FILE] = _json(_study_members(run_dir, splits))
    return files


def _trained_config(run_dir: Path) -> bytes:
    """The config the fold models were trained with: the run's, or a nested CV's chosen point."""
    from pipeline.nested import chosen_config

    text = (run_dir / RESOLVED_CONFIG_FILE).read_bytes()
    cfg = config_from_dict(yaml_load(text.decode()), base_dir=Path("."), source=RESOLVED_CONFIG_FILE, check_files=False)
    chosen = chosen_config(run_dir, cfg)
    if chosen is None:
        raise CohortnetError(
            f"{run_dir}: the outer folds of this nested cross-validation chose search points with different "
            "model or data settings, so its models do not form one ensemble; it estimates performance. To "
            "deploy, run the chosen point as a kfold study"
        )
    return text if chosen is cfg else dump_config(chosen).encode()


def _study_members(run_dir: Path, splits: pd.DataFrame) -> dict[str, list[str]]:
    """Digests of the patients that trained or validated a model, and the content hashes of their
    images. A holdout study's test patients did neither: predicting them is not leakage."""
    seen = set(splits.loc[splits[ROLE].isin(["train", "val"]), PATIENT_ID])
    test_only = set(splits[PATIENT_ID]) - seen
    hashes = pd.read_csv(run_dir / DATA_HASHES_FILE, dtype=str)
    if test_only:
        scored = pd.read_csv(run_dir / PREDICTIONS_FILE, dtype=str, usecols=[IMAGE_ID, PATIENT_ID])
        unseen = set(scored.loc[scored[PATIENT_ID].isin(test_only), IMAGE_ID])
        hashes = hashes[~hashes[IMAGE_ID].isin(unseen)]
    return {"patients": sorted(patient_digest(p) for p in seen), "images": sorted(set(hashes["sha256"]))}


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _model_info(run_dir: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    if metrics.get("task") != "binary" or metrics.get("threshold") is None:
        raise CohortnetError(f"{run_dir}: only binary studies with a locked threshold can be exported")
    env_path = run_dir / ENVIRONMENT_FILE
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
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
class StudyModel:
    """A study's fold models with everything prediction needs; ``files`` hashes name it."""

    config: WorkflowConfig
    states: dict[int, dict[str, torch.Tensor]]  # fold -> state_dict
    info: dict[str, Any]
    leaked_patients: frozenset[str]  # SHA-256 of study patient ids
    leaked_images: frozenset[str]  # content hashes of study images
    file_hashes: dict[str, str]  # name -> SHA-256 of the file it was read from

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> StudyModel:
        needed = (RESOLVED_CONFIG_FILE, MODEL_INFO_FILE, LEAKAGE_FILE)
        missing = [n for n in needed if n not in files]
        if missing:
            raise CohortnetError(f"the model lacks {', '.join(missing)}")
        raw = yaml_load(files[RESOLVED_CONFIG_FILE].decode())
        cfg = config_from_dict(raw, base_dir=Path("."), source=RESOLVED_CONFIG_FILE, check_files=False)
        # the weights come from the folds; a pretrained path of the training machine is not needed
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=None))
        states = {}
        for name, data in files.items():
            if name.endswith("/" + MODEL_FILE):
                fold = int(name.split("/")[0].removeprefix("fold_"))
                states[fold] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not states:
            raise CohortnetError("the model holds no fold weights")
        leakage = json.loads(files[LEAKAGE_FILE])
        info = json.loads(files[MODEL_INFO_FILE])
        if info.get("calibrator") is not None:  # its scores would not be the study's: refused, not ignored
            raise CohortnetError(
                f"the model records a calibrator ({str(info['calibrator'])[:80]}), which this version of "
                "cohortnet cannot apply: its scores would not be the study's"
            )
        return cls(
            config=cfg,
            states=dict(sorted(states.items())),
            info=info,
            leaked_patients=frozenset(leakage["patients"]),
            leaked_images=frozenset(leakage["images"]),
            file_hashes={n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())},
        )

    @property
    def digest(self) -> str:
        """One hash of the whole model (every file's name and hash)."""
        text = "\n".join(f"{n} {h}" for n, h in self.file_hashes.items())
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
