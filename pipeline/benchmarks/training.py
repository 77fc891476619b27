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
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.benchmarks.compute import (
    Probe,
    device_name,
    flops_per_sample,
    meta_model,
    peak_memory,
    peak_tflops,
    pure_compute,
    start_peak_memory,
    tf32_flags,
)
from pipeline.benchmarks.runs import OurRun, Predictions, TutorialRun, auc, format_auc, per_sec
from pipeline.config import WorkflowConfig
from pipeline.evaluation.compare import delong_paired_test
from pipeline.manifest import Cohort
from pipeline.models import build_model
from pipeline.precision import Precision, choose_precision
from pipeline.training import EpochStats, seed_everything


@dataclass(frozen=True)
class TrainingBench:
    """How the training benchmark runs: epochs end to end (the first one cold), timed compute
    steps, the tutorial loop side by side, and the device's peak TFLOP/s (looked up when None)."""

    epochs: int = 3
    repeats: int = 5
    baseline: bool = False
    peak_tflops: float | None = None

    @property
    def probe_steps(self) -> int:
        """Timed steps of each compute probe between the epochs."""
        return max(2, self.repeats // 3)


def with_device(cfg: WorkflowConfig, device: str) -> WorkflowConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))  # type: ignore[arg-type]


def _warm(stats: list[EpochStats]) -> list[int]:
    """Indices of the warm epochs (all but the first; the first when there is one)."""
    return list(range(1, len(stats))) or [0]


def _end_to_end(ours: OurRun, stats: list[EpochStats], probes: list[float], infer: Inference) -> dict[str, Any]:
    warm, prep = _warm(stats), ours.prepared
    cold_s = stats[0].seconds + prep.preprocess_s * len(ours.train_items) / ours.n_cohort
    n_val = len(ours.val_items)
    return {
        "n_train": len(ours.train_items),
        "n_held_out": n_val,
        "n_cohort": ours.n_cohort,
        "cache": prep.cohort.cache,
        "hash_s": prep.hash_s,
        "preprocess_s": prep.preprocess_s,
        "preprocess_images_per_s": ours.n_cohort / prep.preprocess_s,
        "cold_epoch_samples_per_s": stats[0].samples / cold_s,
        "cold_epoch_remainder_batch_warmed": ours.remainder_batch,
        "warm_epoch_samples_per_s": statistics.median(per_sec(stats[k]) for k in warm),
        # host time in the loader: on CUDA it overlaps the GPU work already queued (not a stall)
        "warm_epoch_data_wait_fraction": statistics.median(stats[k].data_seconds / stats[k].seconds for k in warm),
        "inference_samples_per_s": statistics.median(n_val / p.seconds for p in infer.passes),
        "inference_passes": len(infer.passes),
        "held_out_auc": auc(infer.passes[-1].y, infer.passes[-1].logits),
        "epochs": len(stats),
        "warm_epoch_vs_compute": statistics.median(per_sec(stats[k]) / probes[k] for k in warm),
        "inference_vs_compute": statistics.median(
            n_val / p.seconds / probe for p, probe in zip(infer.passes, infer.probes, strict=True)
        ),
        "compute_probes_samples_per_s": probes,
        "compute_infer_probes_samples_per_s": infer.probes,
    }


def _versus_tutorial(
    tutorial: TutorialRun, tut_stats: list[EpochStats], our_stats: list[EpochStats], ours: Predictions
) -> dict[str, Any]:
    warm = _warm(tut_stats)
    theirs = tutorial.predict()
    out: dict[str, Any] = {
        "tutorial_baseline": {
            "cold_epoch_samples_per_s": per_sec(tut_stats[0]),
            "warm_epoch_samples_per_s": statistics.median(per_sec(tut_stats[k]) for k in warm),
            "inference_samples_per_s": len(theirs.y) / theirs.seconds,
            "held_out_auc": auc(theirs.y, theirs.logits),
            "epochs": len(tut_stats),
        },
        "warm_epoch_vs_tutorial": statistics.median(per_sec(our_stats[k]) / per_sec(tut_stats[k]) for k in warm),
    }
    y = ours.y
    if np.array_equal(y, theirs.y) and 0 < y.sum() < len(y):
        # the same held-out images in the same order: a paired DeLong test of the two AUCs
        out["auc_comparison"] = delong_paired_test(y, ours.logits, theirs.logits)
    return out


INFERENCE_PASSES = 3  # timed held-out predictions, each followed by the inference probe


@dataclass
class Inference:
    """Timed held-out predictions and the inference probe (samples/s) measured right after each."""

    passes: list[Predictions] = dataclasses.field(default_factory=list)
    probes: list[float] = dataclasses.field(default_factory=list)


