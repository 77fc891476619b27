"""`cohortnet bench` on a tiny cohort: the table, the JSON and the side-by-side baseline (numbers
are not asserted, only that every measure is there and sane)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.cli import main


@pytest.mark.parametrize("backend", ["batch", "monai"])
def test_bench_prints_the_table_and_writes_json(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    backend: str,
) -> None:
    wf = make_workflow(make_cohort(n_patients=10), data={"augment": {"flip": True, "affine": True, "backend": backend}})
    out = tmp_path / "bench.json"
    args = ["bench", str(wf), "--epochs", "2", "--repeats", "2", "--baseline", "--device", "cpu", "--peak-tflops", "2"]
    code = main([*args, "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for line in ("(a) pure compute, training", "(b) end to end, warm epoch", "side by side with the MONAI tutorial"):
        assert line in text
    result = json.loads(out.read_text())
    assert result["end_to_end"]["epochs"] == 2
    assert result["flops_train_per_sample"] > result["flops_forward_per_sample"] > 0
    for key in ("warm_epoch_vs_compute", "cold_epoch_vs_compute", "inference_vs_compute", "warm_epoch_vs_tutorial"):
        assert result["ratios"][key] > 0
    assert result["mfu"]["warm_epoch"] == pytest.approx(result["achieved_tflops"]["warm_epoch"] / 2)
    assert "model FLOP utilisation" in text
    assert result["memory"]["peak_rss_gib"] > 0
    assert result["memory"]["peak_gpu_gib"] is None
    assert "_held_out" not in result["end_to_end"]
    assert "_held_out" not in result["tutorial_baseline"]
    if "auc_comparison" in result:  # both classes among the held-out images
        assert result["auc_comparison"]["method"] == "delong_paired"


def test_bench_without_workflow_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    assert "needs a WORKFLOW" in capsys.readouterr().err


def test_known_gpus_have_a_bf16_peak() -> None:
    from pipeline.benchmarks import peak_tflops

    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("cpu") is None


def test_precision_suite_trains_fp32_and_bf16_side_by_side(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """bf16 runs on every machine (emulated where the CPU lacks it); unchecked adds plain autocast."""
    wf = make_workflow(make_cohort(n_patients=10))
    out = tmp_path / "precision.json"
    args = ["bench", str(wf), "--suite", "precision", "--epochs", "2", "--unchecked", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "held-out AUC" in text
    assert "bf16 / fp32 warm-epoch speed" in text
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"fp32", "bf16", "bf16 unchecked"}
    for name, v in result["variants"].items():
        assert len(v["epoch_seconds"]) == 2
        assert v["slowest_epoch_s"] >= v["median_epoch_s"] > 0
        assert v["warm_epoch_samples_per_s"] > 0
        if name != "bf16 unchecked":
            assert v["held_out_scores_finite"]
            assert v["epochs_with_nonfinite_steps"] == 0
    assert result["variants"]["fp32"]["precision"] == "fp32"
    assert result["variants"]["bf16"]["precision"].startswith("bf16 autocast")
    assert result["bf16_vs_fp32_speed"] > 0


def test_predict_suite_times_a_verified_synthetic_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The synthetic model is a real archive; throughput and memory run through predict_cohort itself."""
    from pipeline.benchmarks import predict

    model = predict.synthetic_model(tmp_path / "synthetic.zip")
    assert main(["export", "--verify", str(model)]) == 0
    manifest = predict.synthetic_cohort(tmp_path / "cohort", 12)
    t = predict.throughput(model, manifest, tmp_path / "t", repeats=1, chunk=5)
    assert t["n_images"] == 12
    assert t["end_to_end_img_s"] > 0
    assert t["ratio"] == pytest.approx(t["end_to_end_img_s"] / t["model_only_img_s"])
    # the shared-CPU bound: preprocessing and the model take turns on the same CPUs, so n images
    # need n / preprocess + n / model seconds
    seconds = t["n_images"] / t["preprocess_only_img_s"] + t["n_images"] / t["model_only_img_s"]
    assert t["shared_cpu_bound_img_s"] == pytest.approx(t["n_images"] / seconds)
    assert t["ratio_to_shared_bound"] == pytest.approx(t["end_to_end_img_s"] * seconds / t["n_images"])
    scored = __import__("pandas").read_csv(tmp_path / "t" / "e2e-0" / "predictions.csv")
    assert len(scored) == 12
    memory = predict.memory(model, tmp_path / "m", scales=(6,))
    assert memory[0]["n_images"] == 6
    assert memory[0]["rss_mb"] > 0
    text = predict.format_predict({"throughput": {"synthetic": t}, "memory": memory})
    assert "synthetic" in text
    assert "peak RSS of one predict process" in text
