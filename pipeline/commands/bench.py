"""``cohortnet bench [WORKFLOW] [--suite training|precision|evaluation|ingestion|predict] [--device D] [--out F]``.

Benchmarks print numbers; they assert nothing. Quote medians and ratios measured in one run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.commands import add_set_argument
from pipeline.options import DEVICES

if TYPE_CHECKING:
    from pipeline.config import WorkflowConfig
    from pipeline.manifest import Cohort

log = logging.getLogger("pipeline")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", nargs="?", type=Path, help="workflow YAML (suite training)")
    parser.add_argument(
        "--suite", choices=("training", "precision", "evaluation", "ingestion", "predict"), default="training"
    )
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    add_set_argument(parser)
    parser.add_argument(
        "--epochs", type=int, help="training: epochs end to end, the first one cold (default: the workflow's)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="training: timed compute steps (median; default 10); predict: alternated runs of each measure (default 3)",
    )
    parser.add_argument(
        "--baseline", action="store_true", help="training: also run the MONAI tutorial loop side by side"
    )
    parser.add_argument(
        "--unchecked",
        action="store_true",
        help="precision: also train with every layer in bf16 (plain autocast, without the per-layer check)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="training: the device's peak TFLOP/s for model FLOP utilisation (known NVIDIA cards are looked up)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="evaluation/ingestion/predict: smaller sizes for a fast look (not the reported figures)",
    )
    parser.add_argument("--model", type=Path, help="predict: also time this run folder or model.zip ...")
    parser.add_argument("--input", type=Path, help="predict: ... on this manifest")


def _training(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from pipeline.benchmarks import TrainingBench, bench_workflow, format_bench
    from pipeline.training import resolve_device

    cfg, cohort = _workflow(args, "training")
    options = TrainingBench(
        epochs=max(2, args.epochs or cfg.train.epochs),
        repeats=args.repeats or 10,
        baseline=args.baseline,
        peak_tflops=args.peak_tflops,
    )
    result = bench_workflow(cfg, cohort, device=resolve_device(args.device), options=options)
    return result, format_bench(result)


def _precision(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from pipeline.benchmarks import format_precision, precision_benchmark
    from pipeline.training import resolve_device

    cfg, cohort = _workflow(args, "precision")
    epochs = max(2, args.epochs or cfg.train.epochs)
    result = precision_benchmark(
        cfg, cohort, device=resolve_device(args.device), epochs=epochs, unchecked=args.unchecked
    )
    return result, format_precision(result)


def _workflow(args: argparse.Namespace, suite: str) -> tuple[WorkflowConfig, Cohort]:
    """The validated workflow (its device set from ``--device``) and cohort."""
    from pipeline.benchmarks import with_device
    from pipeline.errors import ValidationError
    from pipeline.study import validate_workflow

    if args.workflow is None:
        raise ValidationError([f"the {suite} suite needs a WORKFLOW argument"], "command line")
    cfg, cohort = validate_workflow(args.workflow, args.overrides)
    return with_device(cfg, args.device), cohort


def _evaluation(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from pipeline.benchmarks import intervals

    coverage = intervals.coverage_benchmark(n_studies=200 if args.quick else 2000)
    speed = intervals.speed_benchmark(n=100_000 if args.quick else 1_000_000)
    result = {"coverage": coverage, "speed": speed}
    return result, intervals.format_coverage(coverage) + "\n\n" + intervals.format_speed(speed)


def _ingestion(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from pipeline.benchmarks import ingestion

    result = ingestion.ingestion_benchmark(n_files=1000 if args.quick else 10_000)
    return result, ingestion.format_ingestion(result)


def _predict_device(name: str) -> str:
    """``--device`` for the predict suite: ``auto`` is CUDA when there is one; ``cuda`` without
    one is refused."""
    import torch

    from pipeline.errors import ValidationError

    if name == "cuda" and not torch.cuda.is_available():
        raise ValidationError(["--device cuda: torch sees no CUDA device here"], "command line")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _predict(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from pipeline.benchmarks import predict
    from pipeline.errors import ValidationError

    if (args.model is None) != (args.input is None):
        raise ValidationError(["--model and --input go together"], "command line")
    repeats = 3 if args.repeats is None else args.repeats
    if repeats < 1:
        raise ValidationError([f"--repeats must be 1 or more, got {repeats}"], "command line")
    device = _predict_device(args.device)
    log.info("predict benchmark on %s, %d alternated runs of each measure", device, repeats)
    result = predict.predict_benchmark(args.model, args.input, repeats=repeats, quick=args.quick, device=device)
    return result, predict.format_predict(result)


def run(args: argparse.Namespace) -> int:
    suites = {
        "training": _training,
        "precision": _precision,
        "evaluation": _evaluation,
        "ingestion": _ingestion,
        "predict": _predict,
    }
    result, text = suites[args.suite](args)
    print(text)
    if args.out:
        from pipeline.reporting.artifacts import write_json

        write_json(args.out, result)
        log.info("wrote %s", args.out)
    return 0
