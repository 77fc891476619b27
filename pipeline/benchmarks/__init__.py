"""Benchmarks (``cohortnet bench``); they print numbers and assert nothing.

- :mod:`pipeline.benchmarks.training` -- ``--suite training``: where the time of a study goes, pure
  compute against end to end from the files, FLOPs, memory, and a MONAI tutorial loop side by side
- :mod:`pipeline.benchmarks.precision` -- ``--suite precision``: fp32 and bf16 trained side by side
- :mod:`pipeline.benchmarks.runs` -- the runs those two time: a study's fold through the study's own
  training and inference code, and the hand-written tutorial loop
- :mod:`pipeline.benchmarks.compute` -- pure compute, FLOPs per sample, bf16 peaks, peak memory
- :mod:`pipeline.benchmarks.intervals` -- ``--suite evaluation``: AUC interval coverage and DeLong speed
- :mod:`pipeline.benchmarks.ingestion` -- ``--suite ingestion``: header scanning and series assembly
- :mod:`pipeline.benchmarks.predict` -- ``--suite predict``: end-to-end against model-only images/s,
  peak RSS at 1k/10k/100k images, and ``--dask local:2`` against one process

The entry points below are imported on first use, so the evaluation and ingestion benchmarks
run without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.benchmarks.compute import peak_tflops
    from pipeline.benchmarks.ingestion import format_ingestion, ingestion_benchmark
    from pipeline.benchmarks.intervals import coverage_benchmark, format_coverage, format_speed, speed_benchmark
    from pipeline.benchmarks.precision import format_precision, precision_benchmark
    from pipeline.benchmarks.training import TrainingBench, bench_workflow, format_bench, with_device

_MODULE = {
    "peak_tflops": "compute",
    "format_ingestion": "ingestion",
    "ingestion_benchmark": "ingestion",
    "coverage_benchmark": "intervals",
    "format_coverage": "intervals",
    "format_speed": "intervals",
    "speed_benchmark": "intervals",
    "format_precision": "precision",
    "precision_benchmark": "precision",
    "TrainingBench": "training",
    "bench_workflow": "training",
    "format_bench": "training",
    "with_device": "training",
}

__all__ = [
    "TrainingBench",
    "bench_workflow",
    "coverage_benchmark",
    "format_bench",
    "format_coverage",
    "format_ingestion",
    "format_precision",
    "format_speed",
    "ingestion_benchmark",
    "peak_tflops",
    "precision_benchmark",
    "speed_benchmark",
    "with_device",
]


def __getattr__(name: str) -> Any:
    if name in _MODULE:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