def _inference(ours: OurRun, probe: Probe, passes: int = INFERENCE_PASSES) -> Inference:
    """One untimed prediction first (cuDNN autotunes the held-out batch shapes there), then
    ``passes`` timed ones, each followed by the inference probe at the same batch size."""
    ours.predict()
    out = Inference()
    for _ in range(passes):
        out.passes.append(ours.predict())
        out.probes.append(probe.infer_samples_per_s())
    return out


def _epoch_gpu_peak(ours: OurRun, epoch: int) -> tuple[EpochStats, float | None]:
    """Epoch ``epoch`` of ``ours`` and the GPU memory peak (GiB) during it alone."""
    cuda = ours.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(ours.device)
    stats = ours.epoch(epoch)
    return stats, torch.cuda.max_memory_allocated(ours.device) / 2**30 if cuda else None


def interleaved_runs(
    cfg: WorkflowConfig, cohort: Cohort, device: torch.device, precision: Precision, options: TrainingBench
) -> dict[str, Any]:
    """Our epochs, a pure-compute probe after each and, with ``baseline``, a tutorial-loop epoch
    after that: every ratio is a median over epochs of numbers measured next to each other. Peak
    memory is that of our preprocessing and epochs (GPU: the highest peak of our epochs alone)."""
    probe = Probe(cfg, device, precision, options.probe_steps)
    host_reset = start_peak_memory(device)
    ours = OurRun(cfg, cohort, device, precision, options.epochs)
    probe.warm(ours.remainder_batch)  # the last batch's shape, autotuned outside the timed cold epoch
    tutorial = TutorialRun(cfg, cohort, device, options.epochs) if options.baseline else None
    our_stats, probes, tut_stats, gpu_peaks = [], [], [], []
    for epoch in range(1, options.epochs + 1):
        stats, gpu_peak = _epoch_gpu_peak(ours, epoch)
        our_stats.append(stats)
        gpu_peaks.append(gpu_peak)
        probes.append(probe.samples_per_s())
        if tutorial is not None:
            tut_stats.append(tutorial.epoch())
    memory = peak_memory(device, host_reset)
    if device.type == "cuda":
        memory |= {
            "peak_gpu_gib": max(p for p in gpu_peaks if p is not None),
            "probe_resident_gib": probe.resident_gib(),
        }
    infer = _inference(ours, probe)
    out: dict[str, Any] = {"end_to_end": _end_to_end(ours, our_stats, probes, infer), "memory": memory}
    if tutorial is not None:
        out |= _versus_tutorial(tutorial, tut_stats, our_stats, infer.passes[-1])
    return out


def _ratios(e2e: dict[str, Any], compute: dict[str, float]) -> dict[str, float]:
    """End to end against pure compute (moves ``warm_epoch_vs_compute`` out of ``e2e``)."""
    return {
        "warm_epoch_vs_compute": e2e.pop("warm_epoch_vs_compute"),
        "warm_epoch_vs_best_isolated_compute": (
            e2e["warm_epoch_samples_per_s"] / compute["train_samples_per_s_best_isolated"]
        ),
        "cold_epoch_vs_compute": e2e["cold_epoch_samples_per_s"] / compute["train_samples_per_s"],
        "inference_vs_compute": e2e.pop("inference_vs_compute"),
    }


def _add_tutorial(result: dict[str, Any], runs: dict[str, Any]) -> None:
    tut = runs["tutorial_baseline"]
    result["tutorial_baseline"] = tut
    result["ratios"]["warm_epoch_vs_tutorial"] = runs["warm_epoch_vs_tutorial"]
    cold = result["end_to_end"]["cold_epoch_samples_per_s"]
    result["ratios"]["cold_epoch_vs_tutorial"] = cold / tut["cold_epoch_samples_per_s"]
    if "auc_comparison" in runs:
        result["auc_comparison"] = runs["auc_comparison"]


def _measure(
    cfg: WorkflowConfig, cohort: Cohort, device: torch.device, precision: Precision, options: TrainingBench
) -> tuple[dict[str, float], dict[str, Any]]:
    """(compute, runs): pure compute before and after the interleaved runs, and those runs.

    The limit next to the epochs is the median of the probes run between them (the warm-epoch
    ratio is the median over epochs of each epoch against the probe right after it). The best
    isolated measurement (before or after; outside load only slows one down) is kept beside it.
    """
    seed_everything(cfg.train.seed, False)
    before = pure_compute(cfg, device, precision, options.repeats)
    runs = interleaved_runs(cfg, cohort, device, precision, options)
    after = pure_compute(cfg, device, precision, options.repeats)
    compute = {
        "train_samples_per_s": statistics.median(runs["end_to_end"]["compute_probes_samples_per_s"]),
        "train_samples_per_s_best_isolated": max(before["train_samples_per_s"], after["train_samples_per_s"]),
        "infer_samples_per_s": statistics.median(runs["end_to_end"]["compute_infer_probes_samples_per_s"]),
        "infer_samples_per_s_best_isolated": max(before["infer_samples_per_s"], after["infer_samples_per_s"]),
    }
    return compute, runs


