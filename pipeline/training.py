"""Train one fold: AdamW with a warm-up + cosine schedule, a class-balanced loss or sampler,
bf16 autocast where it is available and faster, and the best epoch chosen on the fold's
validation patients. The chosen weights are saved as a plain state_dict (``model.pt``).

Resume: after every epoch the complete training state (model, optimizer, scheduler, best weights,
history) is written atomically to ``last.pt``; a restarted run continues after the last complete
epoch. Every epoch's randomness (shuffling, augmentation, dropout) is seeded from
``(seed, epoch)`` alone, so a resumed run draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, DistributedSampler, DistributedWeightedRandomSampler
from monai.transforms import Compose
from monai.utils import set_determinism
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import WeightedRandomSampler

from pipeline.augment import BatchAugment, split_augmentation
from pipeline.config import TrainConfig
from pipeline.datasets import sample_dataset, targets
from pipeline.distributed import SINGLE, DistContext, barrier
from pipeline.errors import CohortnetError, NonFiniteError, ValidationError
from pipeline.inference import predict_logits
from pipeline.precision import Precision, keep_in_fp32
from pipeline.reporting import artifacts
from pipeline.schema import CHECKPOINT_FILE, TARGET

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    best_epoch: int
    best_val_auc: float | None
    # one row per epoch: epoch, train_loss, val_loss, val_auc, lr, seconds, data_seconds, precision
    history: pd.DataFrame


@dataclass
class EpochStats:
    loss: float
    samples: int
    seconds: float
    data_seconds: float  # time spent waiting for the next batch
    first_nonfinite_step: int | None = None  # 1-based step of the first NaN/Inf loss or gradient


@dataclass
class _State:
    """What ``last.pt`` holds besides the model, optimizer and scheduler."""

    epoch: int = 0
    best_score: tuple[float, float] = (-math.inf, -math.inf)
    best_epoch: int = 0
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """The torch device ``name`` (auto, cpu, cuda) asks for; ``key`` names the setting in the error
    (a ValidationError, exit 2) when it asks for CUDA on a machine without it."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValidationError(
            [f"{key} is cuda but no CUDA device is available on this machine: use auto or cpu"],
            "command line" if key.startswith("-") else "workflow",
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy, torch and MONAI; full determinism (slower on GPU) only when asked."""
    set_determinism(seed=seed, use_deterministic_algorithms=True if deterministic else None)
    # set_determinism also pins cuDNN to deterministic kernels; undo that unless asked, for speed.
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def memory_format_for(cfg: TrainConfig, device: torch.device, spatial_dims: int) -> torch.memory_format:
    """channels-last (NDHWC) where it is faster: cuDNN's convolutions on GPUs; measured slower
    for 3D convolutions on the development CPU, so ``auto`` keeps the default layout there."""
    on = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")
    if not on:
        return torch.contiguous_format
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 100_003 + epoch * 7_919) % (2**31 - 1)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr, then cosine decay to zero, stepped once per batch.

    Not MONAI's ``WarmupCosineSchedule``: its first warm-up step has lr 0 (a wasted step, and with
    one warm-up epoch on a small cohort a visible share of it); here step k of the warm-up uses
    (k + 1) / warmup_steps of the base lr, and past ``total_steps`` the lr stays at zero (MONAI's
    cosine rises again there).
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loader(
    items: list[dict[str, Any]],
    cfg: TrainConfig,
    augment: Any,
    generator: torch.Generator,
    ctx: DistContext = SINGLE,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Training loader: shuffled (or class-balanced sampling), trailing singleton batch dropped.

    Under torchrun each rank draws its own part of every epoch (MONAI's distributed samplers;
    the training sampler pads the last batch, which only matters for training, never for
    predictions). Call ``set_epoch(epoch)`` on ``loader.sampler`` when it has one.
    """
    y = targets(items)
    n_pos = float(y.sum())
    dataset = sample_dataset(items, augment)
    sampler: Any = None
    per_rank = math.ceil(len(items) / ctx.world_size)
    if cfg.class_balance == "sampler" and 0 < n_pos < len(y):
        weights = np.where(y == 1, 0.5 / n_pos, 0.5 / (len(y) - n_pos)).tolist()
        if ctx.enabled:
            sampler = DistributedWeightedRandomSampler(
                dataset,
                weights,
                num_samples_per_rank=per_rank,
                generator=generator,
                num_replicas=ctx.world_size,
                rank=ctx.rank,
            )
        else:
            sampler = WeightedRandomSampler(weights, num_samples=len(y), replacement=True, generator=generator)
    elif ctx.enabled:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    # BatchNorm cannot normalise a batch of one sample; drop a trailing singleton batch.
    drop_last = per_rank % cfg.batch_size == 1
    # Cached tensors need no worker processes (on 2 cores they would steal the model's threads);
    # host tensors bound for a GPU go through pinned memory so the copy overlaps compute.
    first = items[0]["image"] if items else None
    on_host = not (isinstance(first, torch.Tensor) and first.is_cuda)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=0,
        generator=generator,
        pin_memory=pin_memory and on_host,
    )


