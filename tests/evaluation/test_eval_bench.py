"""Benchmarks: a fast coverage smoke test that fails for a wrong SE, speed, and the full run (slow)."""

from __future__ import annotations

import pytest

from pipeline.benchmarks import intervals as bench


def test_coverage_smoke_detects_correct_intervals():
    """400 studies at n = 60: Monte Carlo SE about 1.1%, so 91-99% fails an SE off by 25% or more
    (coverage about 87% or 99.5%), while a correct interval passes with near certainty."""
    result = bench.coverage_benchmark(n_studies=400, sizes=(60,), n_bootstrap=300, seed=1)
    by_method = {r["method"]: r for r in result["rows"]}
    for method in ("delong", "bootstrap"):
        assert 0.91 <= by_method[method]["coverage"] <= 0.99, bench.format_coverage(result)
    assert "coverage" in bench.format_coverage(result)


def test_coverage_smoke_would_catch_a_wrong_standard_error(monkeypatch):
    """The smoke test's bounds are not vacuous: halving the SE drops coverage far below 91%."""
    real = bench.logit_interval
    monkeypatch.setattr(bench, "logit_interval", lambda a, se, level: real(a, se / 2.0, level))
    result = bench.coverage_benchmark(n_studies=200, sizes=(60,), n_bootstrap=100, seed=1)
    assert next(r for r in result["rows"] if r["method"] == "delong")["coverage"] < 0.85


def test_speed_smoke():
    """The speed benchmark runs and reports; how fast is for ``cohortnet bench``, not the suite."""
    result = bench.speed_benchmark(n=100_000, repeats=2)
    assert len(result["seconds"]) == result["repeats"] == 2
    assert result["median_seconds"] == pytest.approx(sum(result["seconds"]) / 2)  # no time limit asserted
    assert result["passed"] == (result["median_seconds"] < result["limit_seconds"])
    assert 0.7 < result["auc"] < 0.82
    assert result["auc_ci"][0] < result["auc"] < result["auc_ci"][1]
    text = bench.format_speed(result)
    assert "median" in text
    assert "on 100,000 scores" in text
    assert f"median {result['median_seconds']:.3f} s over 2 runs" in text
    assert f"fastest {min(result['seconds']):.3f} s, slowest {max(result['seconds']):.3f} s" in text
    assert "PASS" not in text
    assert "FAIL" not in text  # numbers only: no verdict on a time


@pytest.mark.slow
def test_full_coverage_benchmark_passes():
    """Item 10: 2,000 studies at n = 50 and n = 500; DeLong and bootstrap within 93.5-96.5%."""
    result = bench.coverage_benchmark(n_studies=2000, sizes=(50, 500))
    assert result["passed"], bench.format_coverage(result)


@pytest.mark.slow
def test_full_speed_benchmark_passes():
    """Item 11: DeLong AUC with CI on 1,000,000 scores in under 2 seconds."""
    result = bench.speed_benchmark(n=1_000_000, repeats=5)
    assert result["passed"], bench.format_speed(result)


def test_small_runs_give_no_verdict():
    result = bench.coverage_benchmark(n_studies=20, sizes=(40,), n_bootstrap=50)
    assert result["passed"] is None
    assert "no verdict" in bench.format_coverage(result)