def _peak(options: TrainingBench, device: torch.device, bf16: bool) -> dict[str, Any] | None:
    """The peak MFU is measured against: ``--peak-tflops``, else the device's bf16 peak (bf16
    training) or TF32 peak (fp32 training with TF32 convolutions); None (no MFU) otherwise."""
    if options.peak_tflops:
        return {"peak_tflops": options.peak_tflops, "peak_precision": "given", "peak_source": "--peak-tflops"}
    if device.type != "cuda":
        return None
    name = device_name(device)
    kind = "bf16" if bf16 else "tf32" if torch.backends.cudnn.allow_tf32 else None
    peak = peak_tflops(name, kind) if kind else None
    return {"peak_tflops": peak, "peak_precision": kind, "peak_source": f"data sheet of {name}"} if peak else None


def bench_workflow(
    cfg: WorkflowConfig, cohort: Cohort, *, device: torch.device, options: TrainingBench = TrainingBench()
) -> dict[str, Any]:
    """Run (a)-(d) and, with ``options.baseline``, the tutorial loop; returns a JSON-ready dict."""
    precision = choose_precision(cfg, build_model(cfg.model).to(device), device)
    shape = (cfg.model.in_channels, *cfg.data.spatial_size)
    flops = flops_per_sample(meta_model(cfg.model), shape)  # on the meta device: no memory, no arithmetic
    compute, runs = _measure(cfg, cohort, device, precision, options)
    e2e = runs["end_to_end"]
    result: dict[str, Any] = {
        "workflow": cfg.study,
        "device": device_name(device),
        "device_type": device.type,
        "torch_threads": torch.get_num_threads(),
        "model": cfg.model.arch,
        "input": list(shape),
        "batch_size": cfg.train.batch_size,
        "bf16": precision.bf16,
        "precision": precision.describe(),
        "tf32": tf32_flags(),
        "flops_forward_per_sample": flops["forward"],
        "flops_train_per_sample": flops["train"],
        "compute": compute,
        "end_to_end": e2e,
        "ratios": _ratios(e2e, compute),
        "achieved_tflops": {
            "compute_train": flops["train"] * compute["train_samples_per_s"] / 1e12,
            "warm_epoch": flops["train"] * e2e["warm_epoch_samples_per_s"] / 1e12,
        },
    }
    if options.baseline:
        _add_tutorial(result, runs)
    peak = _peak(options, device, precision.bf16)
    if peak:
        # model FLOP utilisation: the model's own training FLOPs per second against the peak
        result |= peak
        result["mfu"] = {k: v / peak["peak_tflops"] for k, v in result["achieved_tflops"].items()}
    result["memory"] = runs["memory"]
    return result


# --------------------------------------------------------------------------- the printed table


def _fp32_label(result: dict[str, Any]) -> str:
    """fp32 as it ran: on CUDA torch lets cuDNN run fp32 convolutions in TF32 unless told not to."""
    tf32 = result.get("tf32", {})
    if result.get("device_type") == "cuda" and tf32.get("cudnn_conv"):
        return "fp32, convolutions in TF32 (torch's default)"
    return "fp32"


def _header_lines(result: dict[str, Any]) -> list[str]:
    precision = result.get("precision", "bf16" if result["bf16"] else "fp32")
    if not result["bf16"] and _fp32_label(result) != "fp32":
        precision += ", convolutions in TF32 (torch's default)"
    return [
        f"workflow {result['workflow']} on {result['device']} ({result['torch_threads']} threads), "
        f"{result['model']} input {'x'.join(map(str, result['input']))}, batch {result['batch_size']}, "
        f"{precision}",
        f"FLOPs per sample: forward {result['flops_forward_per_sample'] / 1e9:.2f} G, "
        f"train step {result['flops_train_per_sample'] / 1e9:.2f} G",
        "",
    ]


def _table_lines(result: dict[str, Any]) -> list[str]:
    c, e, r = result["compute"], result["end_to_end"], result["ratios"]
    rows = [
        ("(a) pure compute, training (between epochs)", c["train_samples_per_s"], 1.0),
        ("(b) end to end, cold epoch (+ preprocessing)", e["cold_epoch_samples_per_s"], r["cold_epoch_vs_compute"]),
        ("(b) end to end, warm epoch", e["warm_epoch_samples_per_s"], r["warm_epoch_vs_compute"]),
        ("(a) pure compute, inference", c["infer_samples_per_s"], 1.0),
        ("(b) inference over held-out images", e["inference_samples_per_s"], r["inference_vs_compute"]),
    ]
    return [
        f"{'measure':<44}{'samples/s':>12}{'ratio':>9}",
        *(f"{label:<44}{value:>12.1f}{ratio:>9.2f}" for label, value, ratio in rows),
        f"{'preprocessing (load..normalise), images/s':<44}{e['preprocess_images_per_s']:>12.1f}"
        f"   ({e['cache']} cache)",
        "",
    ]


