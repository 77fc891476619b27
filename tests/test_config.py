"""Workflow validation: types, unknown keys, overrides, and every problem listed at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import WorkflowConfig, dump_config, load_config, parse_overrides
from pipeline.errors import ValidationError


def write(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "m.csv").write_text("patient_id,image,label\n")
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"study": "s", "manifest": "m.csv", **data}))
    return path


def test_defaults_and_resolved_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {}))
    assert isinstance(cfg, WorkflowConfig)
    assert cfg.manifest == (tmp_path / "m.csv").resolve()
    assert cfg.model.arch == "resnet18"
    assert cfg.validation.scheme == "kfold"
    assert cfg.validation.folds == 5
    assert cfg.data.spatial_size == (64, 64, 64)


def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, {"train": {"epochs": 30}}),
        ["train.epochs=3", "data.spatial_size=[16, 16, 8]", "train.lr=1e-4", "model.arch=resnet50"],
    )
    assert cfg.train.epochs == 3
    assert cfg.data.spatial_size == (16, 16, 8)
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.model.arch == "resnet50"
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "manifest": "absent.csv",
            "trian": {"epochs": 3},
            "model": {"arch": "resnet19", "spatial_dims": 4},
            "train": {"epochs": "ten", "batch_size": 0},
            "data": {"spatial_size": [32, 32]},
        },
    )
    with pytest.raises(ValidationError) as info:
        load_config(path)
    text = str(info.value)
    assert "unknown key trian (did you mean train?)" in text
    assert "model.arch" in text
    assert "resnet19" in text
    assert "did you mean 'resnet18'" in text
    assert "model.spatial_dims" in text
    assert "train.epochs: expected int, got 'ten'" in text
    # semantic checks still run next to the type problems
    assert "manifest: file not found" in text
    assert "train.batch_size must be >= 1" in text
    assert "data.spatial_size has 2 entries but model.spatial_dims is 3" in text


def test_semantic_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "manifest": "absent.csv",
            "model": {"spatial_dims": 2},
            "data": {"spatial_size": [32, 32, 32], "augment": {"rotate90": True, "backend": "torch"}},
            "train": {"batch_size": 0},
            "evaluation": {"threshold_rule": "sensitivity=2"},
        },
    )
    with pytest.raises(ValidationError) as info:
        load_config(path)
    problems = "\n".join(info.value.problems)
    assert "manifest: file not found" in problems
    assert "data.spatial_size has 3 entries but model.spatial_dims is 2" in problems
    assert "train.batch_size must be >= 1" in problems
    assert "evaluation.threshold_rule" in problems
    assert "data.augment.backend" in problems


def test_bad_override_syntax(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="expected KEY=VALUE"):
        load_config(write(tmp_path, {}), ["train.epochs"])


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("study: s\nmodel: {arch: [\n")
    with pytest.raises(ValidationError, match="not valid YAML"):
        load_config(path)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {"evaluation": {"subgroups": ["site"]}}), ["train.epochs=2"])
    dumped = tmp_path / "run" / "config.yaml"
    dumped.parent.mkdir()
    dumped.write_text(dump_config(cfg))
    again = load_config(dumped)
    assert again == cfg


def test_extends_a_base_workflow_and_filter_rows(tmp_path: Path) -> None:
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    (base_dir / "m.csv").write_text("patient_id,image,label\n")
    (base_dir / "base.yaml").write_text(
        yaml.safe_dump({"study": "s", "manifest": "m.csv", "train": {"epochs": 30, "lr": 0.01}})
    )
    child = tmp_path / "child.yaml"
    child.write_text(
        yaml.safe_dump({"extends": "base/base.yaml", "train": {"epochs": 3}, "filter": {"split": ["train", "val"]}})
    )
    cfg = load_config(child)
    assert cfg.manifest == (base_dir / "m.csv").resolve()  # relative to the base file
    assert cfg.train.epochs == 3
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.filter == {"split": ("train", "val")}
    (base_dir / "base.yaml").write_text(yaml.safe_dump({"extends": "../child.yaml"}))
    with pytest.raises(ValidationError, match="cycle"):
        load_config(child)


def test_rotate90_needs_equal_sizes_in_the_first_two_axes(tmp_path: Path) -> None:
    path = write(tmp_path, {"data": {"spatial_size": [32, 24, 16], "augment": {"rotate90": True}}})
    with pytest.raises(ValidationError) as info:
        load_config(path)
    assert "data.augment.rotate90 turns the first two axes, which need equal sizes" in str(info.value)


# --------------------------------------------------------------------------- documented values

README = Path(__file__).resolve().parents[1] / "README.md"


def _literal_fields() -> dict[str, tuple[object, ...]]:
    """Every workflow key whose values form a closed list: dotted key -> accepted values."""
    import dataclasses
    import typing

    from pipeline.config import WorkflowConfig

    out: dict[str, tuple[object, ...]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(typing.cast(type, tp), f"{prefix}{f.name}.")
            elif typing.get_origin(tp) is typing.Literal:
                out[f"{prefix}{f.name}"] = typing.get_args(tp)

    walk(WorkflowConfig, "")
    return out


def _readme_rows() -> dict[str, list[str]]:
    """Workflow-table rows of README.md: dotted key -> backticked values in the default and
    meaning columns. ``a.b`` / ``c`` in one key cell means ``a.b`` and ``a.c``; ``x.{p,q}`` too."""
    import re

    rows: dict[str, list[str]] = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        keys: list[str] = []
        for token in re.findall(r"`([^`]+)`", cells[0]):
            if "{" in token:
                base, names = token.split("{")
                keys += [base + n for n in names.rstrip("}").split(",")]
            elif "." in token or not keys:
                keys.append(token)
            else:
                keys.append(keys[0].rsplit(".", 1)[0] + "." + token)
        values = re.findall(r"`([A-Za-z0-9_]+(?:=[0-9.]+)?)`", cells[1] + " " + cells[2])
        for key in keys:
            rows[key] = values
    return rows


def test_every_closed_list_is_documented_and_every_documented_value_is_accepted(tmp_path: Path) -> None:
    rows = _readme_rows()
    fields = _literal_fields()
    wf = write(tmp_path, {})
    for key, accepted in fields.items():
        if key == "model.spatial_dims":
            continue
        assert key in rows, f"README's workflow table has no row for {key}"
        documented = set(rows[key])
        assert {str(a) for a in accepted} <= documented, f"{key}: README lists {sorted(documented)}"
        for value in documented:
            needs = ["validation.group=site"] if value == "leave_one_group_out" else []  # its one required key
            cfg = load_config(wf, [f"{key}={value}", *needs])
            section, _, name = key.rpartition(".")
            node: object = cfg
            for part in section.split("."):
                node = getattr(node, part)
            assert getattr(node, name) == value, key
    for rule in rows["evaluation.threshold_rule"]:
        assert load_config(wf, [f"evaluation.threshold_rule={rule}"]).evaluation.threshold_rule == rule


@pytest.mark.parametrize(("word", "meaning"), [("off", False), ("on", True), ("yes", True), ("no", False)])
def test_yaml_words_stay_words_for_string_options(tmp_path: Path, word: str, meaning: bool) -> None:
    """YAML 1.1 reads these as booleans; a word option gets the word, a boolean option its meaning."""
    (tmp_path / "m.csv").write_text("patient_id,image,label\n")
    path = tmp_path / "wf.yaml"
    path.write_text(f"study: s\nmanifest: m.csv\ntrain:\n  deterministic: {word}\n")
    assert load_config(path).train.deterministic is meaning
    assert load_config(path, [f"train.compile={word}"]).train.compile is meaning
    if word in ("on", "off"):
        assert load_config(path, [f"train.channels_last={word}"]).train.channels_last == word
    else:
        with pytest.raises(ValidationError, match=f"train.channels_last: must be one of .*got '{word}'"):
            load_config(path, [f"train.channels_last={word}"])


def test_amp_off_from_the_command_line_and_the_file(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, {}), ["train.amp=off"]).train.amp == "off"
    path = tmp_path / "wf2.yaml"
    path.write_text("study: s\nmanifest: m.csv\ntrain: {amp: off, deterministic: yes}\n")
    cfg = load_config(path)
    assert cfg.train.amp == "off"
    assert cfg.train.deterministic is True


def test_null_for_a_word_option_says_how_to_quote(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        load_config(write(tmp_path, {}), ["train.amp=null", "evaluation.threshold_rule=~"])
    text = str(info.value)
    assert "train.amp: must be one of 'auto' | 'bf16' | 'off', got null" in text
    assert "evaluation.threshold_rule: expected a string, got null" in text
    assert "quote it" in text


def test_documented_ci_methods_in_a_workflow_file(tmp_path: Path) -> None:
    for method in ("delong", "delong_wald", "bootstrap", "bootstrap_percentile"):
        assert load_config(write(tmp_path, {"evaluation": {"ci_method": method}})).evaluation.ci_method == method


def test_a_section_written_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("patient_id,image,label\n")
    path = tmp_path / "wf.yaml"
    path.write_text("study: s\nmanifest: m.csv\ntrain: {epochs: 3}\ntrain: {lr: 0.1}\n")
    with pytest.raises(ValidationError, match=r"line 4, column 1\): 'train' is written twice"):
        load_config(path)


def test_a_billion_laughs_workflow_is_refused_before_it_expands(tmp_path: Path) -> None:
    """Nine levels of nine aliases: 9^9 values if expanded; refused from the composed nodes."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]" for k in range(1, 9)]
    path = tmp_path / "wf.yaml"
    path.write_text("\n".join([*lines, "study: s", "manifest: m.csv", "train: {epochs: *l8}"]) + "\n")
    with pytest.raises(ValidationError, match="aliases expand to more than 100,000 values"):
        load_config(path)
    text = (
        "{a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], "
        + ", ".join(f"b{k}: &b{k} [" + ", ".join([f"*{'a' if k == 0 else f'b{k - 1}'}"] * 10) + "]" for k in range(5))
        + "}"
    )
    assert parse_overrides([f"train.epochs={text}"]) == {"train": {"epochs": text}}  # kept as text, never expanded


