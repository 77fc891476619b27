"""``cohortnet compare``: comparability checks, paired tests and the report files."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.evaluation import bootstrap_paired_test, delong_paired_test
from pipeline.reporting.compare import holm_adjust, mcnemar_exact

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
N = 20
LABELS = np.array([i % 2 for i in range(N)])


def write_run(
    root: Path,
    run_id: str,
    scores: Any,
    *,
    labels: Any = LABELS,
    threshold: float | None = 0.5,
    fold_seed: int = 0,
    positive: str = "1",
) -> Path:
    """A finished study run folder as ``cohortnet run`` leaves it (the files compare reads)."""
    run = root / "reports" / "syn" / run_id
    run.mkdir(parents=True)
    ids = [f"P{i:03d}" for i in range(len(scores))]
    folds = (np.arange(len(ids)) + fold_seed) % 2
    per_patient = pd.DataFrame(
        {"patient_id": ids, "label": labels, "score": scores, "fold": folds, "n_images": 1, "site": "A"}
    )
    per_patient.to_csv(run / "per_patient.csv", index=False)
    splits = [(k, p, "test" if f == k else "train") for k in (0, 1) for p, f in zip(ids, folds, strict=True)]
    pd.DataFrame(splits, columns=["fold", "patient_id", "role"]).to_csv(run / "splits.csv", index=False)
    for name in ("predictions.csv", "val_predictions.csv"):
        per_patient.assign(image_id=ids).to_csv(run / name, index=False)
    metrics = {"task": "binary", "label_col": "label", "positive": positive, "unit": "patient", "auc": None}
    metrics["threshold"] = threshold
    (run / "metrics.json").write_text(json.dumps(metrics))
    config = {
        "study": "syn",
        "manifest": "absent.csv",
        "task": {"label": "label", "positive": 1},
        "model": {"arch": "resnet10", "spatial_dims": 3},
        "data": {"spatial_size": [8, 8, 8]},
        "validation": {"scheme": "kfold", "folds": 2},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "environment.json").write_text("{}")
    return run


def scores_for(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.5 + 0.3 * (LABELS - 0.5) + rng.normal(0, 0.25, N), 0.01, 0.99)


def compare(
    tmp_path: Path, *runs: Path, extra: tuple[str, ...] = (), out_name: str = "cmp"
) -> tuple[int, dict[str, Any] | None]:
    out = tmp_path / out_name
    code = main(["compare", *map(str, runs), "--out", str(out), "--n-bootstrap", "300", *extra])
    result = json.loads((out / "compare.json").read_text()) if (out / "compare.json").is_file() else None
    return code, result


def test_mcnemar_and_holm_by_hand() -> None:
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)  # 2 * 0.5**5
    assert mcnemar_exact(5, 0) == pytest.approx(0.0625)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 3) == pytest.approx(0.625)  # 2 * (1 + 4) / 16
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, None, 0.2]) == [0.5, None, 0.4]


def test_mcnemar_on_discordant_positives(tmp_path: Path) -> None:
    # the reference misses 5 positives that the other run finds; the negatives are called alike
    ref = np.where(LABELS == 1, 0.6, 0.2)
    ref[[1, 3, 5, 7, 9]] = 0.4
    other = np.where(LABELS == 1, 0.7, 0.3)
    code, result = compare(tmp_path, write_run(tmp_path, "a", ref), write_run(tmp_path, "b", other))
    assert code == 0
    assert result is not None
    sens, spec = result["comparisons"][0]["sensitivity"], result["comparisons"][0]["specificity"]
    assert (sens["discordant_reference_only"], sens["discordant_run_only"]) == (0, 5)
    assert sens["mcnemar_p"] == pytest.approx(0.0625)
    assert (sens["reference"], sens["run"], sens["difference"]) == pytest.approx((0.5, 1.0, 0.5))
    assert spec["mcnemar_p"] == 1.0
    assert spec["difference"] == 0.0


def test_delong_and_bootstrap_match_the_evaluation_functions(tmp_path: Path) -> None:
    s_a, s_b = scores_for(1), scores_for(2)
    code, result = compare(tmp_path, write_run(tmp_path, "a", s_a), write_run(tmp_path, "b", s_b))
    assert code == 0
    assert result is not None
    c = result["comparisons"][0]
    expected = delong_paired_test(LABELS, s_b, s_a)
    assert c["delong"]["p_value"] == pytest.approx(expected["p_value"], rel=1e-12)
    assert c["delong"]["auc_difference"] == pytest.approx(expected["auc1"] - expected["auc2"])
    boot = bootstrap_paired_test(LABELS, s_b, s_a, n_bootstrap=300, seed=0)
    assert (c["bootstrap"]["ci_low"], c["bootstrap"]["ci_high"]) == pytest.approx((boot["ci_low"], boot["ci_high"]))
    assert [r["auc"] for r in result["runs"]] == pytest.approx([expected["auc2"], expected["auc1"]])
    assert "holm" not in c  # two runs: one comparison, nothing to adjust


def test_identical_runs_differ_by_nothing(tmp_path: Path) -> None:
    s = scores_for(3)
    code, result = compare(tmp_path, write_run(tmp_path, "a", s), write_run(tmp_path, "b", s))
    assert code == 0
    assert result is not None
    c = result["comparisons"][0]
    assert c["delong"]["auc_difference"] == 0.0
    assert c["delong"]["p_value"] == 1.0
    assert c["bootstrap"]["ci_low"] == c["bootstrap"]["ci_high"] == 0.0
    assert c["sensitivity"]["mcnemar_p"] == c["specificity"]["mcnemar_p"] == 1.0
    assert all(check["passed"] for check in result["checks"])
    assert result["warnings"] == []


def test_three_runs_write_every_file_with_holm_and_no_patient_ids(tmp_path: Path) -> None:
    runs = [write_run(tmp_path, name, scores_for(seed)) for name, seed in (("a", 1), ("b", 2), ("c", 4))]
    code, result = compare(tmp_path, *runs)
    assert code == 0
    assert result is not None
    out = tmp_path / "cmp"
    table = pd.read_csv(out / "compare.csv")
    assert list(table["run"]) == ["B", "C"]
    assert list(table["reference"]) == ["A", "A"]
    raw = sorted(table["delong_p"])
    assert sorted(table["delong_p_holm"]) == pytest.approx([min(1, 2 * raw[0]), max(min(1, 2 * raw[0]), raw[1])])
    assert (out / "roc_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "compare.html").read_text()
    assert "data:image/png;base64," in html
    assert "data-figures-ok" in html
    for name in ("syn/a", "syn/b", "syn/c", "resnet10 3D", "2-fold patient-grouped cross-validation"):
        assert name in html
    for path in out.iterdir():
        if path.suffix in (".json", ".csv", ".html"):
            assert "P001" not in path.read_text()


def refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], *runs: Path) -> str:
    code, result = compare(tmp_path, *runs, out_name="refused")
    err = capsys.readouterr().err
    assert code == 2
    assert result is None
    assert "Traceback" not in err
    return err


def test_refuses_different_patients(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path, "a", scores_for(1))
    b = write_run(tmp_path, "b", scores_for(2))
    table = pd.read_csv(b / "per_patient.csv")
    table.loc[0, "patient_id"] = "X001"
    table.loc[1, "patient_id"] = "X002"
    table.drop(index=2).to_csv(b / "per_patient.csv", index=False)
    err = refused(tmp_path, capsys, a, b)
    assert "syn/a" in err
    assert "syn/b" in err
    assert "patient sets differ: 3 patient(s) only in A, 2 only in B" in err


def test_refuses_different_labels_and_positive_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path, "a", scores_for(1))
    flipped = LABELS.copy()
    flipped[:3] = 1 - flipped[:3]
    b = write_run(tmp_path, "b", scores_for(2), labels=flipped)
    assert "3 patient(s) have a different label or target" in refused(tmp_path, capsys, a, b)
    c = write_run(tmp_path, "c", scores_for(2), positive="0")
    assert "positive class" in refused(tmp_path, capsys, a, c)


def test_refuses_unfinished_runs_and_names_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path, "a", scores_for(1))
    b = write_run(tmp_path, "b", scores_for(2))
    (b / "per_patient.csv").unlink()
    err = refused(tmp_path, capsys, a, b, tmp_path / "nowhere")
    assert "B (b): not a finished run: missing per_patient.csv" in err
    assert "C (nowhere): not a folder" in err


def test_different_splits_refused_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path, "a", scores_for(1))
    b = write_run(tmp_path, "b", scores_for(2), fold_seed=1)
    assert "patient(s) are tested in another fold in B than in A" in refused(tmp_path, capsys, a, b)
    code, result = compare(tmp_path, a, b, extra=("--allow-different-splits",))
    assert code == 0
    assert result is not None
    assert result["options"]["allow_different_splits"] is True
    assert [c["passed"] for c in result["checks"] if c["check"].startswith("same splits")] == [False]
    assert "splits differ" in result["warnings"][0]
    assert "splits differ" in (tmp_path / "cmp" / "compare.html").read_text()


def test_two_real_studies_compare(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = make_cohort(n_patients=12, shape=(8, 8, 8))
    assert main(["run", str(make_workflow(manifest)), "--run-id", "a"]) == 0
    assert main(["run", str(make_workflow(manifest, train={"lr": 0.01})), "--run-id", "b"]) == 0
    assert main(["run", str(make_workflow(manifest, train={"seed": 1})), "--run-id", "c"]) == 0
    runs = tmp_path / "reports" / "tiny"
    capsys.readouterr()
    code, result = compare(tmp_path, runs / "a", runs / "b")
    assert code == 0
    assert result is not None
    for run, key in zip(result["runs"], "ab", strict=True):
        metrics = json.loads((runs / key / "metrics.json").read_text())
        assert run["auc"] == pytest.approx(metrics["auc"])
        assert run["sensitivity"] == pytest.approx(metrics["sensitivity"])
        assert run["specificity"] == pytest.approx(metrics["specificity"])
    assert "splits differ" in refused(tmp_path, capsys, runs / "a", runs / "c")  # the seed draws the folds


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on this machine")
def test_compare_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    runs = [write_run(tmp_path, name, scores_for(seed)) for name, seed in (("a", 1), ("b", 2))]
    assert compare(tmp_path, *runs)[0] == 0
    cmd = [
        str(BROWSER), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (tmp_path / "cmp" / "compare.html").as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'data-figures-ok="true"' in dom
    assert 'data-figures="1"' in dom
    assert 'id="mcnemar"' in dom


def write_prediction(root: Path, name: str, scores: Any, *, labelled: bool = True) -> Path:
    """A ``cohortnet predict`` folder of a labelled cohort (the files compare reads)."""
    out = root / name
    out.mkdir(parents=True)
    ids = [f"P{i:03d}" for i in range(len(scores))]
    pd.DataFrame({"patient_id": ids, "label": LABELS, "score": scores}).to_csv(out / "per_patient.csv", index=False)
    study = {"name": "syn", "scheme": "2-fold patient-grouped cross-validation", "model": "resnet10 3D, input 8x8x8"}
    (out / "provenance.json").write_text(json.dumps({"study": study, "model": {"study_run": "a"}, "shard": None}))
    if labelled:
        metrics = {"task": "binary", "label_col": "label", "positive": "1", "unit": "patient", "threshold": 0.5}
        (out / "metrics.json").write_text(json.dumps(metrics))
    return out


def test_prediction_folders_compare_without_a_splits_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path, "a", scores_for(1))
    ext = write_prediction(tmp_path, "ext", scores_for(2))
    code, result = compare(tmp_path, a, ext)
    assert code == 0
    assert result is not None
    assert [r["kind"] for r in result["runs"]] == ["study", "prediction"]
    assert result["runs"][1]["name"] == "syn/ext"
    assert "not applicable" in result["checks"][-1]["detail"]
    unlabelled = write_prediction(tmp_path, "unlabelled", scores_for(2), labelled=False)
    assert "compare needs labels" in refused(tmp_path, capsys, a, unlabelled)


def test_predictions_of_study_patients_are_refused_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_run(tmp_path, "a", scores_for(1))
    leaky = write_prediction(tmp_path, "leaky", scores_for(2))
    prov = json.loads((leaky / "provenance.json").read_text())
    (leaky / "provenance.json").write_text(json.dumps({**prov, "study_patients_predicted": 12}))
    err = refused(tmp_path, capsys, a, leaky)
    assert "B (syn/leaky): 12 patient(s) trained or validated the models that scored them" in err
    assert "--allow-study-patients" in err
    code, result = compare(tmp_path, a, leaky, extra=("--allow-study-patients",))
    assert code == 0
    assert result is not None
    assert result["options"]["allow_study_patients"] is True
    assert [c["passed"] for c in result["checks"] if c["check"].startswith("predictions of held-out")] == [False]
    assert "not an independent test" in result["warnings"][0]
    assert "not an independent test" in (tmp_path / "cmp" / "compare.html").read_text()


def test_labels_are_read_as_the_pipeline_reads_them_and_unlabelled_patients_are_left_out(tmp_path: Path) -> None:
    a = write_run(tmp_path, "a", scores_for(1))
    ext = write_prediction(tmp_path, "ext", scores_for(2))
    table = pd.read_csv(ext / "per_patient.csv")
    table["label"] = table["label"].map({1: "1.0", 0: "0.0"})  # as a float column is written
    extra = pd.DataFrame({"patient_id": ["U001", "U002"], "label": [None, ""], "score": [0.4, float("nan")]})
    pd.concat([table, extra]).to_csv(ext / "per_patient.csv", index=False)
    code, result = compare(tmp_path, a, ext)
    assert code == 0
    assert result is not None
    assert [r["n_patients"] for r in result["runs"]] == [N, N]
    assert result["comparisons"][0]["n_positive"] == int(LABELS.sum())
    assert "B (syn/ext): 2 patient(s) without a label left out" in result["warnings"]
    direct = delong_paired_test(LABELS, scores_for(2), scores_for(1))
    assert result["comparisons"][0]["delong"]["p_value"] == pytest.approx(direct["p_value"])