def make_loss(cfg: TrainConfig, y: np.ndarray, device: torch.device) -> nn.Module:
    """BCE on one logit; with ``weighted_loss`` positives weigh n_negative / n_positive."""
    n_pos = float(y.sum())
    if cfg.class_balance == "weighted_loss" and 0 < n_pos < len(y):
        pos_weight = torch.tensor([(len(y) - n_pos) / n_pos], device=device)
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    return nn.BCEWithLogitsLoss()


@dataclass
class TrainStep:
    """What one gradient step uses: the model (or its torch.compile / DDP wrapper), the loss, the
    optimizer and its per-step schedule (None: constant), the batched augmentation on the device
    (None: none) and the memory format the inputs are laid out in."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    augment: BatchAugment | None = None
    memory_format: torch.memory_format = torch.contiguous_format


def run_epoch(step: TrainStep, loader: Iterable[dict[str, Any]], *, device: torch.device, bf16: bool) -> EpochStats:
    """One pass over ``loader`` (any iterable of batches, e.g. a DataLoader; batches augmented on
    the device by ``step.augment`` when given); returns the mean loss and where the time went."""
    model, optimizer, scheduler, augment = step.model, step.optimizer, step.scheduler, step.augment
    model.train()
    losses, finite, samples, waited = [], [], 0, 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    start = tick = time.perf_counter()
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        y = batch[TARGET].to(device, non_blocking=True).float()
        waited += time.perf_counter() - tick
        if augment is not None:
            x = augment(x)
        x = x.contiguous(memory_format=step.memory_format)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).reshape(len(x), -1)[:, 0]
        loss = step.loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # one flag per step, kept on the device (no synchronisation per step on a GPU)
        finite.append(torch.isfinite(loss) & torch.isfinite(_grad_norm(params)))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach())
        samples += len(x)
        tick = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    mean = float(torch.stack(losses).mean()) if losses else math.nan
    bad = (~torch.stack(finite)).nonzero() if finite else torch.zeros(0)
    first_bad = int(bad[0]) + 1 if len(bad) else None
    return EpochStats(mean, samples, time.perf_counter() - start, waited, first_bad)


def _grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """The gradients' total 2-norm (NaN or Inf when any gradient is)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: fused (foreach) kernels
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def validation_metrics(
    model: nn.Module,
    items: list[dict[str, Any]],
    device: torch.device,
    bf16: bool,
    batch: int,
    ctx: DistContext = SINGLE,
) -> tuple[float, float | None]:
    """(BCE loss, AUC or None when the validation set holds one class) on ``items``; under
    torchrun every rank gets the same numbers, so all ranks make the same best-epoch choice."""
    logits = predict_logits(model, items, device=device, bf16=bf16, batch_size=batch, ctx=ctx)
    if not np.isfinite(logits).all():
        raise NonFiniteError(f"{int((~np.isfinite(logits)).sum())} of {len(logits)} validation scores are NaN or Inf")
    y = targets(items)
    loss = float(nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(y)))
    auc = float(roc_auc_score(y, logits)) if 0 < y.sum() < len(y) else None
    return loss, auc


