"""``cohortnet bench WORKFLOW``: where the time of a study goes, on its own data and model.

(a) pure compute: training steps and inference on one batch already on the device;
(b) end to end through the pipeline from the files: the first (cold) epoch including loading and
    preprocessing, a later (warm) epoch from the cache, and inference over the cohort;
(c) the ratios of (b) to (a);
(d) FLOPs per sample, achieved FLOP/s, peak RSS and peak GPU memory.
Optionally (``--baseline``) the same model and transforms run as a straightforward MONAI tutorial
loop (transforms recomputed every epoch, DataLoader with 2 worker processes, fp32) side by side.
Timings are medians; the machine may be shared, so compare ratios measured in one run.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.augment import make_augmentation, split_augmentation
from pipeline.config import WorkflowConfig
from pipeline.datasets import PreparedCohort, prepare_for_workflow, targets
from pipeline.evaluation.compare import delong_paired_test
from pipeline.inference import predict_logits
from pipeline.manifest import Cohort
from pipeline.models import build_model
from pipeline.precision import Precision, choose_precision, keep_in_fp32, resolve_precision, use_bf16
from pipeline.provenance import image_hashes
from pipeline.schema import IMAGE_ID, PATIENT_ID, TARGET
from pipeline.training import (
    EpochStats,
    epoch_seed,
    make_loader,
    make_loss,
    memory_format_for,
    run_epoch,
    seed_everything,
    warmup_cosine,
)
from pipeline.transforms import augmentation_transforms, deterministic_transforms

log = logging.getLogger(__name__)


# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets, matched on the
# device name, longest key first; --peak-tflops gives any other device's.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
    "V100": 125.0,  # fp16 (V100 has no bf16 tensor cores)
}


def peak_tflops(device_name: str) -> float | None:
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return BF16_PEAK_TFLOPS[key]
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(step: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops_per_sample(model: nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
    """Forward and forward+backward FLOPs for one sample (convolutions and matmuls, 2 per MAC).

    Counted on a batch of two (BatchNorm in training mode refuses one sample at 1x1x1) and halved.
    """
    x = torch.randn(2, *shape)
    model = model.to("cpu").train()
    fwd = FlopCounterMode(display=False)
    with fwd:
        out = model(x)
    both = FlopCounterMode(display=False)
    with both:
        out = model(x)
        out.sum().backward()
    model.zero_grad(set_to_none=True)
    return {"forward": fwd.get_total_flops() / 2.0, "train": both.get_total_flops() / 2.0}


def pure_compute(cfg: WorkflowConfig, device: torch.device, precision: Precision, repeats: int) -> dict[str, float]:
    """Samples/s of training steps and of inference on one in-memory batch on ``device``
    (in the memory format and precision that training uses), with a fresh model."""
    probe = _Probe(cfg, device, precision, repeats)
    bf16 = precision.bf16
    train = probe.samples_per_s()

    def infer_step() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16),
        ):
            probe.model(probe.x)

    probe.model.eval()
    infer_s = _median_time(infer_step, device, repeats)
    return {"train_samples_per_s": train, "infer_samples_per_s": probe.bs / infer_s}


def _fold0(cfg: WorkflowConfig, cohort: Cohort) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training images and held-out images of the workflow's first fold (for the AUC comparison)."""
    from pipeline.study import make_splits

    splits = make_splits(cfg, cohort)
    part = splits[splits["fold"] == splits["fold"].min()]
    roles = cohort.table[PATIENT_ID].map(dict(zip(part[PATIENT_ID], part["role"], strict=False)))
    return cohort.table[roles == "train"], cohort.table[roles != "train"]


