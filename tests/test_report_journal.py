"""The parts of the report a journal asks for: patient flow whose counts add up, Table 1 with
standardised differences, the readable calibration plot and the TRIPOD+AI / CLAIM checklist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cohorts import cohort_factory, workflow_factory

from pipeline.cli import main
from pipeline.evaluation.calibration import calibration_summary, quantile_reliability_bins
from pipeline.reporting import checklist, cohort


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A k-fold study where the filter drops site B's patients, one image does not load and
    cohortnet scan had excluded two series (and skipped a file that is not an image) before the
    manifest. Trained once for the module; the tests only read it."""
    base = tmp_path_factory.mktemp("flow")
    manifest = cohort_factory(base)(n_patients=20, second_scan=(1, 4))
    table = pd.read_csv(manifest)
    table["sex"] = np.where(table.index % 2, "F", "M")
    table["age"] = 40 + table.index
    table.to_csv(manifest, index=False)
    broken = table[(table["site"] == "A")].iloc[0]["image"]
    (manifest.parent / broken).write_bytes(b"not a nifti")
    pd.DataFrame(
        {
            "source": ["x/1", "x/2", "x/README"],
            "verdict": ["excluded", "error", "skipped"],
            "reason": ["missing_pixel_spacing", "nonfinite_voxels", "not_dicom"],
            "message": ["", "", ""],
        }
    ).to_csv(manifest.with_name("manifest.exclusions.csv"), index=False)
    wf = workflow_factory(base)(
        manifest, filter={"site": ["A"]}, report={"covariates": ["age", "sex"], "explain": {"cases": 0}}
    )
    assert main(["run", str(wf), "--run-id", "r"]) == 0
    return base / "reports" / "tiny" / "r"


def test_the_flow_accounts_for_every_image_and_patient(flow_run: Path) -> None:
    from pipeline.config import load_config
    from pipeline.reporting.build import cohort_sections

    manifest = pd.read_csv(flow_run.parents[2] / "cohort" / "manifest.csv")
    site_a = manifest[manifest["site"] == "A"]
    sections = cohort_sections(flow_run, load_config(flow_run / "config.yaml", check_files=False))
    assert sections is not None
    flow = sections["flow"]
    assert cohort.flow_problems(flow) == []
    assert flow["manifest"] == {"file": "manifest.csv", "images": len(manifest), "patients": 20}
    assert flow["scan"]["by_reason"] == {"missing_pixel_spacing": 1, "nonfinite_voxels": 1}
    assert flow["scan"]["excluded"] == 2  # a README is not an excluded scan
    assert flow["scan"]["not_images"] == 1
    assert flow["filter"]["images"] == len(manifest) - len(site_a)
    assert flow["filter"]["patients"] == 20 - site_a["patient_id"].nunique()
    assert flow["loading"]["images"] == 1
    assert sum(flow["loading"]["by_reason"].values()) == 1
    included = flow["included"]
    assert included["images"] == len(site_a) - 1
    held_out = sum(p["patients"] for p in flow["partitions"])
    assert held_out == included["patients"] == site_a["patient_id"].nunique() - flow["loading"]["patients"]
    assert sum(p["positives"] for p in flow["partitions"]) == included["positives"]
    assert (flow_run / "flow.svg").read_bytes().lstrip().startswith(b"<?xml")
    # a count that does not add up is named
    broken = json.loads(json.dumps(flow))
    broken["partitions"][0]["patients"] += 1
    assert any("partitions" in p for p in cohort.flow_problems(broken))
    html = (flow_run / "report.html").read_text()
    assert 'id="participants"' in html
    assert 'alt="Patient flow diagram"' in html


def test_table_one_describes_each_fold_with_the_covariates(flow_run: Path) -> None:
    table = pd.read_csv(flow_run / "table1.csv", keep_default_na=False)
    folds = [c for c in table.columns if c.startswith("fold ")]
    assert len(folds) == 2
    first = table.iloc[0]
    per_patient = pd.read_csv(flow_run / "per_patient.csv")
    assert first["characteristic"] == "patients, n"
    assert int(first["overall"]) == len(per_patient) == sum(int(first[f]) for f in folds)
    names = table["characteristic"].str.strip().tolist()
    assert "age, median [IQR]" in names
    assert "sex, n (%)" in names
    assert "M" in names
    assert "F" in names
    age = table[table["characteristic"] == "age, median [IQR]"].iloc[0]
    assert age["overall"].startswith(f"{per_patient['age'].median():.3g} [")
    assert float(age["max_smd"]) >= 0


def test_standardised_differences_by_hand() -> None:
    patients = pd.DataFrame(
        {
            "patient_id": list("abcdefgh"),
            "target": [0, 1, 0, 1, 0, 1, 1, 1],
            "age": [1, 2, 3, 10, 2, 3, 4, 20],  # a: 1, 2, 3 / b: 2, 3, 4 (the 10 and 20 are in c)
            "sex": ["F", "F", "M", "M", "F", "M", "M", "M"],
        }
    )
    partition = pd.Series(["a", "a", "a", "c", "b", "b", "b", "c"], index=patients["patient_id"])
    columns, rows = cohort.table_one(patients, partition, ["age", "sex"])
    assert columns == ["overall", "a", "b", "c"]
    by_name = {r["characteristic"]: r for r in rows}
    assert by_name["patients, n"]["values"] == [8, 3, 3, 2]
    # largest pair: a vs c for age, |2 - 15| / sqrt((1 + 50) / 2)
    assert by_name["age, median [IQR]"]["smd"] == pytest.approx(13 / np.sqrt(25.5))
    assert by_name["age, median [IQR]"]["large"]
    # two levels: |p_a - p_b| / sqrt((p_a q_a + p_b q_b) / 2), p the share of the second level ("F")
    smd = cohort._smd_categorical(pd.Series(["F", "F", "M"]), pd.Series(["M", "M"]), ["M", "F"])
    pa = 2 / 3  # share of F in the first group: the levels after the first
    assert smd == pytest.approx(abs(pa - 0) / np.sqrt((pa * (1 - pa) + 0) / 2))
    assert cohort._smd_numeric(pd.Series([1.0, 2, 3]), pd.Series([2.0, 3, 4])) == pytest.approx(1.0)