@pytest.mark.parametrize(
    ("validation", "message"),
    [
        ({"scheme": "kfold", "group": "site"}, "validation.group is not used by scheme kfold"),
        ({"scheme": "holdout", "folds": 10}, "validation.folds is not used by scheme holdout"),
        ({"scheme": "kfold", "inner_folds": 4}, "validation.inner_folds is not used by scheme kfold"),
        ({"scheme": "nested", "inner_val_fraction": 0.1}, "validation.inner_val_fraction is not used by scheme nested"),
        ({"scheme": "leave_one_group_out", "group": "site", "folds": 3}, "validation.folds is not used by scheme"),
        (
            {"scheme": "kfold", "inner_val_fraction": 0.3},
            "so the share is 1/n (at most 0.5); use 0.333 (1/3) or 0.25 (1/4)",
        ),
        ({"scheme": "kfold", "inner_val_fraction": 0.6}, "use 0.5 (1/2)"),
    ],
)
def test_a_validation_key_the_scheme_cannot_honour_is_refused(tmp_path: Path, validation: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        load_config(write(tmp_path, {"validation": validation}))
    assert message in "\n".join(info.value.problems)


@pytest.mark.parametrize("fraction", [0.5, 0.333, 0.25, 0.2, 0.143, 0.1])
def test_a_validation_share_of_one_in_n_is_what_the_folds_get(tmp_path: Path, fraction: float) -> None:
    import pandas as pd

    from pipeline.crossval import kfold_splits

    cfg = load_config(write(tmp_path, {"validation": {"scheme": "kfold", "inner_val_fraction": fraction}}))
    patients = pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(420)], "target": [i % 2 for i in range(420)]})
    splits = kfold_splits(patients, 5, cfg.validation.inner_val_fraction, seed=0)
    per_fold = splits[splits["role"] != "test"].groupby("fold")["role"].apply(lambda r: (r == "val").mean())
    assert per_fold.to_numpy() == pytest.approx(fraction, abs=0.01)


