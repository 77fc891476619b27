"""The report says what the run did and leaves out what must stay in the run folder: the redacted
copy's workflow filter (diagram and checklist), the checklist's answers for members and nested
cross-validation, the per-patient table's count, the rebuilt report's file list and summary, and a
skipped decision curve. Every input is made by hand: nothing is trained."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html as htmllib
import json
import re
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.config import EvaluationConfig, TrackingConfig, TrainConfig, ValidationConfig, WorkflowConfig
from pipeline.reporting import build, cohort, figures, html, redact
from pipeline.reporting.checklist import RunFacts, fill_checklist
from pipeline.reporting.html import ReportInputs, render_report

PNG = b"\x89PNG not really"
SECRETS = ("St Marys Hospital", "Kings College Hospital", "Royal Infirmary")
KEEP = {"site": SECRETS}
SALT = b"a fixed key for the tests"


def _flow() -> dict[str, Any]:
    """A flow as ``cohort.flow_counts`` gives it, from a run whose filter kept three sites."""
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


def _logo_folder(run: Path, sites: tuple[str, ...] = SECRETS) -> WorkflowConfig:
    """A run folder's cohort records, written by hand: two patients of each site (three sites
    unless told), each site held out by one fold (leave-one-site-out) and kept by the workflow's
    filter; site is a covariate and a subgroup. Returns the run's workflow."""
    run.mkdir()
    n = 2 * len(sites)
    patients = pd.DataFrame(
        {"patient_id": [f"P{i}" for i in range(n)], "target": [i % 2 for i in range(n)], "sex": list("FM" * len(sites))}
    )
    patients["site"] = [sites[i // 2] for i in range(n)]
    patients.to_csv(run / "patients.csv", index=False)
    pd.DataFrame({"image_id": [f"P{i}#1" for i in range(6)]}).to_csv(run / "data_hashes.csv", index=False)
    rows = []
    for fold, site in enumerate(sites):
        for pid, own in zip(patients["patient_id"], patients["site"], strict=True):
            role = "test" if own == site else "val" if pid in ("P0", "P2") and own != site else "train"
            rows.append({"fold": fold, "patient_id": pid, "role": role, "group": site})
    pd.DataFrame(rows).to_csv(run / "splits.csv", index=False)
    source = {"manifest": {"file": "manifest.csv", "images": 10, "patients": 10}, "scan": None}
    source |= {"filter": {"rule": cohort.filter_rule({"site": sites}), "images": 4, "patients": 4}}
    (run / "flow.json").write_text(json.dumps({**source, "eligible": {"images": n, "patients": n}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"study": "s", "filter": {"site": list(sites)}}))
    return _cfg(
        filter={"site": sites},
        validation=ValidationConfig(scheme="leave_one_group_out", group="site"),
        evaluation=EvaluationConfig(subgroups=("site", "sex")),
        report=dataclasses.replace(WorkflowConfig(study="s", manifest=Path("m")).report, covariates=("site", "sex")),
    )


def _logo_metrics(sites: tuple[str, ...] = SECRETS) -> dict[str, Any]:
    groups = [{"value": s, "n": 2, "n_positive": 1, "auc": 1.0, "warnings": [f"subgroup site={s} has 1 positive"]}
              for s in sorted(sites)]  # fmt: skip
    sexes = [{"value": v, "n": len(sites), "n_positive": 0, "auc": None} for v in "FM"]
    per_fold = [{"fold": f, "n": 2, "n_positive": 1, "auc": 1.0} for f in range(len(sites))]
    return {
        "auc": 0.75,
        "n_patients": 6,
        "n_positive": 3,
        "subgroups": {"site": {"groups": groups}, "sex": {"groups": sexes}},
        "folds": {"per_fold": per_fold},
        "warnings": [g["warnings"][0] for g in groups] + ["subgroup sex=F has only one class"],
    }


def _logo_inputs(run: Path, cfg: WorkflowConfig, sites: tuple[str, ...] = SECRETS) -> tuple[ReportInputs, RunFacts]:
    metrics = _logo_metrics(sites)
    sections = build.cohort_sections(run, cfg)
    facts = RunFacts(cfg, metrics, {}, cohort=sections)
    training = {str(f): {"best_epoch": 1, "best_val_auc": 1.0, "held_out": s} for f, s in enumerate(sites)}
    inputs = dataclasses.replace(
        _inputs(sections), metrics=metrics, fold_training=training, checklist=fill_checklist(facts)
    )
    return inputs, facts


def _clear(page: str) -> list[str]:
    """The secrets a page shows in clear (its figures' base64 data aside, its entities decoded)."""
    text = htmllib.unescape(re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", page))
    return [s for s in SECRETS if s.lower() in text.lower()]


def test_the_redacted_flow_diagram_draws_the_filter_as_labels() -> None:
    redaction = redact.Redaction.of(KEEP, salt=SALT)
    raw, shared = _flow(), cohort.redact_flow(_flow(), redaction.keep(KEEP))
    assert all(s in "\n".join(figures.flow_texts(raw)) for s in SECRETS)  # the run folder's diagram
    drawn = "\n".join(figures.flow_texts(shared))
    assert [s for s in SECRETS if s in drawn] == []
    assert "site in {site 1, site 2, site 3}" in drawn  # in the labels' order, whatever the filter's
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text as text: what the figure really draws
        svg_raw, svg_shared = figures.flow_figure(raw)[1].decode(), figures.flow_figure(shared)[1].decode()
    assert SECRETS[0] in svg_raw
    assert [s for s in SECRETS if s in svg_shared] == []
    assert cohort.redact_flow({**raw, "filter": None}, KEEP)["filter"] is None


def test_the_value_map_numbers_by_a_keyed_hash_and_replaces_whole_words() -> None:
    values = {"site": [*SECRETS, "unknown", ""], "sex": ["F", "M"]}
    redaction = redact.Redaction.of(values, salt=SALT)
    assert sorted(redaction.labels["site"].values()) == ["site 1", "site 2", "site 3"]  # no label for no value
    orders = {tuple(redact.Redaction.of(values, salt=bytes([k])).labels["site"]) for k in range(20)}
    assert len(orders) > 1  # the numbering follows the key, not the values' alphabetical order
    label = redaction.labels["site"][SECRETS[0]]
    assert redaction.text(f"subgroup site={SECRETS[0]} has 1 positive") == f"subgroup site={label} has 1 positive"
    assert redaction.text(f"at {SECRETS[0].upper()}.") == f"at {label}."  # any case, as a whole word
    assert redaction.text(f"{SECRETS[0]}s Annex") == f"{SECRETS[0]}s Annex"  # part of a longer word: not the value
    female = redaction.labels["sex"]["F"]
    assert redaction.text("subgroup sex=F; F and M") == f"subgroup sex={female}; F and M"  # short: where it stands
    assert redaction.found(f"<td>{SECRETS[1].lower()}</td> M") == ["site"]
    logo = _cfg(filter={"site": ("a",)}, validation=ValidationConfig(scheme="leave_one_group_out", group="hospital"))
    assert redact.sensitive_columns(logo) == ("site", "hospital")
    # the official split and the label name no one, and the report spells them: never labelled
    cv = _cfg(filter={"split": ("train", "val"), "label": ("0", "1"), "scanner": ("X1",)})
    assert redact.sensitive_columns(cv) == ("scanner",)
    assert redact.leaf("filter.site", list(SECRETS)) == "3 values"  # a parameter: their number only


def test_the_redacted_report_of_a_leave_one_site_out_study_names_no_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    cfg = _logo_folder(run)
    inputs, facts = _logo_inputs(run, cfg)
    full = render_report(run, inputs)
    assert _clear(full) == list(SECRETS)  # the run folder's report names them
    drawn: list[dict[str, Any]] = []
    real = figures.flow_figure
    monkeypatch.setattr(figures, "flow_figure", lambda flow: drawn.append(flow) or real(flow))
    redaction = build.redaction_of(run, cfg, inputs.metrics)
    shared_inputs = build.redacted_inputs(run, inputs, facts, redaction)
    shared = render_report(run, shared_inputs, redact=True)
    assert _clear(shared) == []
    labels = redaction.labels["site"]
    assert sorted(labels) == sorted(SECRETS)
    assert "site in {site 1, site 2, site 3}" in shared  # the filter's rule (flow diagram, checklist)
    for fold, site in enumerate(SECRETS):
        assert f"{fold}: {labels[site]} held out" in shared  # the fold table
        assert f"<th>fold {fold}: {labels[site]}</th>" in shared  # Table 1's columns
        assert f"fold {fold}: {labels[site]}: 2 tested" in shared  # the checklist's counts (TRIPOD 21)
        assert f"subgroup site={labels[site]} has 1 positive" in shared  # the warnings
        assert f'<td class="l">{labels[site]}</td><td>2</td>' in shared  # the subgroup table
    assert "subgroup sex=F has only one class" in shared  # other columns keep their values
    assert [s for s in SECRETS if s in "\n".join(figures.flow_texts(drawn[-1]))] == []  # the diagram, redrawn
    assert [p["name"] for p in drawn[-1]["partitions"]] == [f"fold {f}: {labels[s]}" for f, s in enumerate(SECRETS)]
    assert shared_inputs.cohort is not None
    assert shared_inputs.cohort["flow_png"] == real(drawn[-1])[0]  # the embedded diagram is the redacted one
    assert shared_inputs.checklist is not None
    assert inputs.checklist is not None
    assert list(shared_inputs.checklist[1]["where"]) == list(inputs.checklist[1]["where"])
    digest = hashlib.sha256(json.dumps(list(SECRETS)).encode()).hexdigest()[:16]
    assert digest not in shared  # no unkeyed hash of the values to recompute either
    assert "filter:\n  site:\n  - site 1\n  - site 2\n  - site 3\n" in shared  # the resolved workflow
    assert (run / "table1.csv").read_text().count(SECRETS[0]) >= 1  # the run folder's records keep the values


def test_a_redacted_report_without_its_value_map_or_with_a_value_is_refused(tmp_path: Path) -> None:
    facts = RunFacts(_cfg(filter=KEEP), {"auc": 0.75}, {}, cohort=_sections(_flow()))
    inputs = dataclasses.replace(_inputs(_sections(_flow())), checklist=fill_checklist(facts))
    redaction = redact.Redaction.of(KEEP, salt=SALT)
    with pytest.raises(ValueError, match="value map"):
        render_report(tmp_path, inputs, redact=True)
    with pytest.raises(ValueError, match="filter"):
        render_report(tmp_path, dataclasses.replace(inputs, redaction=redaction), redact=True)
    redacted_flow = _sections(cohort.redact_flow(_flow(), redaction.keep(KEEP)))
    with pytest.raises(ValueError, match="checklist"):  # a redacted diagram beside the raw checklist
        render_report(tmp_path, dataclasses.replace(inputs, cohort=redacted_flow, redaction=redaction), redact=True)
    # the last check: any value left in the page's text, whatever built it
    leaky = dataclasses.replace(_inputs(redacted_flow), redaction=redaction, study=f"{SECRETS[2]} study")
    with pytest.raises(redact.RedactionError, match=re.escape("column(s) site in clear")) as refused:
        render_report(tmp_path, leaky, redact=True)
    assert [s for s in SECRETS if s in str(refused.value)] == []  # the error names the column, not the value
    assert render_report(tmp_path, dataclasses.replace(_inputs(None), redaction=redact.Redaction()), redact=True)


def test_the_write_time_check_reads_the_text_not_the_figures() -> None:
    redaction = redact.Redaction.of({"site": ["St Mary's Hospital", "Royal Infirmary"]}, salt=SALT)
    figure = "data:image/png;base64," + base64.b64encode(b"Royal Infirmary").decode()
    html.check_redacted_page(f'<img src="{figure}"><p>site 1 and site 2; 0.001</p>', redaction)
    with pytest.raises(redact.RedactionError, match="site"):
        html.check_redacted_page("<p>at st mary&#39;s hospital</p>", redaction)  # an entity is the character
    with pytest.raises(redact.RedactionError, match=re.escape("report_redacted.html is not written")):
        html.check_redacted_page('<td title="fold 0: Royal Infirmary">', redaction)


def _shared_copy(run: Path, sites: tuple[str, ...], **changes: Any) -> tuple[str | None, redact.Redaction]:
    """The redacted copy that ``build.write_redacted`` writes for a hand-built leave-one-site-out
    folder of ``sites`` (tracking on; ``changes``: to the inputs), or None when it wrote none; and
    the value map it used (the build's own, drawn under a spy)."""
    cfg = dataclasses.replace(_logo_folder(run, sites), tracking=TrackingConfig(mlflow="local"))
    inputs, facts = _logo_inputs(run, cfg, sites)
    used: list[redact.Redaction] = []
    real = build.redaction_of

    def spy(*args: Any) -> redact.Redaction:
        used.append(real(*args))
        return used[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "redaction_of", spy)
        build.write_redacted(run, dataclasses.replace(inputs, **changes), facts)
    path = run / redact.REDACTED_REPORT_FILE
    return (path.read_text(encoding="utf-8") if path.is_file() else None), used[0]


def _shown(page: str, value: str) -> bool:
    """Whether ``value`` stands in ``page`` where the data put it: a fold's held-out group (the fold
    table, Table 1's columns, the checklist's counts), a Table 1 row, a subgroup row, the filter's
    rule, a ``site=<value>`` warning."""
    text, v = redact.page_text(page).lower(), re.escape(value.lower())
    places = (rf"\d+: {v} held out", rf"fold \d+: {v}(?!\w)", rf"site={v}(?!\w)", rf"[{{,] ?{v}[,}}]")
    rows = (f'<td class="l">site</td><td class="l">{value.lower()}</td>', f'1.4rem">{value.lower()}</td>')
    return any(re.search(p, text) for p in places) or any(r in page.lower() for r in rows)


def test_sites_named_by_ordinary_words_are_labelled_and_the_copy_is_written(tmp_path: Path) -> None:
    # leave-one-site-out over sites whose names are also the report's words ("the test set",
    # "internal validation", the split summary's "test" role): the old check refused every such copy
    sites = ("Main", "North", "Test", "Internal")
    page, redaction = _shared_copy(tmp_path / "run", sites, study="internal-external validation at Main")
    assert page is not None, "the copy was refused"
    assert (tmp_path / "run" / redact.REDACTED_METRICS_FILE).is_file()
    labels = redaction.labels["site"]
    assert sorted(labels.values()) == ["site 1", "site 2", "site 3", "site 4"]
    text = redact.page_text(page)
    for fold, site in enumerate(sites):
        assert not _shown(page, site), site
        assert f"{fold}: {labels[site]} held out" in text  # the fold table
        assert f'<td class="l">{labels[site]}</td><td>2</td>' in page  # the subgroup table
        assert f"subgroup site={labels[site]} has 1 positive" in text  # the warnings
    assert f"<th>fold 0: {labels['Main']}</th>" in page  # Table 1's columns
    assert "site in {site 1, site 2, site 3, site 4}" in text  # the filter's rule
    assert [s for s in ("Main", "North") if re.search(rf"\b{s}\b", text, re.IGNORECASE)] == []  # anywhere
    # the report's own words stand: the study's prose, the scheme's, the split summary's role
    assert f"internal-external validation at {labels['Main']}" in text
    assert "each site is the test set of one fold" in text
    assert '<td class="l">test</td>' in page
    shared = json.loads((tmp_path / "run" / redact.REDACTED_METRICS_FILE).read_text())
    assert sorted(g["value"] for g in shared["subgroups"]["site"]["groups"]) == sorted(labels.values())
    assert [redact.ordinary(s) for s in sites] == [False, False, True, True]  # what tells them apart


def test_values_that_are_the_metrics_keys_rename_no_key(tmp_path: Path) -> None:
    redaction = redact.Redaction.of({"site": ["images", "folds", "Warnings"]}, salt=SALT)
    tree = {"images": 3, "folds": {"per_fold": [{"fold": 0, "held_out": "images"}]}, "warnings": ["site=folds"]}
    out = redaction.json(tree)
    assert list(out) == ["images", "folds", "warnings"]  # the keys as they are
    assert out["warnings"] == [f"site={redaction.labels['site']['folds']}"]  # a value where it stands
    metrics = redaction.metrics({**_logo_metrics(("images", "folds", "Warnings")), "images": 6})
    assert {"images", "folds", "warnings", "subgroups", "auc"} <= set(metrics)
    assert sorted(g["value"] for g in metrics["subgroups"]["site"]["groups"]) == ["site 1", "site 2", "site 3"]
    # and the whole copy: written, its metrics' keys intact
    page, _ = _shared_copy(tmp_path / "run", ("images", "folds", "auc"))
    assert page is not None
    shared = json.loads((tmp_path / "run" / redact.REDACTED_METRICS_FILE).read_text())
    assert {"auc", "folds", "subgroups", "warnings"} <= set(shared)


def test_a_failing_copy_is_logged_by_its_type_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> str:
        raise KeyError("Kings College Hospital")

    monkeypatch.setattr(build, "render_report", broken)
    with caplog.at_level("ERROR", logger=build.__name__):
        page, _ = _shared_copy(tmp_path / "run", SECRETS)
    assert page is None  # the study stands: no copy, no exception
    assert (tmp_path / "run" / redact.REDACTED_METRICS_FILE).is_file()  # the other copy is its own
    assert "KeyError" in caplog.text
    assert "site" in caplog.text
    assert [s for s in SECRETS if s in caplog.text] == []  # never the value


def test_sites_already_named_like_labels_get_labels_of_another_stem(tmp_path: Path) -> None:
    sites = ("Site 1", "Site 2", "site 3")
    page, redaction = _shared_copy(tmp_path / "run", sites)
    assert page is not None, "the copy was refused"
    labels = redaction.labels["site"]
    assert sorted(labels.values()) == ["site #1", "site #2", "site #3"]
    assert {v.lower() for v in labels.values()}.isdisjoint(s.lower() for s in sites)
    text = redact.page_text(page)
    for site in sites:
        assert f"{labels[site]} held out" in text
        assert not re.search(rf"(?<![\w#]){site}(?!\w)", text.replace("site 1, site 2, …", ""), re.IGNORECASE)
    # the stem is per column and only when needed; a label never spells another column's value either
    other = redact.Redaction.of({"site": ["A1", "B2"], "scanner": ["site 1", "X"]}, salt=SALT)
    assert sorted(other.labels["site"].values()) == ["site #1", "site #2"]
    assert sorted(other.labels["scanner"].values()) == ["scanner 1", "scanner 2"]
    assert other.found(" ".join(v for labels in other.labels.values() for v in labels.values())) == []


def test_a_value_outside_the_vocabulary_in_an_unknown_field_is_still_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sites = ("Kings College Hospital", "Test", "North")
    assert not redact.ordinary(sites[0])
    real = build.redacted_inputs

    def leaky(*args: Any) -> ReportInputs:  # a field the map does not know of, filled after it ran
        return dataclasses.replace(real(*args), model_text="resnet10 pretrained at Kings College\nHospital")

    monkeypatch.setattr(build, "redacted_inputs", leaky)
    with caplog.at_level("ERROR", logger=build.__name__):
        page, _ = _shared_copy(tmp_path / "run", sites)
    assert page is None  # refused
    assert "column(s) site in clear" in caplog.text
    assert [s for s in sites if s in caplog.text] == []
    redaction = redact.Redaction.of({"site": sites}, salt=SALT)
    leaks = (
        '<td title="KINGS COLLEGE HOSPITAL">x</td>',
        '<img alt="kings college hospital" src="x">',
        "<p>at Kings&#32;College Hospital</p>",  # an entity is the character
        "<p><b>Kings</b> College\n Hospital</p>",  # across tags and lines
        "<td>1</td><td>Kings College Hospital</td>",
    )
    for where in leaks:
        with pytest.raises(redact.RedactionError):
            html.check_redacted_page(where, redaction)
    # no tag, style, script or figure data, nor the report's own words, is read as a value
    html.check_redacted_page(
        '<style>.test { north: 0 }</style><script>var north = "test";</script><p class="north">the test patients</p>',
        redaction,
    )


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