def _mfu_text(result: dict[str, Any]) -> str:
    if "mfu" not in result:
        return ""
    kind = result.get("peak_precision", "")
    return (
        f"; model FLOP utilisation {100 * result['mfu']['warm_epoch']:.1f}% "
        f"({100 * result['mfu']['compute_train']:.1f}% pure compute) of a {result['peak_tflops']:.0f} TFLOP/s "
        f"{kind + ' ' if kind in ('bf16', 'tf32') else ''}peak ({result.get('peak_source', 'given')})"
    )


def _memory_text(memory: dict[str, Any]) -> str:
    scope = "preprocessing and epochs" if memory.get("peak_rss_scope") == "phase" else "whole process"
    text = f"peak RSS {memory['peak_rss_gib']:.2f} GiB ({scope})"
    if memory["peak_gpu_gib"] is not None:
        text += f", peak GPU memory in our epochs {memory['peak_gpu_gib']:.2f} GiB"
        if "probe_resident_gib" in memory:
            text += f" (of which {memory['probe_resident_gib']:.2f} GiB the compute probe's model, state and batches)"
    return text


def _note_lines(result: dict[str, Any]) -> list[str]:
    c, e, r = result["compute"], result["end_to_end"], result["ratios"]
    flops = result["achieved_tflops"]
    wait = 100 * e["warm_epoch_data_wait_fraction"]
    if result.get("device_type") == "cuda":
        # the loop waits on the loader on the host while the GPU works through what is queued
        data = f"warm epoch: the loader's host time is {wait:.1f}% of it (overlapping queued GPU work: not a stall)"
    else:
        data = f"warm epoch waits for data {wait:.1f}% of the time"
    return [
        "warm-epoch ratio: median over epochs of each epoch against the compute probe run right after it; "
        f"against the best isolated compute measurement ({c['train_samples_per_s_best_isolated']:.1f} samples/s) "
        f"{r['warm_epoch_vs_best_isolated_compute']:.2f}",
        f"inference ratio: median of {e['inference_passes']} held-out passes (after one untimed) each against "
        f"the inference probe at the same batch size run right after it",
        f"{data}; achieved {flops['warm_epoch'] * 1e3:.1f} GFLOP/s in a warm epoch "
        f"({flops['compute_train'] * 1e3:.1f} pure compute)" + _mfu_text(result),
        f"held-out AUC after {e['epochs']} epochs: {e['held_out_auc']}",
        _memory_text(result["memory"]),
    ]


def _tutorial_lines(result: dict[str, Any]) -> list[str]:
    e, r, tut = result["end_to_end"], result["ratios"], result["tutorial_baseline"]
    lines = [
        "",
        f"side by side with the MONAI tutorial loop (transforms every epoch, 2 workers, {_fp32_label(result)}), "
        "epochs interleaved:",
        f"{'':<28}{'ours':>10}{'tutorial':>10}{'ratio':>8}",
        f"{'cold epoch samples/s':<28}{e['cold_epoch_samples_per_s']:>10.1f}"
        f"{tut['cold_epoch_samples_per_s']:>10.1f}{r['cold_epoch_vs_tutorial']:>8.2f}",
        f"{'warm epoch samples/s':<28}{e['warm_epoch_samples_per_s']:>10.1f}"
        f"{tut['warm_epoch_samples_per_s']:>10.1f}{r['warm_epoch_vs_tutorial']:>8.2f}",
        f"{'held-out AUC':<28}{format_auc(e['held_out_auc']):>10}{format_auc(tut['held_out_auc']):>10}",
    ]
    cmp = result.get("auc_comparison")
    if cmp:
        lines.append(
            f"AUC difference (ours - tutorial) {cmp['auc_difference']:+.3f} "
            f"[{cmp['ci_low']:+.3f}, {cmp['ci_high']:+.3f}], paired DeLong p = {cmp['p_value']:.2f} "
            f"({cmp['n']} held-out images)"
        )
    return lines


def format_bench(result: dict[str, Any]) -> str:
    """The table of :func:`bench_workflow`'s result, and the tutorial loop's beside it when run."""
    lines = _header_lines(result) + _table_lines(result) + _note_lines(result)
    if result.get("tutorial_baseline"):
        lines += _tutorial_lines(result)
    return "\n".join(lines)