def test_a_workflow_that_changes_the_scheme_inherits_only_the_keys_the_new_scheme_reads(tmp_path: Path) -> None:
    base = write(tmp_path, {"validation": {"scheme": "kfold", "folds": 3, "inner_val_fraction": 0.143, "repeats": 2}})
    child = tmp_path / "nested.yaml"
    child.write_text(yaml.safe_dump({"extends": base.name, "validation": {"scheme": "nested", "inner_folds": 2}}))
    v = load_config(child).validation
    assert (v.scheme, v.folds, v.inner_folds) == ("nested", 3, 2)
    assert (v.inner_val_fraction, v.repeats) == (0.2, 1)  # k-fold's own keys are not inherited: defaults
    same = load_config(base, ["validation.folds=4"]).validation  # the same scheme keeps every key
    assert (same.folds, same.inner_val_fraction) == (4, 0.143)


def test_a_finished_runs_recorded_config_still_loads_where_a_new_run_would_be_refused(tmp_path: Path) -> None:
    from pipeline.config import config_from_dict

    # runs made before the scheme-key rule recorded nested CV with k-fold's inner_val_fraction
    raw = {"study": "s", "manifest": "m.csv", "validation": {"scheme": "nested", "inner_val_fraction": 0.143}}
    recorded = config_from_dict(raw, base_dir=tmp_path, source="config.yaml", check_files=False)
    assert recorded.validation.scheme == "nested"
    with pytest.raises(ValidationError, match="inner_val_fraction is not used by scheme nested"):
        load_config(write(tmp_path, {"validation": raw["validation"]}))
