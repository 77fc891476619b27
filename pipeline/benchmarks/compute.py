"""The limits a training benchmark compares against: pure compute on one batch already on the
device (the study's own training step, ``run_epoch``, on that batch), FLOPs per sample (counted on
the meta device: no memory, no arithmetic), the devices' bf16 and TF32 peaks, and the peak host
and GPU memory of a measured phase. Timings are medians of repeated runs."""

from __future__ import annotations

import dataclasses
import gc
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import ModelConfig, WorkflowConfig
from pipeline.models import build_model
from pipeline.precision import Precision, keep_in_fp32
from pipeline.schema import IMAGE, TARGET
from pipeline.training import TrainStep, make_loss, make_optimizer, memory_format_for, run_epoch

# Dense (no sparsity) tensor-core peaks in TFLOP/s from NVIDIA's data sheets (half their "with
# sparsity" figures), matched on the device name, longest key first (so "H200 NVL" before "H200");
# --peak-tflops gives any other device's.
BF16_PEAK_TFLOPS = {
    "H200 NVL": 835.0,
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
# TF32 tensor-core peaks, for fp32 training whose convolutions run in TF32 (cuDNN's default)
TF32_PEAK_TFLOPS = {
    "H200 NVL": 418.0,
    "H200": 495.0,
    "H100 NVL": 418.0,
    "H100 PCIe": 378.0,
    "H100": 495.0,
    "GH200": 495.0,
    "A100": 156.0,
    "L40S": 183.0,
    "L4": 60.0,
    "A10G": 35.0,
    "RTX 4090": 83.0,
}


def peak_tflops(device_name: str, precision: str = "bf16") -> float | None:
    """The dense peak of ``device_name`` in ``precision`` ("bf16" or "tf32"); None when unknown."""
    table = BF16_PEAK_TFLOPS if precision == "bf16" else TF32_PEAK_TFLOPS
    for key in sorted(table, key=len, reverse=True):
        if key in device_name:
            return table[key]
    return None


def tf32_flags() -> dict[str, bool]:
    """Whether fp32 convolutions (cuDNN) and matmuls (cuBLAS) may run in TF32 on CUDA now."""
    return {
        "cudnn_conv": bool(torch.backends.cudnn.allow_tf32),
        "cuda_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
    }


@contextmanager
def tf32_enabled(enabled: bool | None) -> Iterator[None]:
    """Within the block, TF32 for convolutions and matmuls on (True) or off (False: full fp32);
    None leaves the flags as they are. The flags are restored afterwards."""
    saved = tf32_flags()
    if enabled is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved["cudnn_conv"]
        torch.backends.cuda.matmul.allow_tf32 = saved["cuda_matmul"]


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


def meta_model(cfg: ModelConfig) -> nn.Module:
    """The workflow's network on the meta device (shapes only: no weights are allocated or loaded)."""
    with torch.device("meta"):
        return build_model(dataclasses.replace(cfg, pretrained=None))


def flops_per_sample(model: nn.Module, shape: tuple[int, ...], device: str | torch.device = "meta") -> dict[str, float]:
    """Forward and forward+backward FLOPs for one sample (convolutions and matmuls, 2 per MAC).

    Counted on a batch of two (BatchNorm in training mode refuses one sample at 1x1x1) and halved,
    on ``device``: the meta device by default, where the counts are the same as on a real one
    but no tensor is allocated or computed (``model`` is moved there).
    """
    model = model.to(device).train()
    x = torch.randn(2, *shape, device=device)
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
    optimizer) of a separate copy of the model on one in-memory batch, and its inference on a batch
    of twice that (the held-out batch size of ``predict_logits``). Run between the epochs, each
    epoch is compared with the limit measured next to it (the machine's speed drifts when it is
    shared)."""

    def __init__(self, cfg: WorkflowConfig, device: torch.device, precision: Precision, steps: int) -> None:
        self.device, self.bf16, self.steps, self.bs = device, precision.bf16, steps, cfg.train.batch_size
        self.infer_bs = 2 * self.bs
        self.memory_format = memory_format_for(cfg.train, device, cfg.model.spatial_dims)
        self.model = build_model(cfg.model).to(device)
        keep_in_fp32(self.model, precision.fp32_layers)
        self.model.to(memory_format=self.memory_format).train()
        shape = (cfg.model.in_channels, *cfg.data.spatial_size)
        self.x = torch.randn(self.bs, *shape, device=device).contiguous(memory_format=self.memory_format)
        self.x_infer = torch.randn(self.infer_bs, *shape, device=device).contiguous(memory_format=self.memory_format)
        self.y = (torch.arange(self.bs, device=device) % 2).float()
        self.batch = [{IMAGE: self.x, TARGET: self.y}]
        self.optimizer = make_optimizer(self.model, cfg.train)
        self.loss_fn = make_loss(cfg.train, self.y.cpu().numpy(), device)
        self.train_step = TrainStep(self.model, self.loss_fn, self.optimizer, memory_format=self.memory_format)
        self.step()  # warm-up

    def warm(self, n: int) -> None:
        """One untimed training step on a batch of ``n`` (another batch size the epochs will see, a
        remainder batch): cuDNN autotunes each new shape once (the cache is global), here rather
        than inside a timed epoch. Sizes of 0, 1 or the full batch do nothing."""
        if 1 < n < self.bs:
            run_epoch(self.train_step, [{IMAGE: self.x[:n], TARGET: self.y[:n]}], device=self.device, bf16=self.bf16)
            sync(self.device)

    def step(self) -> None:
        run_epoch(self.train_step, self.batch, device=self.device, bf16=self.bf16)

    def samples_per_s(self) -> float:
        """Training samples/s: the median of ``steps`` timed steps after one untimed."""
        return self.bs / median_time(self.step, self.device, self.steps, warmup=1)

    def infer_step(self) -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            self.model(self.x_infer)

    def infer_samples_per_s(self) -> float:
        """Inference samples/s at the held-out batch size: the median of ``steps`` timed passes after one untimed."""
        self.model.eval()
        try:
            return self.infer_bs / median_time(self.infer_step, self.device, self.steps, warmup=1)
        finally:
            self.model.train()

    def resident_gib(self) -> float:
        """GiB the probe keeps on its device: weights, gradients, optimizer state and its batches."""
        state = [v for st in self.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
        grads = [q.grad for q in self.model.parameters() if q.grad is not None]
        tensors = [*self.model.parameters(), *self.model.buffers(), *grads, *state, self.x, self.x_infer, self.y]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values()) / 2**30


def pure_compute(cfg: WorkflowConfig, device: torch.device, precision: Precision, repeats: int) -> dict[str, float]:
    """Samples/s of training steps and of inference (at the held-out batch size) on one in-memory
    batch on ``device`` (in the memory format and precision that training uses), with a fresh model."""
    probe = Probe(cfg, device, precision, repeats)
    return {"train_samples_per_s": probe.samples_per_s(), "infer_samples_per_s": probe.infer_samples_per_s()}


def start_peak_memory(device: torch.device) -> bool:
    """Free what nothing refers to any more and restart the peak counters, for a measured phase:
    the GPU's allocator peak, and the host's peak RSS where Linux lets it be reset
    (``/proc/self/clear_refs``); True when the host peak was reset."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _vm_hwm_kib() is not None


def _vm_hwm_kib() -> int | None:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), None)


def peak_memory(device: torch.device, host_reset: bool = False) -> dict[str, Any]:
    """Peak RSS and peak GPU memory (allocated by torch) since :func:`start_peak_memory`; the RSS
    is the whole process's peak when the host counter could not be reset (``peak_rss_scope``)."""
    hwm = _vm_hwm_kib() if host_reset else None
    rss_kb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    scope = "phase" if hwm is not None else "process"
    return {"peak_rss_gib": rss_kb / 2**20, "peak_rss_scope": scope, "peak_gpu_gib": gpu}
