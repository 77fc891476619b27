"""Training runs that the training and precision benchmarks time on the workflow's first fold.

``OurRun`` is a study's fold: ``prepare_for_workflow`` (the workflow's cache policy), then
``pipeline.training``'s ``make_trainer``, ``seed_epoch`` and ``train_epoch`` (what ``train_fold``
runs per epoch, less the validation and checkpoint) and ``pipeline.inference.predict_logits``.
``TutorialRun`` is the hand-written MONAI tutorial loop it is compared against.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from sklearn.metrics import roc_auc_score

from pipeline.augment import make_augmentation
from pipeline.benchmarks.compute import sync, tf32_enabled, tf32_flags
from pipeline.config import WorkflowConfig
from pipeline.datasets import PreparedCohort, prepare_for_workflow, targets
from pipeline.inference import predict_logits
from pipeline.manifest import Cohort
from pipeline.models import build_model
from pipeline.precision import Precision, keep_in_fp32
from pipeline.provenance import image_hashes
from pipeline.schema import IMAGE_ID, PATIENT_ID, TARGET
from pipeline.training import (
    EpochStats,
    FoldSpec,
    TrainStep,
    make_loss,
    make_trainer,
    run_epoch,
    seed_epoch,
    seed_everything,
    train_epoch,
    warmup_cosine,
)
from pipeline.transforms import augmentation_transforms, deterministic_transforms

# FoldSpec's checkpoint is only written by train_fold; a benchmark run saves nothing
_NO_CHECKPOINT = Path("unused-benchmark-checkpoint.pt")


def fold0(cfg: WorkflowConfig, cohort: Cohort) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training images and held-out images of the workflow's first fold (for the AUC comparison)."""
    from pipeline.study import make_splits

    splits = make_splits(cfg, cohort)
    part = splits[splits["fold"] == splits["fold"].min()]
    roles = cohort.table[PATIENT_ID].map(dict(zip(part[PATIENT_ID], part["role"], strict=False)))
    return cohort.table[roles == "train"], cohort.table[roles != "train"]


def auc(y: np.ndarray, s: np.ndarray) -> float | None:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def per_sec(st: EpochStats) -> float:
    return st.samples / st.seconds


def warm_median(stats: list[EpochStats]) -> float:
    """Median samples/s of the epochs after the first (of the only one when there is one)."""
    return statistics.median(per_sec(e) for e in stats[1:] or stats)