def test_quantile_calibration_bins_hold_equal_counts_with_wilson_intervals() -> None:
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    bins = quantile_reliability_bins(y, p, 4)
    assert bins["n"] == [2, 2, 2, 2]
    assert bins["observed_rate"] == [0.0, 0.5, 1.0, 0.5]
    assert bins["observed_ci_high"][0] == pytest.approx(3.8415 / (2 + 3.8415), abs=1e-4)  # Wilson, 0 of 2
    tied = quantile_reliability_bins(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.9]), 2)
    assert tied["n"] == [3, 1]  # a score never straddles two bins
    rng = np.random.default_rng(0)
    summary = calibration_summary(rng.integers(0, 2, 95), rng.uniform(size=95))
    assert len(summary["reliability_quantile"]["n"]) == 9
    assert min(summary["reliability_quantile"]["n"]) >= 10


def test_the_checklist_covers_both_guidelines_with_their_numbers(flow_run: Path) -> None:
    header, items = checklist.load_items()
    assert header["version"] == 1
    tripod = [i["item"] for i in items if i["guideline"] == "TRIPOD+AI"]
    claim = [i["item"] for i in items if i["guideline"] == "CLAIM 2024"]
    assert len(tripod) == 52
    assert len(set(tripod)) == 52
    assert tripod[:3] == ["1", "2", "3a"]
    assert tripod[-1] == "27c"
    assert claim == [str(n) for n in range(1, 45)]
    for item in items:
        assert set(item) <= {"guideline", "item", "section", "title", "fill", "where"}, item
        assert not item.get("fill") or item["fill"] in checklist.FILLS, item
    table = pd.read_csv(flow_run / "checklist.csv", dtype=str, keep_default_na=False)
    assert len(table) == 96
    assert set(table["status"]) <= set(checklist.STATUSES)
    row = table[(table["guideline"] == "CLAIM 2024") & (table["item"] == "20")].iloc[0]
    assert row["status"] == checklist.FILLED
    assert "patient level" in row["answer"]
    row = table[(table["guideline"] == "TRIPOD+AI") & (table["item"] == "6b")].iloc[0]
    assert "site in {A}" in row["answer"]
    assert "1 images failed to load" in row["answer"]
    author = table[table["status"] == checklist.AUTHOR]
    assert (author["where"] == "").all()
    assert len(author) > 10
    html = (flow_run / "report.html").read_text()
    anchors = {w[1:] for w in table["where"] if w}
    missing = [a for a in anchors if f'id="{a}"' not in html]
    assert not missing, missing  # a link points only at a section this report has
    claim33 = table[(table["guideline"] == "CLAIM 2024") & (table["item"] == "33")].iloc[0]
    assert claim33["where"] == ""  # no external section in a study report
    assert 'id="checklist"' in html


def test_the_checklist_file_is_valid_yaml_with_titles_intact() -> None:
    from importlib import resources

    text = resources.files("pipeline.reporting").joinpath("checklists", checklist.CHECKLIST).read_text()
    data = yaml.safe_load(text)
    titles = {(i["guideline"], i["item"]): i["title"] for i in data["items"]}
    assert titles[("TRIPOD+AI", "3b")] == "Intended population, place in the care pathway and users"
    assert titles[("CLAIM 2024", "20")] == "Level at which partitions are disjoint"


def test_complete_separation_is_not_reported_as_balance() -> None:
    separated = cohort._smd_categorical(pd.Series(["A"] * 10), pd.Series(["B"] * 10), ["A", "B"])
    assert separated == float("inf")
    assert cohort._smd_numeric(pd.Series([32.0] * 4), pd.Series([64.0] * 4)) == float("inf")
    assert cohort._smd_numeric(pd.Series([32.0] * 4), pd.Series([32.0] * 4)) == 0.0
    partly = cohort._smd_categorical(
        pd.Series(["A"] * 5 + ["B"] * 5), pd.Series(["A"] * 5 + ["C"] * 5), ["A", "B", "C"]
    )
    assert 0 < partly < float("inf")  # different, not separated
    patients = pd.DataFrame(
        {
            "patient_id": list("abcdef"),
            "target": [0, 1, 0, 1, 0, 1],
            "scanner": ["X", "X", "X", "Y", "Y", "Y"],
            "sex": ["1", "0", "NA", "1", "0", "unknown"],  # codes with two spellings of missing
            "age": ["50", "61", "72", "1250", "44", "39"],
        }
    )
    part = pd.Series(["train"] * 3 + ["test"] * 3, index=patients["patient_id"])
    _, rows = cohort.table_one(patients, part, ["scanner", "sex", "age"])
    by_name = {r["characteristic"]: r for r in rows if not r.get("level")}
    assert by_name["scanner, n (%)"]["smd"] == float("inf")
    assert by_name["scanner, n (%)"]["large"]
    assert "sex, n (%)" in by_name  # few integer codes are counted, not summarised by a median
    missing = [r for r in rows if r["characteristic"] == "missing"]
    assert missing[0]["values"] == [2, 1, 1]  # NA and unknown are missing
    assert by_name["age, median [IQR]"]["values"] == ["55.5 [45.5, 69.2]", "61 [55.5, 66.5]", "44 [41.5, 647]"]
