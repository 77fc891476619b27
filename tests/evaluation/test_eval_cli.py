"""``cohortnet evaluate``: exit codes, every problem listed, files written, table printed."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import COMMANDS
from pipeline.commands import evaluate
from pipeline.errors import CohortnetError

from .conftest import DATA, probability_table


def run_cli(argv: list[str]) -> int:
    """Run the command as ``pipeline.cli.main`` does: parse, run, map CohortnetError to its exit code.

    Goes through cli.main itself when every registered command module exists (other commands are
    written by other people and may not exist yet in this checkout).
    """
    if all(importlib.util.find_spec(f"pipeline.commands.{name}") for name in COMMANDS):
        from pipeline.cli import main

        return main(["evaluate", *argv])
    parser = argparse.ArgumentParser(prog="cohortnet evaluate")
    evaluate.configure(parser)
    try:
        return evaluate.run(parser.parse_args(argv))
    except CohortnetError as exc:
        logging.getLogger("pipeline").error("%s", exc)
        return exc.exit_code


def test_asah_metrics_json_fields_and_printed_table(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(DATA / "aSAH.csv"), "--label-col", "outcome", "--score-col", "wfns", "--positive", "Poor"]
    code = run_cli([*argv, "--compare", "s100b", "--ci-method", "delong_wald", "--out", str(out)])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "auc",
        "auc_ci_low",
        "auc_ci_high",
        "ci_method",
        "n",
        "n_positive",
        "threshold",
        "sensitivity",
    ):
        assert key in m
    assert (m["n"], m["n_positive"]) == (113, 41)
    assert m["auc"] == pytest.approx(0.823678861788618, rel=1e-12)
    comp = m["comparison"]
    assert {"auc_difference", "z", "p_value", "ci_low", "ci_high"} <= set(comp)
    # pROC roc.test(r.wfns, r.s100b): Z = 2.20898359144091, p = 0.0271757822291882 (test-roc.test.R)
    assert comp["z"] == pytest.approx(2.20898359144091, rel=1e-10)
    assert comp["p_value"] == pytest.approx(0.0271757822291882, rel=1e-10)
    roc = pd.read_csv(out / "roc.csv")
    assert list(roc.columns) == ["threshold", "fpr", "tpr"]
    assert (out / "roc_s100b.csv").is_file()
    printed = capsys.readouterr().out
    assert "AUC   0.824" in printed
    assert "Z = 2.209" in printed


def test_every_problem_is_listed_and_exit_code_is_2(tmp_path, caplog):
    bad = pd.DataFrame({"y": ["a", "b", "c", "a"], "score": [0.2, "high", 0.5, None], "site": list("xxyy")})
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    argv = [str(path), "--label-col", "y", "--score-col", "score", "--compare", "missing_col"]
    argv += [
        "--positive",
        "z",
        "--subgroup-col",
        "site",
        "nosuch",
        "--threshold-rule",
        "best",
        "--bootstrap",
        "10",
    ]
    with caplog.at_level(logging.ERROR, logger="pipeline"):
        code = run_cli(argv)
    assert code == 2
    text = caplog.text
    for expected in (
        "'missing_col' not found",
        "'nosuch' not found",
        "non-numeric value(s) (row 3: 'high')",
        "1 empty value(s)",
        "positive label 'z' does not occur",
        "unknown threshold rule 'best'",
        "--bootstrap must be at least 100",
    ):
        assert expected in text
    assert "Traceback" not in text


def test_missing_file_is_a_validation_error(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="pipeline"):
        code = run_cli([str(tmp_path / "nope.csv"), "--label-col", "y", "--score-col", "s"])
    assert code == 2
    assert "table not found" in caplog.text


def test_threshold_split_col_locks_on_val_rows_and_default_out_folder(tmp_path):
    df = probability_table(100, 2, seed=3)
    path = tmp_path / "preds.csv"
    df.to_csv(path, index=False)
    argv = [str(path), "--label-col", "label", "--score-col", "score", "--group-col", "patient_id"]
    argv += ["--threshold-split-col", "split", "--fold-col", "fold", "--subgroup-col", "site"]
    assert run_cli([*argv, "--bootstrap", "200", "--ci-method", "bootstrap"]) == 0
    m = json.loads((tmp_path / "preds_evaluation" / "metrics.json").read_text())
    assert m["threshold_source"] == "validation"
    assert m["n_patients"] == (df.loc[df["split"] == "test", "patient_id"].nunique())
    assert m["threshold_validation_n"] == df.loc[df["split"] == "val", "patient_id"].nunique()
    assert m["folds"]["n_folds"] == 4
    assert m["image_level"]["ci_method"] == "cluster_bootstrap_bca"
    assert m["ci_method"] == "bootstrap_bca"


def test_help_lists_the_issue_flags():
    parser = argparse.ArgumentParser()
    evaluate.configure(parser)
    text = parser.format_help()
    for flag in (
        "--label-col",
        "--score-col",
        "--positive",
        "--compare",
        "--group-col",
        "--subgroup-col",
        "--out",
    ):
        assert flag in text


def test_command_module_interface():
    assert callable(evaluate.configure)
    assert callable(evaluate.run)
    assert Path(evaluate.__file__).name == "evaluate.py"


def test_patient_in_both_validation_and_test_rows_is_a_problem(tmp_path, caplog):
    df = probability_table(30, 2, seed=4)
    df.loc[df.index[0], "split"] = "val"  # P000's first image in val, its second in test
    df.loc[df.index[1], "split"] = "test"
    path = tmp_path / "leak.csv"
    df.to_csv(path, index=False)
    argv = [str(path), "--label-col", "label", "--score-col", "score", "--group-col", "patient_id"]
    with caplog.at_level(logging.ERROR, logger="pipeline"):
        assert run_cli([*argv, "--threshold-split-col", "split"]) == 2
    assert "1 patient(s) have rows in both the validation and the evaluated part (leakage)" in caplog.text
