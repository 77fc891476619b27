"""The command line on bad input and on bugs: exit 2 with the file and the problem named for bad
arguments (predict, export, report), one redacted line (never a raw traceback) for an unexpected
exception, a command-neutral interrupt, and a README command table that lists every option."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from volumes import blob_volume, write_nifti

from pipeline.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def write_cohort(root: Path, ids: list[str], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for i, pid in enumerate(ids):
        rel = f"images/{pid}.nii.gz"
        write_nifti(root / rel, blob_volume(rng, (7, 8, 9), bool(i % 2)))
        rows.append({"patient_id": pid, "image": rel, "label": i % 2})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@dataclasses.dataclass(frozen=True)
class Study:
    run: Path
    archive: Path
    manifest: Path  # a new cohort (no study patient), to predict


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """The smallest study that trains (8 patients, 2 folds, 1 epoch, 8^3 voxels), its export and a
    new cohort."""
    root = tmp_path_factory.mktemp("cli_predict")
    write_cohort(root / "cohort", [f"S{k:03d}" for k in range(8)], seed=0)
    workflow = {
        "study": "tiny",
        "manifest": "cohort/manifest.csv",
        "task": {"label": "label", "positive": 1},
        "model": {"arch": "resnet10", "spatial_dims": 3, "stem_stride": 2},
        "data": {"spatial_size": [8, 8, 8], "workers": 0},
        "train": {"epochs": 1, "batch_size": 4, "seed": 0},
        "validation": {"scheme": "kfold", "folds": 2},
        "evaluation": {"n_bootstrap": 200},
        "report": {"explain": {"cases": 0}},
        "output_dir": "reports",
    }
    (root / "wf.yaml").write_text(yaml.safe_dump(workflow, sort_keys=False))
    assert main(["run", str(root / "wf.yaml"), "--run-id", "r"]) == 0
    run = root / "reports" / "tiny" / "r"
    archive = root / "model.zip"
    assert main(["export", str(run), str(archive)]) == 0
    manifest = write_cohort(root / "new", [f"N{k:03d}" for k in range(4)], seed=1)
    return Study(run, archive, manifest)


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def predict(*args: str) -> int:
    return main(["predict", *args, "--workers", "0", "--no-progress"])


# --------------------------------------------------------------------------- 1: bugs and interrupts


def test_an_unexpected_exception_is_one_redacted_line_and_its_traceback_only_with_v(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.privacy import register_root

    data = tmp_path / "export"
    register_root(data)
    patient_path = f"{data}/SMITH_JOHN/ct.nii.gz"

    def boom(args: argparse.Namespace) -> int:
        raise KeyError(f"cannot open {patient_path}")

    monkeypatch.setattr("pipeline.commands.report.run", boom)
    assert main(["report", str(tmp_path)]) == 1
    err = _err(capsys)
    assert "internal error: KeyError:" in err
    assert "rerun with -v for the traceback" in err
    assert "<path>" in err
    assert "SMITH_JOHN" not in err
    assert main(["-v", "report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err  # the traceback, through the redacting logger
    assert "in boom" in err
    assert "SMITH_JOHN" not in err
    assert "rerun with -v" not in err


@pytest.mark.parametrize(
    ("command", "argv", "kept"),
    [
        ("scan", ["scan", "x", "--out", "m.csv"], None),
        ("evaluate", ["evaluate", "t.csv", "--label-col", "y", "--score-col", "s"], None),
        ("convert", ["convert", "a", "b.nii.gz"], None),
        ("run", ["run", "w.yaml"], "run folder"),
        ("predict", ["predict", "m.zip", "i.csv", "--out", "o"], "--out folder"),
    ],
)
def test_an_interrupt_says_what_is_kept_only_where_something_is(
    command: str,
    argv: list[str],
    kept: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(f"pipeline.commands.{command}.run", interrupted)
    assert main(argv) == 130
    err = _err(capsys)
    assert "interrupted" in err
    if kept is None:
        assert "kept" not in err
        assert "run folder" not in err
    else:
        assert kept in err
        assert "resumes" in err


# --------------------------------------------------------------------------- 2-4, 7: predict arguments


def test_device_cuda_without_cuda_names_the_option(
    study: Study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert predict(str(study.run), str(study.manifest), "--out", str(tmp_path / "o"), "--device", "cuda") == 2
    err = _err(capsys)
    assert "--device cuda: no CUDA device is available" in err
    assert "train.device" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--chunk", "0"], "--chunk must be at least 1 (images per part file), got 0"),
        (["--chunk", "-5"], "--chunk must be at least 1 (images per part file), got -5"),
        (["--workers", "-1"], "--workers must be 0 (preprocess in this process) or more, got -1"),
        (["--folds", "abc"], "--folds must be all, best or a fold number, got 'abc'"),
        (["--folds", "7"], "--folds 7: the model has no fold 7 (its folds: [0, 1])"),
    ],
)
def test_out_of_range_predict_options_are_refused(
    study: Study, tmp_path: Path, option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    assert main(["predict", str(study.run), str(study.manifest), "--out", str(out), "--no-progress", *option]) == 2
    assert message in _err(capsys)
    assert not out.exists()


def test_an_out_that_is_a_file_is_refused_up_front(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.csv"
    out.write_text("mine\n")
    assert predict(str(study.archive), str(study.manifest), "--out", str(out)) == 2
    assert f"{out} exists and is not a folder" in _err(capsys)
    assert out.read_text() == "mine\n"


def test_a_missing_model_is_bad_input(study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict(str(tmp_path / "nope.zip"), str(study.manifest), "--out", str(tmp_path / "o")) == 2
    assert f"{tmp_path / 'nope.zip'}: no such run folder or model archive" in _err(capsys)


def test_options_that_would_be_ignored_are_refused(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "key"
    key.write_text("k" * 32)
    out = str(tmp_path / "o")
    model, manifest = str(study.run), str(study.manifest)
    assert predict(model, manifest, "--out", out, "--pseudonymize-key-file", str(key)) == 2
    assert "--pseudonymize-key-file applies only when INPUT is a folder to scan" in _err(capsys)
    folder = str(study.manifest.parent)
    assert predict(model, folder, "--out", out, "--pseudonymize-key-file", str(tmp_path / "none")) == 2
    assert f"--pseudonymize-key-file {tmp_path / 'none'}: no such file" in _err(capsys)
    assert predict(model, manifest, "--out", out, "--dask-shards", "4") == 2
    assert "--dask-shards needs --dask" in _err(capsys)
    assert main(["predict", model, manifest, "--merge", str(tmp_path / "s0"), "--out", out]) == 2
    assert "--merge joins finished shard folders into --out and takes nothing else: drop the model and input" in (
        _err(capsys)
    )
    assert main(["predict", "--merge", str(tmp_path / "s0"), "--folds", "1", "--out", out]) == 2
    assert "drop --folds" in _err(capsys)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- 8: the cohort's folders are redacted


def test_a_reader_message_naming_a_patient_named_folder_is_redacted(
    study: Study,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pipeline.io import loader
    from pipeline.privacy import registered_roots

    cohort = tmp_path / "DOE_JANE_export"
    shutil.copytree(study.manifest.parent, cohort)
    read = loader._load_nifti

    def chatty(path: Path, *args: Any) -> Any:  # as nibabel or pydicom would: the full path
        logging.getLogger("nibabel.chatty").error("odd header in %s", path)
        return read(path, *args)

    monkeypatch.setattr(loader, "_load_nifti", chatty)
    monkeypatch.chdir(cohort)  # the manifest named relatively: its folder is registered as an absolute path
    assert predict(str(study.run), "manifest.csv", "--out", str(tmp_path / "o")) == 0
    shown = _err(capsys) + caplog.text
    assert "odd header in <path>" in shown
    assert "DOE_JANE" not in shown
    assert "." not in registered_roots(), "a relative root would redact every '.' of every message"


# --------------------------------------------------------------------------- 5: export


def test_export_problems_exit_2_naming_the_file(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.zip"
    assert main(["export", "--verify", str(missing)]) == 2
    err = _err(capsys)
    assert f"model archive {missing}" in err
    assert "no such file" in err
    assert "not a zip file" not in err
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(study.archive.read_bytes()[:2000])
    plain = tmp_path / "plain.zip"
    plain.write_text("not a zip")
    for bad in (truncated, plain):
        assert main(["export", "--verify", str(bad)]) == 2
        err = _err(capsys)
        assert f"model archive {bad}" in err
        assert "not a zip file" in err
    assert main(["export", str(study.run)]) == 2
    assert "export takes RUN_DIR and the archive to write" in _err(capsys)
    assert main(["export", "--verify", str(study.archive), str(plain)]) == 2
    assert "--verify takes one archive" in _err(capsys)
    assert main(["export", str(tmp_path / "run1"), str(tmp_path / "m.zip")]) == 2
    assert f"{tmp_path / 'run1'}: no such run folder" in _err(capsys)
    assert main(["export", "--verify", str(study.archive)]) == 0


# --------------------------------------------------------------------------- 6-7: report


def test_report_of_a_missing_folder_and_a_browser_without_pdf(
    study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = _err(capsys)
    assert f"{tmp_path / 'nope'}: no such run folder" in err
    assert "not a finished run" not in err
    before = (study.run / "report.html").stat().st_mtime_ns
    assert main(["report", str(study.run), "--browser", "chromium"]) == 2
    assert "--browser is the Chromium for --pdf" in _err(capsys)
    assert (study.run / "report.html").stat().st_mtime_ns == before  # nothing rebuilt


# --------------------------------------------------------------------------- 9: README


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [
        o
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        for o in a.option_strings
    ]


def _readme_command_rows(names: set[str]) -> dict[str, str]:
    """README's command table: command -> its rows' text ("" for the row of the global options)."""
    rows: dict[str, str] = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `cohortnet"):
            continue
        first = line.split("` |", 1)[0]
        named = [n for n in re.findall(r"`cohortnet ([a-z]+)", first) if n in names] or [""]
        for name in set(named):
            rows[name] = rows.get(name, "") + line
    return rows


def test_readme_command_table_lists_every_option_of_every_command() -> None:
    commands = _subcommands()
    rows = _readme_command_rows(set(commands) - {""})
    missing = {}
    for name, parser in commands.items():
        assert name in rows, f"README's command table has no row for {name or 'the global options'}"
        absent = [o for o in _options(parser) if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", rows[name])]
        if absent:
            missing[name or "global"] = absent
    assert not missing, f"README's command table lacks these options: {missing}"