def format_auc(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


class Predictions(NamedTuple):
    """Labels and logits over the held-out images, and the seconds their prediction took."""

    y: np.ndarray
    logits: np.ndarray
    seconds: float


@dataclass(frozen=True)
class Prepared:
    """The cohort preprocessed once as a study does it, and what that took."""

    cohort: PreparedCohort
    hash_s: float
    preprocess_s: float

    @classmethod
    def of(cls, cfg: WorkflowConfig, cohort: Cohort, device: torch.device) -> Prepared:
        start = time.perf_counter()
        hashes = image_hashes(cohort.table[IMAGE_ID].tolist(), cohort.table["path"].tolist())
        hash_s = time.perf_counter() - start
        start = time.perf_counter()
        # the workflow's cache policy, as in a study: on a GPU ``auto`` keeps the cohort on the device
        prepared = prepare_for_workflow(cfg, cohort.table, hashes, device=device, progress=False)
        return cls(prepared, hash_s, time.perf_counter() - start)


def _fold_spec(cfg: WorkflowConfig, device: torch.device, precision: Precision, epochs: int) -> FoldSpec:
    """The fold's training as a study resolves it, its schedule over the benchmark's ``epochs``
    without warm-up."""
    return FoldSpec(
        dataclasses.replace(cfg.train, epochs=epochs, warmup_epochs=0),
        make_augmentation(cfg.data, cfg.model.spatial_dims),
        device,
        _NO_CHECKPOINT,
        seed=cfg.train.seed,
        precision=precision,
        spatial_dims=cfg.model.spatial_dims,
    )


class OurRun:
    """Our pipeline from the files, through the study's training code: preprocessing once into the
    cache, then epochs from the cache. ``tf32``: TF32 for fp32 convolutions and matmuls during its
    epochs and predictions (False: full fp32; None: torch's flags as they are), restored after each."""

    def __init__(
        self,
        cfg: WorkflowConfig,
        cohort: Cohort,
        device: torch.device,
        precision: Precision,
        epochs: int,
        shared: Prepared | None = None,
        tf32: bool | None = None,
    ) -> None:
        """``shared``: another run's preprocessing of the same cohort (hashes and cache), reused."""
        train_table, held_out = fold0(cfg, cohort)
        self.cfg, self.device, self.precision, self.tf32 = cfg, device, precision, tf32
        seed_everything(cfg.train.seed, cfg.train.deterministic)  # the initial weights depend on the seed only
        self.model = build_model(cfg.model).to(device)
        keep_in_fp32(self.model, precision.fp32_layers)
        self.prepared = shared or Prepared.of(cfg, cohort, device)
        self.n_cohort = len(cohort.table)
        self.train_items = self.prepared.cohort.items(train_table[IMAGE_ID].tolist())
        self.val_items = self.prepared.cohort.items(held_out[IMAGE_ID].tolist())
        self.spec = _fold_spec(cfg, device, precision, epochs)
        self.trainer = make_trainer(self.model, self.train_items, self.spec)
        with tf32_enabled(tf32):
            self.tf32_flags = tf32_flags()  # the TF32 flags its epochs and predictions run with

    @property
    def remainder_batch(self) -> int:
        """The size of the last, smaller batch of an epoch (0: none; a batch of one is dropped)."""
        rest = len(self.train_items) % self.cfg.train.batch_size
        return 0 if rest == 1 else rest

    def epoch(self, epoch: int) -> EpochStats:
        """Train epoch ``epoch`` (1-based), its shuffling and augmentation drawn as a study draws them."""
        with tf32_enabled(self.tf32):
            seed_epoch(self.spec, self.trainer, epoch)
            return train_epoch(self.spec, self.trainer)

    def predict(self) -> Predictions:
        """Labels, logits and seconds over the held-out images (``predict_logits``, as a study)."""
        with tf32_enabled(self.tf32):
            start = time.perf_counter()
            logits = predict_logits(
                self.model,
                self.val_items,
                device=self.device,
                bf16=self.precision.bf16,
                batch_size=self.cfg.train.batch_size * 2,
            )
            sync(self.device)
            seconds = time.perf_counter() - start
        return Predictions(targets(self.val_items), np.asarray(logits, dtype=float), seconds)


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """MONAI datalist: the image path (read by the transform chain every time), id and target."""
    return [
        {"image": p, IMAGE_ID: i, TARGET: float(t)}
        for p, i, t in zip(table["path"].tolist(), table[IMAGE_ID].tolist(), table[TARGET].tolist(), strict=True)
    ]


class TutorialRun:
    """The straightforward MONAI tutorial loop on the same data, model and transforms: the whole
    chain (MONAI's per-sample augmentation included) recomputed every epoch, DataLoader(num_workers=2),
    fp32, no cache. Written out here on purpose, as the reference our pipeline is compared against:
    its loader, optimizer, schedule and prediction loop are the tutorial's, not the study's (only
    the training step ``run_epoch`` and the loss are shared)."""

    def __init__(self, cfg: WorkflowConfig, cohort: Cohort, device: torch.device, epochs: int) -> None:
        train_table, self.held_out = fold0(cfg, cohort)
        dims = cfg.model.spatial_dims
        self.cfg, self.device = cfg, device
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        self.model = build_model(cfg.model).to(device)
        chain = Compose([deterministic_transforms(cfg.data, dims), augmentation_transforms(cfg.data, dims)])
        records = _records(train_table)
        self.loader = DataLoader(
            Dataset(records, chain),
            batch_size=cfg.train.batch_size,
            shuffle=True,
            num_workers=2,
            drop_last=len(records) % cfg.train.batch_size == 1,
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.scheduler = warmup_cosine(self.optimizer, 0, max(1, len(self.loader)) * epochs)
        self.loss_fn = make_loss(cfg.train, train_table[TARGET].to_numpy(), device)

    def epoch(self) -> EpochStats:
        step = TrainStep(self.model, self.loss_fn, self.optimizer, self.scheduler)
        return run_epoch(step, self.loader, device=self.device, bf16=False)

    def predict(self) -> Predictions:
        dims = self.cfg.model.spatial_dims
        val_loader = DataLoader(
            Dataset(_records(self.held_out), deterministic_transforms(self.cfg.data, dims)),
            batch_size=self.cfg.train.batch_size * 2,
            num_workers=2,
        )
        self.model.eval()
        logits, ys = [], []
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in val_loader:
                logits.append(self.model(batch["image"].to(self.device)).reshape(-1).float().cpu().numpy())
                ys.append(batch[TARGET].numpy())
        return Predictions(np.concatenate(ys), np.concatenate(logits).astype(float), time.perf_counter() - start)
