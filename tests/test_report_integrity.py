"""The report says what the run did and leaves out what must stay in the run folder: the redacted
copy's workflow filter (diagram and checklist), the checklist's answers for members and nested
cross-validation, the per-patient table's count, the rebuilt report's file list and summary, and a
skipped decision curve. Every input is made by hand: nothing is trained."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import EvaluationConfig, TrainConfig, ValidationConfig, WorkflowConfig
from pipeline.reporting import build, cohort, figures, html, redact
from pipeline.reporting.checklist import RunFacts, fill_checklist
from pipeline.reporting.html import ReportInputs, render_report

PNG = b"\x89PNG not really"
SECRETS = ("St Marys Hospital", "PATIENT-JOHN-DOE")
KEEP = {"site": SECRETS}


def _flow() -> dict[str, Any]:
    """A flow as ``cohort.flow_counts`` gives it, from a run whose filter kept two sites."""
    return {
        "manifest": {"file": "manifest.csv", "images": 10, "patients": 10},
        "scan": None,
        "filter": {"rule": cohort.filter_rule(KEEP), "images": 4, "patients": 4},
        "eligible": {"images": 6, "patients": 6},
        "loading": {"images": 0, "patients": 0, "by_reason": {}},
        "included": {"images": 6, "patients": 6, "positives": 3, "negatives": 3},
        "partitions": [
            {"name": "fold 0", "patients": 3, "positives": 2, "negatives": 1, "train": 2, "val": 1},
            {"name": "fold 1", "patients": 3, "positives": 1, "negatives": 2, "train": 2, "val": 1},
        ],
    }


def _sections(flow: dict[str, Any]) -> dict[str, Any]:
    return {
        "flow": flow,
        "flow_png": PNG,
        "flow_problems": [],
        "table1_columns": ["fold 0", "fold 1"],
        "table1_rows": [{"characteristic": "patients", "values": [3, 3]}],
        "large_smd": cohort.LARGE_SMD,
        "random_partitions": True,
    }


def _cfg(**sections: Any) -> WorkflowConfig:
    return dataclasses.replace(WorkflowConfig(study="s", manifest=Path("manifest.csv")), **sections)


def _inputs(sections: dict[str, Any] | None = None, per_patient: pd.DataFrame | None = None) -> ReportInputs:
    return ReportInputs(
        study="s",
        run_id="r",
        scheme_text="2-fold",
        model_text="resnet10",
        metrics={"auc": 0.75, "n_patients": 6, "n_positive": 3},
        per_patient=per_patient if per_patient is not None else pd.DataFrame({"patient_id": ["P1"], "score": [0.5]}),
        split_summary=pd.DataFrame([{"fold": 0, "role": "test", "patients": 3, "positives": 2}]),
        excluded=pd.DataFrame(columns=["image_id", "reason", "message"]),
        fold_training={},
        n_images=6,
        roc_png=PNG,
        cohort=sections,
    )


# --------------------------------------------------------------------------- the redacted copy


def test_the_redacted_flow_diagram_draws_the_filter_as_a_digest() -> None:
    raw, shared = _flow(), cohort.redact_flow(_flow(), KEEP)
    assert all(s in "\n".join(figures.flow_texts(raw)) for s in SECRETS)  # the run folder's diagram
    drawn = "\n".join(figures.flow_texts(shared))
    assert [s for s in SECRETS if s in drawn] == []
    assert f"site in {{digest {redact.digest(list(SECRETS))}}}" in drawn
    # the digest is the one the redacted config shows for the same values
    assert redact.digest(list(SECRETS)) == redact.workflow({"filter": {"site": list(SECRETS)}})["filter"]["site"]
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text as text: what the figure really draws
        svg_raw, svg_shared = figures.flow_figure(raw)[1].decode(), figures.flow_figure(shared)[1].decode()
    assert SECRETS[0] in svg_raw
    assert [s for s in SECRETS if s in svg_shared] == []
    assert cohort.redact_flow({**raw, "filter": None}, KEEP)["filter"] is None


def test_the_redacted_report_shows_no_filter_value_in_the_checklist_or_the_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(filter=KEEP)
    facts = RunFacts(cfg, {"auc": 0.75}, {}, cohort=_sections(_flow()))
    inputs = dataclasses.replace(_inputs(_sections(_flow())), checklist=fill_checklist(facts))
    full = render_report(tmp_path, inputs)
    assert all(s in full for s in SECRETS)  # items 6b, 8 and 10 of the run folder's report
    drawn: list[dict[str, Any]] = []
    real = figures.flow_figure
    monkeypatch.setattr(figures, "flow_figure", lambda flow: drawn.append(flow) or real(flow))
    shared_inputs = build.redacted_inputs(inputs, facts)
    shared = render_report(tmp_path, shared_inputs, redact=True)
    assert [s for s in SECRETS if s in shared] == []
    assert shared.count(redact.digest(list(SECRETS))) == 3  # eligibility (TRIPOD 6b, CLAIM 8) and subsets
    assert len(drawn) == 1
    assert shared_inputs.cohort is not None
    assert shared_inputs.cohort["flow_png"] == real(drawn[0])[0]  # the embedded diagram is the redacted one
    assert [s for s in SECRETS if s in "\n".join(figures.flow_texts(drawn[0]))] == []
    assert shared_inputs.checklist is not None
    assert inputs.checklist is not None
    assert list(shared_inputs.checklist[1]["where"]) == list(inputs.checklist[1]["where"])


def test_a_redacted_report_of_an_unredacted_filter_is_refused(tmp_path: Path) -> None:
    facts = RunFacts(_cfg(filter=KEEP), {"auc": 0.75}, {}, cohort=_sections(_flow()))
    inputs = dataclasses.replace(_inputs(_sections(_flow())), checklist=fill_checklist(facts))
    with pytest.raises(ValueError, match="filter"):
        render_report(tmp_path, inputs, redact=True)
    redacted_flow = _sections(cohort.redact_flow(_flow(), KEEP))
    with pytest.raises(ValueError, match="checklist"):  # a redacted diagram beside the raw checklist
        render_report(tmp_path, dataclasses.replace(inputs, cohort=redacted_flow), redact=True)
    assert render_report(tmp_path, _inputs(None), redact=True)  # no filter: nothing to check


# --------------------------------------------------------------------------- checklist answers


def _answers(cfg: WorkflowConfig) -> dict[str, str]:
    _, table = fill_checklist(RunFacts(cfg, {"auc": 0.8}, {}))
    return {f"{r.guideline} {r.item}": f"{r.status}: {r.answer}" for r in table.itertuples()}


def test_a_holdout_with_seeds_averaged_is_an_ensemble() -> None:
    a = _answers(_cfg(validation=ValidationConfig(scheme="holdout"), train=TrainConfig(seeds=(0, 1, 2))))
    assert "mean over 3 members (1 repeat(s) of the splits × 3 training seed(s)" in a["CLAIM 2024 27"]
    assert "single model" not in a["CLAIM 2024 27"]
    assert a["CLAIM 2024 27"].startswith("from the run")
    assert "3 model(s) trained" in a["TRIPOD+AI 12c"]
    assert "averaged over 3 members" in a["CLAIM 2024 32"]
    assert "seeds 0, 1, 2" in a["CLAIM 2024 24"]
    none = _answers(
        _cfg(
            validation=ValidationConfig(scheme="holdout"),
            train=TrainConfig(seeds=(0, 1, 2)),
            evaluation=EvaluationConfig(ensemble="none"),
        )
    )
    assert none["CLAIM 2024 27"].startswith("not done in this run: none: the figures are the first of 3 members'")
    plain = _answers(_cfg(validation=ValidationConfig(scheme="holdout")))
    assert plain["CLAIM 2024 27"] == "not done in this run: a single model"
    assert "1 model trained" in plain["TRIPOD+AI 12c"]


def test_repeated_kfold_with_seeds_counts_every_member_and_averages_them() -> None:
    a = _answers(_cfg(validation=ValidationConfig(folds=2, repeats=3), train=TrainConfig(seeds=(0, 1))))
    assert (
        "12 models trained (2 folds × 6 members (3 repeat(s) of the splits × 2 training seed(s)))"
        in (a["TRIPOD+AI 12c"])
    )
    assert a["CLAIM 2024 25"] == a["TRIPOD+AI 12c"]
    assert "one fold model" not in a["CLAIM 2024 27"]
    assert "mean over 6 members" in a["CLAIM 2024 27"]
    assert "per fold of each member" in a["CLAIM 2024 26"]
    assert "scored by the 6 members' models that did not train on it" in a["TRIPOD+AI 12g"]
    plain = _answers(_cfg(validation=ValidationConfig(folds=5)))
    assert "5 models trained (5 folds)" in plain["TRIPOD+AI 12c"]
    assert "each patient is scored by one fold model" in plain["CLAIM 2024 27"]


def test_nested_cross_validation_is_described_as_nested() -> None:
    search = {"train.lr": (0.001, 0.0003), "model.arch": ("resnet10", "resnet18")}
    cfg = _cfg(validation=ValidationConfig(scheme="nested", folds=5, inner_folds=3), search=search)
    a = _answers(cfg)
    assert "no hyperparameter search" not in a["TRIPOD+AI 12c"]
    assert "hyperparameter search over 4 point(s) of train.lr, model.arch" in a["TRIPOD+AI 12c"]
    assert "65 models trained (5 outer folds × (4 search point(s) × 3 inner folds + 1 refit))" in a["CLAIM 2024 25"]
    assert "median of its inner folds' best epochs" in a["CLAIM 2024 26"]
    assert "refitted on all the outer fold's training patients" in a["CLAIM 2024 26"]
    assert "best validation auc per fold" not in a["CLAIM 2024 26"]
    assert "held-out test split" not in a["CLAIM 2024 32"]
    assert "outer-fold predictions of nested cross-validation" in a["CLAIM 2024 32"]
    no_search = _answers(dataclasses.replace(cfg, search={}))
    assert "20 models trained" in no_search["TRIPOD+AI 12c"]
    assert "without a search space" in no_search["TRIPOD+AI 12c"]
    assert "search point" not in no_search["CLAIM 2024 26"]
    repeated = _answers(dataclasses.replace(cfg, validation=dataclasses.replace(cfg.validation, repeats=2)))
    assert "130 models trained" in repeated["TRIPOD+AI 12c"]


def test_leave_one_group_out_counts_one_model_per_group() -> None:
    a = _answers(_cfg(validation=ValidationConfig(scheme="leave_one_group_out", group="site")))
    assert "one model trained per site value; no hyperparameter search" in a["TRIPOD+AI 12c"]


# --------------------------------------------------------------------------- report tables and rebuild


def test_a_long_per_patient_table_states_the_true_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(html, "MAX_PATIENT_ROWS", 3)
    pp = pd.DataFrame({"patient_id": [f"P{i}" for i in range(5)], "score": [0.1] * 5})
    page = render_report(tmp_path, _inputs(per_patient=pp))
    assert "<summary>5 patients (first 3 shown; every patient is in per_patient.csv)</summary>" in page
    assert len(re.findall(r"<td class=\"l\">P\d</td>", page)) == 3
    assert "<summary>2 patients</summary>" in render_report(tmp_path, _inputs(per_patient=pp.head(2)))


def test_a_skipped_decision_curve_draws_no_figure(tmp_path: Path) -> None:
    pp = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "label": ["1", "0", "1", "0"], "score": [3.0, 1, 2, 0]})
    skipped = {"skipped": "the scores are not probabilities"}
    figs = build._curve_figures(tmp_path, pp, build.ClassColumn("label", "1"), {"decision_curve": skipped}, "t")
    assert figs.decision is None
    assert figs.calibration is None


def test_the_rebuilt_report_lists_no_stale_pdf_and_prints_a_missing_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pipeline.study

    run = tmp_path / "run"
    run.mkdir()
    (run / "report.pdf").write_bytes(b"%PDF old")
    seen: list[list[str]] = []

    def finalize(run_dir: Path) -> dict[str, Any]:  # the report's file list is taken here
        seen.append(sorted(p.name for p in run_dir.iterdir()))
        (run_dir / "report.html").write_text("<html></html>")
        return {"auc": 1.0, "auc_ci_low": None, "auc_ci_high": None}

    monkeypatch.setattr(pipeline.study, "check_run_complete", lambda run_dir: None)
    monkeypatch.setattr(pipeline.study, "finalize_run", finalize)
    assert main(["report", str(run)]) == 0
    assert seen == [[]]
    out = capsys.readouterr().out
    assert "per-patient AUC 1.000 [95% CI –, –]" in out
    assert "removed" in out
    assert not (run / "report.pdf").exists()


def test_the_checklist_names_pretrained_weights_by_their_file_name_only() -> None:
    cfg = _cfg()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained="/secret/site/weights.pt"))
    answers = " ".join(_answers(cfg).values())
    assert "from local weights weights.pt" in answers
    assert "/secret" not in answers