class _Probe:
    """Pure compute: training steps of a separate copy of the model on one in-memory batch. Run
    between the epochs, each epoch is compared with the limit measured next to it (the machine's
    speed drifts when it is shared)."""

    def __init__(self, cfg: WorkflowConfig, device: torch.device, precision: Precision, steps: int) -> None:
        self.device, self.bf16, self.steps, self.bs = device, precision.bf16, steps, cfg.train.batch_size
        fmt = memory_format_for(cfg.train, device, cfg.model.spatial_dims)
        self.model = build_model(cfg.model).to(device).to(memory_format=fmt).train()
        keep_in_fp32(self.model, precision.fp32_layers)
        self.x = torch.randn(self.bs, cfg.model.in_channels, *cfg.data.spatial_size, device=device)
        self.x = self.x.contiguous(memory_format=fmt)
        self.y = (torch.arange(self.bs, device=device) % 2).float()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.step()  # warm-up

    def step(self) -> None:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(self.x).reshape(self.bs, -1)[:, 0]
        loss = self.loss_fn(logits.float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def samples_per_s(self) -> float:
        self.model.train()
        return self.bs / _median_time(self.step, self.device, self.steps, warmup=1)


class _Ours:
    """Our pipeline from the files: preprocessing once into the cache, then epochs from the cache."""

    def __init__(
        self,
        cfg: WorkflowConfig,
        cohort: Cohort,
        device: torch.device,
        precision: Precision,
        epochs: int,
        shared: _Ours | None = None,
    ) -> None:
        """``shared``: another run on the same cohort whose hashes and preprocessed cache are reused."""
        train_table, held_out = _fold0(cfg, cohort)
        dims = cfg.model.spatial_dims
        self.cfg, self.device, self.bf16 = cfg, device, precision.bf16
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        self.fmt = memory_format_for(cfg.train, device, dims)
        self.model = build_model(cfg.model).to(device).to(memory_format=self.fmt)
        keep_in_fp32(self.model, precision.fp32_layers)
        self.hash_s: float
        self.preprocess_s: float
        self.prepared: PreparedCohort
        if shared is not None:
            prepared, self.hash_s, self.preprocess_s = shared.prepared, shared.hash_s, shared.preprocess_s
        else:
            start = time.perf_counter()
            hashes = image_hashes(cohort.table[IMAGE_ID].tolist(), cohort.table["path"].tolist())
            self.hash_s = time.perf_counter() - start
            start = time.perf_counter()
            # the workflow's cache policy, as in a study: on a GPU ``auto`` keeps the cohort on the device
            prepared = prepare_for_workflow(cfg, cohort.table, hashes, device=device, progress=False)
            self.preprocess_s = time.perf_counter() - start
        self.prepared = prepared
        self.cache = prepared.cache
        self.n_cohort = len(cohort.table)
        self.train_items = prepared.items(train_table[IMAGE_ID].tolist())
        self.val_items = prepared.items(held_out[IMAGE_ID].tolist())
        self.per_sample, self.augment = split_augmentation(make_augmentation(cfg.data, dims))
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.loader = make_loader(
            self.train_items, cfg.train, self.per_sample, self.generator, pin_memory=device.type == "cuda"
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.scheduler = warmup_cosine(self.optimizer, 0, max(1, len(self.loader)) * epochs)
        self.loss_fn = make_loss(cfg.train, np.array([it[TARGET] for it in self.train_items]), device)

    def reseed(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s shuffling and augmentation as a study would (comparable runs)."""
        es = epoch_seed(self.cfg.train.seed, epoch)
        torch.manual_seed(es)
        self.generator.manual_seed(es)
        for aug in (self.per_sample, self.augment):
            if aug is not None:
                aug.set_random_state(seed=es)

    def epoch(self) -> EpochStats:
        return run_epoch(
            self.model,
            self.loader,
            self.optimizer,
            self.scheduler,
            self.loss_fn,
            device=self.device,
            bf16=self.bf16,
            memory_format=self.fmt,
            augment=self.augment,
        )

    def predict(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(labels, logits, seconds) over the held-out images."""
        start = time.perf_counter()
        logits = predict_logits(
            self.model, self.val_items, device=self.device, bf16=self.bf16, batch_size=self.cfg.train.batch_size * 2
        )
        _sync(self.device)
        return targets(self.val_items), np.asarray(logits, dtype=float), time.perf_counter() - start


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """MONAI datalist: the image path (read by the transform chain every time), id and target."""
    return [
        {"image": p, IMAGE_ID: i, TARGET: float(t)}
        for p, i, t in zip(table["path"].tolist(), table[IMAGE_ID].tolist(), table[TARGET].tolist(), strict=True)
    ]


class _Tutorial:
    """The straightforward MONAI tutorial loop on the same data, model and transforms: the whole
    chain (MONAI's per-sample augmentation included) recomputed every epoch, DataLoader(num_workers=2),
    fp32, no cache."""

    def __init__(self, cfg: WorkflowConfig, cohort: Cohort, device: torch.device, epochs: int) -> None:
        train_table, self.held_out = _fold0(cfg, cohort)
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
        return run_epoch(
            self.model, self.loader, self.optimizer, self.scheduler, self.loss_fn, device=self.device, bf16=False
        )

    def predict(self) -> tuple[np.ndarray, np.ndarray, float]:
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
        return np.concatenate(ys), np.concatenate(logits).astype(float), time.perf_counter() - start


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def _per_sec(st: EpochStats) -> float:
    return st.samples / st.seconds


def interleaved_runs(
    cfg: WorkflowConfig,
    cohort: Cohort,
    device: torch.device,
    precision: Precision,
    epochs: int,
    baseline: bool,
    probe_steps: int,
) -> dict[str, Any]:
    """Our epochs, a pure-compute probe after each and, with ``baseline``, a tutorial-loop epoch
    after that: every ratio is a median over epochs of numbers measured next to each other."""
    probe = _Probe(cfg, device, precision, probe_steps)
    ours = _Ours(cfg, cohort, device, precision, epochs)
    tutorial = _Tutorial(cfg, cohort, device, epochs) if baseline else None
    our_stats, probes, tut_stats = [], [], []
    for _ in range(epochs):
        our_stats.append(ours.epoch())
        probes.append(probe.samples_per_s())
        if tutorial is not None:
            tut_stats.append(tutorial.epoch())
    warm = list(range(1, epochs)) or [0]
    y, logits, infer_s = ours.predict()
    cold_s = our_stats[0].seconds + ours.preprocess_s * len(ours.train_items) / ours.n_cohort
    e2e = {
        "n_train": len(ours.train_items),
        "n_held_out": len(ours.val_items),
        "n_cohort": ours.n_cohort,
        "cache": ours.cache,
        "hash_s": ours.hash_s,
        "preprocess_s": ours.preprocess_s,
        "preprocess_images_per_s": ours.n_cohort / ours.preprocess_s,
        "cold_epoch_samples_per_s": our_stats[0].samples / cold_s,
        "warm_epoch_samples_per_s": statistics.median(_per_sec(our_stats[k]) for k in warm),
        "warm_epoch_data_wait_fraction": statistics.median(
            our_stats[k].data_seconds / our_stats[k].seconds for k in warm
        ),
        "inference_samples_per_s": len(ours.val_items) / infer_s,
        "held_out_auc": _auc(y, logits),
        "epochs": epochs,
        "warm_epoch_vs_compute": statistics.median(_per_sec(our_stats[k]) / probes[k] for k in warm),
        "compute_probes_samples_per_s": probes,
    }
    out: dict[str, Any] = {"end_to_end": e2e}
    if tutorial is not None:
        y_tut, theirs, tut_infer_s = tutorial.predict()
        out["tutorial_baseline"] = {
            "cold_epoch_samples_per_s": _per_sec(tut_stats[0]),
            "warm_epoch_samples_per_s": statistics.median(_per_sec(tut_stats[k]) for k in warm),
            "inference_samples_per_s": len(y_tut) / tut_infer_s,
            "held_out_auc": _auc(y_tut, theirs),
            "epochs": epochs,
        }
        out["warm_epoch_vs_tutorial"] = statistics.median(_per_sec(our_stats[k]) / _per_sec(tut_stats[k]) for k in warm)
        if np.array_equal(y, y_tut) and 0 < y.sum() < len(y):
            # the same held-out images in the same order: a paired DeLong test of the two AUCs
            out["auc_comparison"] = delong_paired_test(y, logits, theirs)
    return out


def peak_memory(device: torch.device) -> dict[str, float | None]:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"peak_rss_gib": rss_kb / 2**20, "peak_gpu_gib": gpu}


def bench_workflow(
    cfg: WorkflowConfig,
    cohort: Cohort,
    *,
    device: torch.device,
    epochs: int = 3,
    repeats: int = 5,
    baseline: bool = False,
    peak: float | None = None,
) -> dict[str, Any]:
    """Run (a)-(d) and, with ``baseline``, the tutorial loop; returns a JSON-ready dict."""
    precision = choose_precision(cfg, build_model(cfg.model).to(device), device)
    bf16 = precision.bf16
    shape = (cfg.model.in_channels, *cfg.data.spatial_size)
    flops = flops_per_sample(build_model(cfg.model), shape)
    seed_everything(cfg.train.seed, False)
    before = pure_compute(cfg, device, precision, repeats)
    runs = interleaved_runs(cfg, cohort, device, precision, epochs, baseline, probe_steps=max(2, repeats // 3))
    e2e = runs["end_to_end"]
    after = pure_compute(cfg, device, precision, repeats)
    # The limit next to the epochs: the median of the probes run between them (the warm-epoch ratio
    # is the median over epochs of each epoch against the probe right after it). The best isolated
    # measurement (before or after; outside load only slows one down) is kept beside it.
    best = max(before["train_samples_per_s"], after["train_samples_per_s"])
    compute = {
        "train_samples_per_s": statistics.median(e2e["compute_probes_samples_per_s"]),
        "train_samples_per_s_best_isolated": best,
        "infer_samples_per_s": max(before["infer_samples_per_s"], after["infer_samples_per_s"]),
    }
    result: dict[str, Any] = {
        "workflow": cfg.study,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": cfg.model.arch,
        "input": list(shape),
        "batch_size": cfg.train.batch_size,
        "bf16": bf16,
        "precision": precision.describe(),
        "flops_forward_per_sample": flops["forward"],
        "flops_train_per_sample": flops["train"],
        "compute": compute,
        "end_to_end": e2e,
        "ratios": {
            "warm_epoch_vs_compute": e2e.pop("warm_epoch_vs_compute"),
            "warm_epoch_vs_best_isolated_compute": e2e["warm_epoch_samples_per_s"] / best,
            "cold_epoch_vs_compute": e2e["cold_epoch_samples_per_s"] / compute["train_samples_per_s"],
            "inference_vs_compute": e2e["inference_samples_per_s"] / compute["infer_samples_per_s"],
        },
        "achieved_tflops": {
            "compute_train": flops["train"] * compute["train_samples_per_s"] / 1e12,
            "warm_epoch": flops["train"] * e2e["warm_epoch_samples_per_s"] / 1e12,
        },
    }
    if baseline:
        tut = runs["tutorial_baseline"]
        result["tutorial_baseline"] = tut
        result["ratios"]["warm_epoch_vs_tutorial"] = runs["warm_epoch_vs_tutorial"]
        result["ratios"]["cold_epoch_vs_tutorial"] = e2e["cold_epoch_samples_per_s"] / tut["cold_epoch_samples_per_s"]
        if "auc_comparison" in runs:
            result["auc_comparison"] = runs["auc_comparison"]
    name = result["device"]
    peak = peak or (peak_tflops(name) if device.type == "cuda" else None)
    if peak:
        # model FLOP utilisation: the model's own training FLOPs per second against the peak
        result["peak_tflops"] = peak
        result["mfu"] = {k: v / peak for k, v in result["achieved_tflops"].items()}
    result["memory"] = peak_memory(device)
    return result


def format_bench(result: dict[str, Any]) -> str:
    c, e, r = result["compute"], result["end_to_end"], result["ratios"]
    lines = [
        f"workflow {result['workflow']} on {result['device']} ({result['torch_threads']} threads), "
        f"{result['model']} input {'x'.join(map(str, result['input']))}, batch {result['batch_size']}, "
        f"{result.get('precision', 'bf16' if result['bf16'] else 'fp32')}",
        f"FLOPs per sample: forward {result['flops_forward_per_sample'] / 1e9:.2f} G, "
        f"train step {result['flops_train_per_sample'] / 1e9:.2f} G",
        "",
        f"{'measure':<44}{'samples/s':>12}{'ratio':>9}",
        f"{'(a) pure compute, training (between epochs)':<44}{c['train_samples_per_s']:>12.1f}{1.0:>9.2f}",
        f"{'(b) end to end, cold epoch (+ preprocessing)':<44}{e['cold_epoch_samples_per_s']:>12.1f}"
        f"{r['cold_epoch_vs_compute']:>9.2f}",
        f"{'(b) end to end, warm epoch':<44}{e['warm_epoch_samples_per_s']:>12.1f}{r['warm_epoch_vs_compute']:>9.2f}",
        f"{'(a) pure compute, inference':<44}{c['infer_samples_per_s']:>12.1f}{1.0:>9.2f}",
        f"{'(b) inference over held-out images':<44}{e['inference_samples_per_s']:>12.1f}"
        f"{r['inference_vs_compute']:>9.2f}",
        f"{'preprocessing (load..normalise), images/s':<44}{e['preprocess_images_per_s']:>12.1f}"
        f"   ({e['cache']} cache)",
        "",
        "warm-epoch ratio: median over epochs of each epoch against the compute probe run right after it; "
        f"against the best isolated compute measurement ({c['train_samples_per_s_best_isolated']:.1f} samples/s) "
        f"{r['warm_epoch_vs_best_isolated_compute']:.2f}",
        f"warm epoch waits for data {100 * e['warm_epoch_data_wait_fraction']:.1f}% of the time; "
        f"achieved {result['achieved_tflops']['warm_epoch'] * 1e3:.1f} GFLOP/s in a warm epoch "
        f"({result['achieved_tflops']['compute_train'] * 1e3:.1f} pure compute)"
        + (
            f"; model FLOP utilisation {100 * result['mfu']['warm_epoch']:.1f}% "
            f"({100 * result['mfu']['compute_train']:.1f}% pure compute) of a {result['peak_tflops']:.0f} TFLOP/s "
            f"{'bf16 ' if result['bf16'] else ''}peak"
            if "mfu" in result
            else ""
        ),
        f"held-out AUC after {e['epochs']} epochs: {e['held_out_auc']}",
        f"peak RSS {result['memory']['peak_rss_gib']:.2f} GiB"
        + (f", peak GPU memory {result['memory']['peak_gpu_gib']:.2f} GiB" if result["memory"]["peak_gpu_gib"] else ""),
    ]
    tut = result.get("tutorial_baseline")
    if tut:
        lines += [
            "",
            "side by side with the MONAI tutorial loop (transforms every epoch, 2 workers, fp32), epochs interleaved:",
            f"{'':<28}{'ours':>10}{'tutorial':>10}{'ratio':>8}",
            f"{'cold epoch samples/s':<28}{e['cold_epoch_samples_per_s']:>10.1f}"
            f"{tut['cold_epoch_samples_per_s']:>10.1f}{r['cold_epoch_vs_tutorial']:>8.2f}",
            f"{'warm epoch samples/s':<28}{e['warm_epoch_samples_per_s']:>10.1f}"
            f"{tut['warm_epoch_samples_per_s']:>10.1f}{r['warm_epoch_vs_tutorial']:>8.2f}",
            f"{'held-out AUC':<28}{_f(e['held_out_auc']):>10}{_f(tut['held_out_auc']):>10}",
        ]
        cmp = result.get("auc_comparison")
        if cmp:
            lines.append(
                f"AUC difference (ours - tutorial) {cmp['auc_difference']:+.3f} "
                f"[{cmp['ci_low']:+.3f}, {cmp['ci_high']:+.3f}], paired DeLong p = {cmp['p_value']:.2f} "
                f"({cmp['n']} held-out images)"
            )
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def with_device(cfg: WorkflowConfig, device: str) -> WorkflowConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- precision


def precision_benchmark(
    cfg: WorkflowConfig, cohort: Cohort, *, device: torch.device, epochs: int, unchecked: bool = False
) -> dict[str, Any]:
    """fp32 and bf16 autocast trained side by side on the workflow's first fold: the same initial
    weights, shuffling and augmentation, epochs interleaved (fp32, bf16, fp32, ...). bf16 is the
    checked one a study uses (layers whose bf16 kernel is wrong kept in fp32); ``unchecked`` adds
    bf16 on every layer, which is what plain autocast does. On a CPU without native bf16 torch
    emulates bf16 (correct, but slower than fp32)."""
    shape = (cfg.model.in_channels, *cfg.data.spatial_size)
    checked = resolve_precision(build_model(cfg.model).to(device), "bf16", device, shape, cfg.train.batch_size)
    variants = {"fp32": Precision(False), "bf16": checked}
    if unchecked:
        variants["bf16 unchecked"] = Precision(True, reason="every layer in bf16")
    runs: dict[str, _Ours] = {}
    for name, p in variants.items():  # one preprocessing, shared by the precisions
        runs[name] = _Ours(cfg, cohort, device, p, epochs, shared=next(iter(runs.values()), None))
    stats: dict[str, list[EpochStats]] = {name: [] for name in runs}
    for epoch in range(1, epochs + 1):
        for name, ours in runs.items():
            ours.reseed(epoch)
            stats[name].append(ours.epoch())
    out: dict[str, Any] = {
        "workflow": cfg.study,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "native_bf16": use_bf16("auto", device),
        "torch_threads": torch.get_num_threads(),
        "epochs": epochs,
        "n_train": len(runs["fp32"].train_items),
        "n_held_out": len(runs["fp32"].val_items),
        "variants": {},
    }
    logits = {}
    for name, ours in runs.items():
        y, lg, _ = ours.predict()
        finite = bool(np.isfinite(lg).all())
        st = stats[name]
        warm = st[1:] or st
        out["variants"][name] = {
            "precision": variants[name].describe(),
            "warm_epoch_samples_per_s": statistics.median(_per_sec(e) for e in warm),
            "median_epoch_s": statistics.median(e.seconds for e in st),
            "slowest_epoch_s": max(e.seconds for e in st),
            "epoch_seconds": [e.seconds for e in st],
            "epochs_with_nonfinite_steps": sum(e.first_nonfinite_step is not None for e in st),
            "held_out_scores_finite": finite,
            "held_out_auc": _auc(y, lg) if finite else None,
        }
        logits[name] = (y, lg)
    v = out["variants"]
    out["bf16_vs_fp32_speed"] = v["bf16"]["warm_epoch_samples_per_s"] / v["fp32"]["warm_epoch_samples_per_s"]
    (y, a), (_, b) = logits["fp32"], logits["bf16"]
    if np.isfinite(a).all() and np.isfinite(b).all() and 0 < y.sum() < len(y):
        out["auc_comparison"] = delong_paired_test(y, b, a)  # bf16 - fp32
    return out


def format_precision(result: dict[str, Any]) -> str:
    native = "native bf16" if result["native_bf16"] else "no native bf16: bf16 is emulated"
    lines = [
        f"workflow {result['workflow']} on {result['device']} ({native}, {result['torch_threads']} threads): "
        f"{result['epochs']} epochs of fold 0 per precision, interleaved; {result['n_train']} training images, "
        f"{result['n_held_out']} held out",
        "",
        f"{'precision':<16}{'samples/s':>11}{'median s':>10}{'slowest s':>11}{'NaN epochs':>12}{'held-out AUC':>14}",
    ]
    for name, v in result["variants"].items():
        auc = _f(v["held_out_auc"]) if v["held_out_scores_finite"] else "NaN scores"
        lines.append(
            f"{name:<16}{v['warm_epoch_samples_per_s']:>11.1f}{v['median_epoch_s']:>10.2f}{v['slowest_epoch_s']:>11.2f}"
            f"{v['epochs_with_nonfinite_steps']:>12d}{auc:>14}"
        )
    lines += ["", f"bf16 / fp32 warm-epoch speed {result['bf16_vs_fp32_speed']:.2f}x"]
    cmp = result.get("auc_comparison")
    if cmp:
        lines.append(
            f"AUC difference (bf16 - fp32) {cmp['auc_difference']:+.3f} [{cmp['ci_low']:+.3f}, {cmp['ci_high']:+.3f}], "
            f"paired DeLong p = {cmp['p_value']:.2f} ({cmp['n']} held-out images)"
        )
    for name, v in result["variants"].items():
        lines.append(f"{name}: {v['precision']}")
    return "\n".join(lines)
