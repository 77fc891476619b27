"""The limits a training benchmark compares against: pure compute on one batch already on the
device (the study's own training step, ``run_epoch``, on that batch), FLOPs per sample, the
devices' bf16 peaks, and peak host and GPU memory. Timings are medians of repeated runs."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import WorkflowConfig
from pipeline.models import build_model
from pipeline.precision import Precision, keep_in_fp32
from pipeline.schema import IMAGE, TARGET
from pipeline.training import TrainStep, make_loss, make_optimizer, memory_format_for, run_epoch

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


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(step: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``step`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync(device)
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


class Probe:
    """Pure compute: the study's training step (``run_epoch`` with the workflow's loss and
    optimizer) of a separate copy of the model on one in-memory batch. Run between the epochs,
    each epoch is compared with the limit measured next to it (the machine's speed drifts when
    it is shared)."""

    def __init__(self, cfg: WorkflowConfig, device: torch.device, precision: Precision, steps: int) -> None:
        self.device, self.bf16, self.steps, self.bs = device, precision.bf16, steps, cfg.train.batch_size
        self.memory_format = memory_format_for(cfg.train, device, cfg.model.spatial_dims)
        self.model = build_model(cfg.model).to(device)
        keep_in_fp32(self.model, precision.fp32_layers)
        self.model.to(memory_format=self.memory_format).train()
        x = torch.randn(self.bs, cfg.model.in_channels, *cfg.data.spatial_size, device=device)
        self.x = x.contiguous(memory_format=self.memory_format)
        y = (torch.arange(self.bs, device=device) % 2).float()
        self.batch = [{IMAGE: self.x, TARGET: y}]
        self.optimizer = make_optimizer(self.model, cfg.train)
        self.loss_fn = make_loss(cfg.train, y.cpu().numpy(), device)
        self.train_step = TrainStep(self.model, self.loss_fn, self.optimizer, memory_format=self.memory_format)
        self.step()  # warm-up

    def step(self) -> None:
        run_epoch(self.train_step, self.batch, device=self.device, bf16=self.bf16)

    def samples_per_s(self) -> float:
        return self.bs / median_time(self.step, self.device, self.steps, warmup=1)


def pure_compute(cfg: WorkflowConfig, device: torch.device, precision: Precision, repeats: int) -> dict[str, float]:
    """Samples/s of training steps and of inference on one in-memory batch on ``device``
    (in the memory format and precision that training uses), with a fresh model."""
    probe = Probe(cfg, device, precision, repeats)
    train = probe.samples_per_s()

    def infer_step() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision.bf16),
        ):
            probe.model(probe.x)

    probe.model.eval()
    infer_s = median_time(infer_step, device, repeats)
    return {"train_samples_per_s": train, "infer_samples_per_s": probe.bs / infer_s}


def peak_memory(device: torch.device) -> dict[str, float | None]:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"peak_rss_gib": rss_kb / 2**20, "peak_gpu_gib": gpu}
