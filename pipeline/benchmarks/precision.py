"""``cohortnet bench WORKFLOW --suite precision``: fp32 and bf16 autocast trained side by side.

Each precision trains the workflow's first fold through the study's training code (``OurRun``)
from the same initial weights, shuffling and augmentation, epochs interleaved; the cohort is
preprocessed once for all of them. Reported: speed, epochs with NaN or Inf steps, the held-out
AUC of each and a paired DeLong test of bf16 against fp32. The fp32 variant runs in full fp32:
TF32 (cuDNN's default for fp32 convolutions on CUDA) is turned off for its epochs and predictions
and restored after each; the TF32 flags each variant ran with are in the result.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import torch

from pipeline.benchmarks.compute import device_name, tf32_flags
from pipeline.benchmarks.runs import OurRun, Predictions, auc, format_auc, warm_median
from pipeline.config import WorkflowConfig
from pipeline.evaluation.compare import delong_paired_test
from pipeline.manifest import Cohort
from pipeline.models import build_model
from pipeline.precision import Precision, resolve_precision, use_bf16
from pipeline.training import EpochStats


def _variants(cfg: WorkflowConfig, device: torch.device, unchecked: bool) -> dict[str, Precision]:
    """fp32, the checked bf16 a study uses and, with ``unchecked``, bf16 on every layer."""
    shape = (cfg.model.in_channels, *cfg.data.spatial_size)
    checked = resolve_precision(build_model(cfg.model).to(device), "bf16", device, shape, cfg.train.batch_size)
    variants = {"fp32": Precision(False), "bf16": checked}
    if unchecked:
        variants["bf16 unchecked"] = Precision(True, reason="every layer in bf16")
    return variants


# TF32 per variant: off for fp32 (full fp32 on CUDA), torch's flags as they are for bf16
_TF32 = {"fp32": False}


def _variant_row(run: OurRun, stats: list[EpochStats], pred: Predictions) -> dict[str, Any]:
    finite = bool(np.isfinite(pred.logits).all())
    return {
        "precision": run.precision.describe(),
        "tf32": run.tf32_flags,
        "warm_epoch_samples_per_s": warm_median(stats),
        "median_epoch_s": statistics.median(e.seconds for e in stats),
        "slowest_epoch_s": max(e.seconds for e in stats),
        "epoch_seconds": [e.seconds for e in stats],
        "epochs_with_nonfinite_steps": sum(e.first_nonfinite_step is not None for e in stats),
        "held_out_scores_finite": finite,
        "held_out_auc": auc(pred.y, pred.logits) if finite else None,
    }


def precision_benchmark(
    cfg: WorkflowConfig, cohort: Cohort, *, device: torch.device, epochs: int, unchecked: bool = False
) -> dict[str, Any]:
    """fp32 and bf16 autocast trained side by side on the workflow's first fold: the same initial
    weights, shuffling and augmentation, epochs interleaved (fp32, bf16, fp32, ...). bf16 is the
    checked one a study uses (layers whose bf16 kernel is wrong kept in fp32); ``unchecked`` adds
    bf16 on every layer, which is what plain autocast does. On a CPU without native bf16 torch
    emulates bf16 (correct, but slower than fp32)."""
    variants = _variants(cfg, device, unchecked)
    runs: dict[str, OurRun] = {}
    for name, p in variants.items():  # one preprocessing, shared by the precisions
        first = next(iter(runs.values()), None)
        shared = first.prepared if first else None
        runs[name] = OurRun(cfg, cohort, device, p, epochs, shared=shared, tf32=_TF32.get(name))
    stats: dict[str, list[EpochStats]] = {name: [] for name in runs}
    for epoch in range(1, epochs + 1):
        for name, run in runs.items():
            stats[name].append(run.epoch(epoch))
    predictions = {name: run.predict() for name, run in runs.items()}
    out: dict[str, Any] = {
        "workflow": cfg.study,
        "device": device_name(device),
        "native_bf16": use_bf16("auto", device),
        "torch_threads": torch.get_num_threads(),
        "epochs": epochs,
        "n_train": len(runs["fp32"].train_items),
        "n_held_out": len(runs["fp32"].val_items),
        "tf32_after": tf32_flags(),
        "variants": {name: _variant_row(run, stats[name], predictions[name]) for name, run in runs.items()},
    }
    v = out["variants"]
    out["bf16_vs_fp32_speed"] = v["bf16"]["warm_epoch_samples_per_s"] / v["fp32"]["warm_epoch_samples_per_s"]
    fp32, bf16 = predictions["fp32"], predictions["bf16"]
    if np.isfinite(fp32.logits).all() and np.isfinite(bf16.logits).all() and 0 < fp32.y.sum() < len(fp32.y):
        out["auc_comparison"] = delong_paired_test(fp32.y, bf16.logits, fp32.logits)  # bf16 - fp32
    return out


def _tf32_text(flags: dict[str, bool] | None) -> str:
    if not flags:
        return ""
    on = [what for what, key in (("convolutions", "cudnn_conv"), ("matmuls", "cuda_matmul")) if flags.get(key)]
    return f"; TF32 on CUDA for fp32 {' and '.join(on)}" if on else "; TF32 off (full fp32 on CUDA)"


def format_precision(result: dict[str, Any]) -> str:
    """The table of :func:`precision_benchmark`'s result."""
    native = "native bf16" if result["native_bf16"] else "no native bf16: bf16 is emulated"
    lines = [
        f"workflow {result['workflow']} on {result['device']} ({native}, {result['torch_threads']} threads): "
        f"{result['epochs']} epochs of fold 0 per precision, interleaved; {result['n_train']} training images, "
        f"{result['n_held_out']} held out",
        "",
        f"{'precision':<16}{'samples/s':>11}{'median s':>10}{'slowest s':>11}{'NaN epochs':>12}{'held-out AUC':>14}",
    ]
    for name, v in result["variants"].items():
        score = format_auc(v["held_out_auc"]) if v["held_out_scores_finite"] else "NaN scores"
        lines.append(
            f"{name:<16}{v['warm_epoch_samples_per_s']:>11.1f}{v['median_epoch_s']:>10.2f}{v['slowest_epoch_s']:>11.2f}"
            f"{v['epochs_with_nonfinite_steps']:>12d}{score:>14}"
        )
    lines += ["", f"bf16 / fp32 warm-epoch speed {result['bf16_vs_fp32_speed']:.2f}x"]
    cmp = result.get("auc_comparison")
    if cmp:
        lines.append(
            f"AUC difference (bf16 - fp32) {cmp['auc_difference']:+.3f} [{cmp['ci_low']:+.3f}, {cmp['ci_high']:+.3f}], "
            f"paired DeLong p = {cmp['p_value']:.2f} ({cmp['n']} held-out images)"
        )
    lines += [f"{name}: {v['precision']}{_tf32_text(v.get('tf32'))}" for name, v in result["variants"].items()]
    return "\n".join(lines)
