"""How the benchmarks measure (behaviour, never timings): FLOPs on the meta device, TF32 scoped to the
fp32 variant, inference timed after a warm-up and interleaved with its probe, the predict suite's
--device and --repeats, numbers without verdicts, scans repeated, and the bench-gpu preflight."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.cli import main


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_flops_on_the_meta_device_equal_a_real_count(norm: str) -> None:
    from pipeline.benchmarks.compute import flops_per_sample, meta_model
    from pipeline.config import ModelConfig
    from pipeline.models import build_model

    cfg = ModelConfig(arch="resnet10", spatial_dims=3, stem_stride=2, widen_factor=0.25, norm=norm)  # type: ignore[arg-type]
    shape = (1, 16, 16, 12)
    real = flops_per_sample(build_model(cfg), shape, device="cpu")
    model = meta_model(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert flops_per_sample(model, shape) == real
    assert real["train"] > real["forward"] > 0


def test_tf32_is_scoped_and_restored() -> None:
    from pipeline.benchmarks.compute import tf32_enabled, tf32_flags

    before = tf32_flags()
    with tf32_enabled(False):
        assert tf32_flags() == {"cudnn_conv": False, "cuda_matmul": False}
    assert tf32_flags() == before
    with tf32_enabled(None):
        assert tf32_flags() == before
    with pytest.raises(RuntimeError), tf32_enabled(True):
        raise RuntimeError("restored even so")
    assert tf32_flags() == before


def test_precision_suite_runs_fp32_without_tf32_and_restores_the_flags(
    make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    from pipeline.benchmarks import precision_benchmark
    from pipeline.benchmarks.compute import tf32_flags
    from pipeline.study import validate_workflow

    cfg, cohort = validate_workflow(make_workflow(make_cohort(n_patients=8)), [])
    before = tf32_flags()
    result = precision_benchmark(cfg, cohort, device=torch.device("cpu"), epochs=1)
    assert result["variants"]["fp32"]["tf32"] == {"cudnn_conv": False, "cuda_matmul": False}
    assert result["variants"]["bf16"]["tf32"] == before  # bf16 runs with torch's flags as they are
    assert tf32_flags() == before == result["tf32_after"]


class _FakeRun:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def predict(self) -> str:
        self.calls.append("predict")
        return "prediction"


class _FakeProbe:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def infer_samples_per_s(self) -> float:
        self.calls.append("probe")
        return 1.0


def test_inference_is_warmed_then_interleaved_with_its_probe() -> None:
    from pipeline.benchmarks.training import INFERENCE_PASSES, _inference

    calls: list[str] = []
    out = _inference(_FakeRun(calls), _FakeProbe(calls))  # type: ignore[arg-type]
    assert INFERENCE_PASSES >= 3
    assert calls == ["predict"] + ["predict", "probe"] * INFERENCE_PASSES
    assert len(out.passes) == len(out.probes) == INFERENCE_PASSES


def test_probe_infers_at_the_held_out_batch_size_and_warms_other_sizes(
    make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    from pipeline.benchmarks.compute import Probe
    from pipeline.precision import Precision
    from pipeline.study import validate_workflow

    cfg, _ = validate_workflow(make_workflow(make_cohort(n_patients=4)), [])
    probe = Probe(cfg, torch.device("cpu"), Precision(False), steps=1)
    assert probe.x_infer.shape[0] == 2 * cfg.train.batch_size  # predict_logits' batch
    steps = probe.optimizer.state[next(probe.model.parameters())]["step"].item()
    probe.warm(3)  # a remainder batch: one more step
    probe.warm(1)  # dropped by the loader: nothing
    probe.warm(cfg.train.batch_size)  # the full batch is warm already: nothing
    assert probe.optimizer.state[next(probe.model.parameters())]["step"].item() == steps + 1
    assert probe.model.training
    assert probe.infer_samples_per_s() > 0
    assert probe.model.training  # back in training mode after inference
    assert probe.resident_gib() > 0


def test_peak_memory_says_what_it_covers() -> None:
    from pipeline.benchmarks.compute import peak_memory, start_peak_memory

    reset = start_peak_memory(torch.device("cpu"))
    memory = peak_memory(torch.device("cpu"), reset)
    assert memory["peak_rss_scope"] == ("phase" if reset else "process")
    assert memory["peak_rss_gib"] > 0
    assert memory["peak_gpu_gib"] is None


def test_peaks_match_the_longer_device_name_first() -> None:
    from pipeline.benchmarks.compute import peak_tflops

    assert peak_tflops("NVIDIA H200 NVL") == 835.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA H200", "tf32") == 495.0
    assert peak_tflops("NVIDIA V100-SXM2-16GB", "tf32") is None  # no TF32: no MFU in fp32


def test_speed_benchmark_prints_numbers_without_a_verdict() -> None:
    from pipeline.benchmarks import intervals

    result = intervals.speed_benchmark(n=2_000, repeats=2)
    text = intervals.format_speed(result)
    assert "PASS" not in text
    assert "FAIL" not in text
    assert "limit" not in text
    assert f"median {result['median_seconds']:.3f} s over 2 runs" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusal is for machines without CUDA")
def test_predict_suite_refuses_cuda_without_a_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--suite", "predict", "--quick", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "repeats"), [([], 3), (["--repeats", "7"], 7)])
def test_predict_suite_honours_device_and_repeats(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], repeats: int
) -> None:
    from pipeline.benchmarks import predict

    seen: dict[str, Any] = {}

    def fake(model: Any, cohort: Any, repeats: int, quick: bool, device: str) -> dict[str, Any]:
        seen.update(repeats=repeats, quick=quick, device=device)
        return {"device": device, "repeats": repeats, "throughput": {}, "memory": []}

    monkeypatch.setattr(predict, "predict_benchmark", fake)
    out = tmp_path / "p.json"
    assert main(["bench", "--suite", "predict", "--quick", "--device", "cpu", *argv, "--out", str(out)]) == 0
    assert seen == {"repeats": repeats, "quick": True, "device": "cpu"}
    assert json.loads(out.read_text())["device"] == "cpu"
    assert main(["bench", "--suite", "predict", "--device", "cpu", "--repeats", "0"]) == 2


def test_predict_table_names_device_and_runs_and_no_worker_column() -> None:
    from pipeline.benchmarks.predict import format_predict

    dask = {
        "workers": 2,
        "n_images": 40,
        "repeats": 3,
        "dask_img_s": 10.0,
        "single_img_s": 20.0,
        "ratio": 0.5,
        "cluster_startup_s": 1.5,
        "cluster_shutdown_s": 0.5,
    }
    memory = [{"n_images": 20, "img_s": 100.0, "rss_mb": 300.0}]
    text = format_predict({"device": "cpu", "repeats": 3, "throughput": {}, "memory": memory, "dask": dask})
    assert "on cpu, median of 3 alternated runs" in text
    assert "worker MB" not in text
    assert "cluster start-up 1.5 s" in text


def test_scan_modes_are_repeated_and_interleaved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.benchmarks import ingestion

    ingestion.write_tree(tmp_path / "tree", 8, 4, seed=0)
    order: list[str] = []
    real = ingestion.scan_tree

    def spy(tree: Path, out: Path, options: Any) -> Any:
        order.append(f"{options.verify}_{options.workers}w")
        return real(tree, out, options)

    monkeypatch.setattr(ingestion, "scan_tree", spy)
    monkeypatch.setattr(ingestion.os, "cpu_count", lambda: 1)  # one process: the two header modes are one
    result = ingestion._scans(tmp_path / "tree", tmp_path / "out", 9, repeats=2)
    assert order == ["header_1w", "sample_1w"] * 2
    assert len(result["scan_header_1w_all_s"]) == 2
    assert result["scan_header_1w_s"] > 0
    assert result["scan_repeats"] == 2


def test_preflight_names_what_is_missing() -> None:
    from pipeline.benchmarks import preflight

    assert preflight.check(need_cuda=False, modules=("json",)) == []
    problems = preflight.check(need_cuda=False, modules=("json", "no_such_module_here"))
    assert len(problems) == 1
    assert "no_such_module_here" in problems[0]
    assert "gpu-wheels" in problems[0]
    if not torch.cuda.is_available():
        assert "no CUDA device" in preflight.check(need_cuda=True, modules=("json",))[0]