@dataclass(frozen=True)
class FoldSpec:
    """How one fold trains: everything but the model and the images (resolved once by the study)."""

    cfg: TrainConfig
    augment: Compose | BatchAugment
    device: torch.device
    checkpoint: Path  # model.pt; the resumable state lives beside it in last.pt
    seed: int
    precision: Precision
    spatial_dims: int
    label: str = ""  # log prefix, e.g. "fold 2: "
    ctx: DistContext = SINGLE
    # nested CV's refit: train exactly this many epochs of the cfg.epochs schedule, without
    # validation, and keep the last (the epoch the inner folds chose)
    stop_after: int | None = None


@dataclass
class Trainer:
    """The objects one fold trains with (``make_trainer``): the gradient step, the loader and the
    generator that shuffles it."""

    step: TrainStep
    loader: DataLoader
    generator: torch.Generator


def train_fold(
    model: nn.Module, train_items: list[dict[str, Any]], val_items: list[dict[str, Any]], spec: FoldSpec
) -> FoldResult:
    """Fit ``model`` in place on ``train_items``; keep the epoch that scores best on ``val_items``.

    ``cfg.select`` picks the criterion: ``auc`` (ties go to the lower loss) or ``loss`` (the
    lower validation BCE, ties to the higher AUC). The best state is written to
    ``spec.checkpoint`` (a state_dict) and loaded into ``model`` before returning. The resumable
    training state lives beside it in ``last.pt``, which the caller removes once the fold's
    predictions and ``done.json`` are written (a crash while predicting resumes without retraining).
    The caller seeds once (``seed_everything``) before it builds the model, whose initial weights
    depend on that seed; every epoch is then seeded from (``spec.seed``, epoch) alone.
    """
    cfg, ctx = spec.cfg, spec.ctx
    tr = make_trainer(model, train_items, spec)
    last = spec.checkpoint.with_name(CHECKPOINT_FILE)
    state = _State()
    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if last.is_file():
        state, best_state = _load_training_state(last, model, tr.step.optimizer, tr.step.scheduler)
        log.info("%sresuming after epoch %d", spec.label, state.epoch)
    for epoch in range(state.epoch + 1, (spec.stop_after or cfg.epochs) + 1):
        if cfg.patience and state.stale >= cfg.patience and spec.stop_after is None:
            break
        if _one_epoch(model, val_items, spec, tr, state, epoch):
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if ctx.is_main:
            _save_training_state(last, model, tr.step.optimizer, tr.step.scheduler, state, best_state, spec.precision)
        barrier(ctx)
        if cfg.patience and state.stale >= cfg.patience:
            log.info("%sno better validation score for %d epochs: stopping", spec.label, cfg.patience)
    model.load_state_dict(best_state)
    if ctx.is_main:
        save_state_dict(best_state, spec.checkpoint)  # last.pt stays until the fold's done.json is written
    barrier(ctx)
    best_row = state.history[state.best_epoch - 1] if state.best_epoch else {}
    return FoldResult(state.best_epoch, best_row.get("val_auc"), pd.DataFrame(state.history))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over all of ``model``'s parameters with the workflow's lr and weight decay."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_trainer(model: nn.Module, train_items: list[dict[str, Any]], spec: FoldSpec) -> Trainer:
    """Move ``model`` to the device and memory format and build what it trains with: the loader,
    the batched augmentation, loss, optimizer and warm-up + cosine schedule over ``cfg.epochs``."""
    cfg, device, ctx = spec.cfg, spec.device, spec.ctx
    memory_format = memory_format_for(cfg, device, spec.spatial_dims)
    model.to(device)
    model.to(memory_format=memory_format)
    # under torchrun the gradient step goes through DDP; evaluation and state use the bare model
    stepper: nn.Module = model
    if cfg.compile:
        stepper = torch.compile(model)  # type: ignore[assignment]
    if ctx.enabled:
        stepper = DistributedDataParallel(stepper, device_ids=[device.index] if device.type == "cuda" else None)
    generator = torch.Generator()
    # batched augmentation runs in run_epoch on the device; MONAI's chain runs per sample in the loader
    per_sample, batch_augment = split_augmentation(spec.augment)
    loader = make_loader(train_items, cfg, per_sample, generator, ctx, spec.seed, pin_memory=device.type == "cuda")
    loss_fn = make_loss(cfg, targets(train_items), device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = max(1, len(loader))
    scheduler = warmup_cosine(optimizer, steps_per_epoch * cfg.warmup_epochs, steps_per_epoch * cfg.epochs)
    step = TrainStep(stepper, loss_fn, optimizer, scheduler, batch_augment, memory_format)
    return Trainer(step, loader, generator)


def _one_epoch(
    model: nn.Module, val_items: list[dict[str, Any]], spec: FoldSpec, tr: Trainer, state: _State, epoch: int
) -> bool:
    """Train epoch ``epoch`` (its randomness seeded from (seed, epoch) alone), validate, record it in
    ``state`` and the log; True when it is the best epoch so far."""
    cfg, ctx, precision = spec.cfg, spec.ctx, spec.precision
    seed_epoch(spec, tr, epoch)
    stats = train_epoch(spec, tr)
    if stats.first_nonfinite_step is not None:
        what = f"the training loss or gradient became NaN or Inf at step {stats.first_nonfinite_step}"
        raise _stopped(spec.label, epoch, precision, what)
    val_loss, val_auc = math.nan, None
    if val_items:
        try:
            val_loss, val_auc = validation_metrics(
                model, val_items, spec.device, precision.bf16, cfg.batch_size * 2, ctx
            )
        except NonFiniteError as exc:
            raise _stopped(spec.label, epoch, precision, str(exc)) from None
    auc_key = val_auc if val_auc is not None else 0.0
    score = (auc_key, -val_loss) if cfg.select == "auc" else (-val_loss, auc_key)
    improved = score > state.best_score or not val_items  # no validation (a refit): the last epoch
    if improved:
        state.best_score, state.best_epoch, state.stale = score, epoch, 0
    else:
        state.stale += 1
    state.epoch = epoch
    state.history.append(
        {
            "epoch": epoch,
            "train_loss": stats.loss,
            "val_loss": val_loss,
            "val_auc": val_auc,
            "lr": tr.step.optimizer.param_groups[0]["lr"],
            "seconds": stats.seconds,
            "data_seconds": stats.data_seconds,
            "precision": precision.name,
        }
    )
    auc_text = f"{val_auc:.3f}" if val_auc is not None else "n/a"
    log.info(
        "%sepoch %d/%d  train loss %.4f  val loss %.4f  val AUC %s%s  (%.1fs, %.0f samples/s)",
        spec.label,
        epoch,
        spec.stop_after or cfg.epochs,
        stats.loss,
        val_loss,
        auc_text,
        " *" if improved else "",
        stats.seconds,
        stats.samples / max(stats.seconds, 1e-9),
    )
    return improved


def seed_epoch(spec: FoldSpec, tr: Trainer, epoch: int) -> None:
    """Seed epoch ``epoch``'s randomness (shuffling, augmentation, dropout) from (seed, epoch) alone."""
    es = epoch_seed(spec.seed, epoch)
    torch.manual_seed(es + spec.ctx.rank)
    tr.generator.manual_seed(es)
    spec.augment.set_random_state(seed=es + spec.ctx.rank)
    if hasattr(tr.loader.sampler, "set_epoch"):
        tr.loader.sampler.set_epoch(epoch)


def train_epoch(spec: FoldSpec, tr: Trainer) -> EpochStats:
    """One training pass of ``tr`` in the fold's precision; NaN or Inf steps are counted in the
    result, not raised (``train_fold`` stops the fold on them)."""
    return run_epoch(tr.step, tr.loader, device=spec.device, bf16=spec.precision.bf16)


def _stopped(label: str, epoch: int, precision: Precision, what: str) -> NonFiniteError:
    """The error that stops a fold on non-finite values: where, what, and what to try."""
    advice = (
        "Try --set \"train.amp='off'\" (fp32), a lower train.lr or more train.warmup_epochs"
        if precision.bf16
        else "Try a lower train.lr, more train.warmup_epochs or check the input intensities (data.intensity)"
    )
    where = label.rstrip(": ") or "training"
    return NonFiniteError(
        f"{where}, epoch {epoch} ({precision.name}): {what}. The fold is stopped; finished folds and the "
        f"last complete epoch are kept, and the same command resumes. {advice}"
    )


def recorded_precision(checkpoint: Path, model: nn.Module) -> Precision | None:
    """The precision an interrupted fold started with (from ``last.pt`` beside ``checkpoint``),
    applied to ``model``; None when the fold has no saved epoch. A resumed fold never re-decides."""
    last = checkpoint.with_name(CHECKPOINT_FILE)
    if not last.is_file():
        return None
    recorded = _read_checkpoint(last).get("precision")
    if not isinstance(recorded, dict):
        return None
    layers = tuple(str(n) for n in recorded.get("fp32_layers", ()))
    keep_in_fp32(model, layers)
    return Precision(bool(recorded["bf16"]), layers, "as recorded when the fold started")


def _save_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    state: _State,
    best_state: dict[str, torch.Tensor],
    precision: Precision,
) -> None:
    payload = {
        "precision": {"bf16": precision.bf16, "fp32_layers": list(precision.fp32_layers)},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "best_model": best_state,
        "epoch": state.epoch,
        "best_score": list(state.best_score),
        "best_epoch": state.best_epoch,
        "stale": state.stale,
        "history": [{k: _storable(v) for k, v in row.items()} for row in state.history],
        "torch_rng": torch.get_rng_state(),
    }
    save_state_dict(payload, path)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """``last.pt`` loaded safely; a damaged one is named, with what to do, instead of a traceback."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or "model" not in payload:
            raise ValueError("not a training checkpoint")
    except Exception as exc:  # any unreadable file is the same problem for the user
        raise CohortnetError(
            f"{path.parent.name}/{path.name} is damaged ({type(exc).__name__}); delete it to train that fold "
            "again from its first epoch (finished folds are kept)"
        ) from None
    return payload


def _storable(value: Any) -> float | str:
    """A history value as ``torch.load(weights_only=True)`` reads it back (None as NaN)."""
    if isinstance(value, str):
        return value
    return math.nan if value is None else float(value)


def _load_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> tuple[_State, dict[str, torch.Tensor]]:
    payload = _read_checkpoint(path)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    history = [
        {k: (None if k == "val_auc" and math.isnan(v) else (int(v) if k == "epoch" else v)) for k, v in row.items()}
        for row in payload["history"]
    ]
    state = _State(
        epoch=int(payload["epoch"]),
        best_score=(float(payload["best_score"][0]), float(payload["best_score"][1])),
        best_epoch=int(payload["best_epoch"]),
        stale=int(payload["stale"]),
        history=history,
    )
    return state, payload["best_model"]


def save_state_dict(state: dict[str, Any], path: Path) -> None:
    """Write atomically (the run folder's one helper), so a killed run never leaves half a checkpoint."""
    artifacts.write_with(path, lambda fh: torch.save(state, fh))


def load_state_dict(model: nn.Module, path: Path) -> nn.Module:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
