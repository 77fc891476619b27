"""Privacy: keyed pseudonyms, log/warning redaction, and the canary test over scan, convert, load, logs."""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from factories import CanaryTree, find_canary, write_series

from pipeline.errors import ScanError
from pipeline.io import LoadScand, ScanOptions, convert, load_scan, scan_tree
from pipeline.privacy import (
    IDENTIFYING_KEYWORDS,
    Redactor,
    clean_description,
    contains_date,
    contains_identifying,
    install_redaction,
    pseudonym,
    register_identifying,
    register_root,
    uninstall_redaction,
)
from pipeline.schema import IMAGE, PATIENT_ID


def test_pseudonym_is_a_16_hex_hmac_sha256() -> None:
    assert pseudonym(b"k" * 16, "MRN-1") == hmac.new(b"k" * 16, b"MRN-1", hashlib.sha256).hexdigest()[:16]
    assert pseudonym(b"k" * 16, "MRN-1") != pseudonym(b"j" * 16, "MRN-1")


def test_identifying_keywords_cover_the_annex_e_basics() -> None:
    basics = {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
        "InstitutionName",
        "OperatorsName",
        "ReferringPhysicianName",
        "ImageComments",
        "StudyInstanceUID",
    }
    assert basics <= IDENTIFYING_KEYWORDS


def test_redactor_removes_values_phrases_and_paths_but_not_lookalikes() -> None:
    r = Redactor()
    r.register_values(["Doe^Jane", "MRN-0012345", "19700101", "patient moved during the scan"])
    r.register_root("/data/export")
    text = "file /data/export/Doe_Jane/1.dcm: Jane DOE mrn-0012345 born 19700101, Janet; Patient moved during  the scan"
    out = r.redact(text)
    for leaked in ("Jane ", "DOE", "0012345", "19700101", "export", "moved"):
        assert leaked not in out
    assert "Janet" in out


def test_a_relative_root_is_redacted_by_its_resolved_path_not_as_ordinary_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cohortnet scan . --out m.csv`` registers "."; "data" is a word of the config keys."""
    (tmp_path / "data" / "Doe_Jane").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    r = Redactor()
    r.register_root(".")
    r.register_root("data")
    r.register_root("data/Doe_Jane")
    assert r.redact("AUC 0.95, data.spatial_size [28, 28]") == "AUC 0.95, data.spatial_size [28, 28]"
    assert "Doe_Jane" not in r.redact(f"cannot read {tmp_path}/data/Doe_Jane/1.dcm")
    assert "Doe_Jane" not in r.redact("cannot read data/Doe_Jane/1.dcm")  # a root given with a separator, as given


def test_descriptions_are_cleaned_against_the_headers_identifiers() -> None:
    assert clean_description("T1 AXIAL post", ["Doe^Jane"]) == "T1 AXIAL post"
    assert clean_description("Jane T1", ["Doe^Jane"]) == "[redacted]"
    assert clean_description("=HYPERLINK(x)", []) == "HYPERLINK(x)"


@pytest.mark.parametrize(
    ("name", "description", "kept"),
    [
        ("Nguyen^Thi Minh Anh", "Anh Nguyen MR", "Thin slices Anhydrous"),  # more than 3 name tokens
        ("Li^Wu", "T1 Li Wu", "Lipid WUSTL T1"),  # 2-letter names: only the whole name, in either order
        ("Garcia Lopez^Maria Jose", "Maria Garcia T1 brain", "T1 brain"),
    ],
)
def test_every_part_of_a_person_name_is_identifying(name: str, description: str, kept: str) -> None:
    assert clean_description(description, [name]) == "[redacted]"
    assert clean_description(kept, [name]) == kept
    r = Redactor()
    r.register_values([name])
    out = r.redact(f"warning for {description}; {kept}")
    assert out.endswith(f"; {kept}")
    assert (
        not {w.lower() for w in description.split()}
        & set(name.lower().replace("^", " ").split())
        & set(out.lower().split())
    )


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("Doe^John^W", "CT HEAD W/O CONTRAST"),  # a middle initial is not the word "W"
        ("Smith^Mary^L", "L-SPINE SAG T2"),
        ("de la Cruz^Maria", "LA 4CH CINE"),  # name particles are ordinary words
        ("CT^", "CT CHEST PE"),  # an operator's initials alone cannot be matched safely
        ("Ge^Hong", "GE MEDICAL SYSTEMS Signa HDxt"),
        ("No^A", "no series to load: a file"),
    ],
)
def test_short_name_parts_never_redact_ordinary_words(name: str, kept: str) -> None:
    assert clean_description(kept, [name]) == kept
    r = Redactor()
    r.register_values([name])
    assert r.redact(kept) == kept


HEADER_DATES = ["20210304", "19700101", "20210304093000.250000+0100"]  # StudyDate, PatientBirthDate, a DT


@pytest.mark.parametrize(
    "written",
    [
        "20210304", "2021-03-04", "2021/03/04", "2021.03.04", "04.03.2021", "04/03/2021", "04-03-2021",
        "03/04/2021", "4.3.2021", "3/4/2021", "04.03.21", "03/04/21", "04-MAR-2021", "4 March 2021",
        "March 4, 2021", "01.01.1970", "1970-01-01", "01/01/70", "1.1.1970", "1 Jan 1970",
    ],
)  # fmt: skip
def test_a_header_date_is_identifying_however_it_is_written(written: str) -> None:
    assert contains_identifying(f"CT {written} f/u", HEADER_DATES)
    assert clean_description(f"CT {written} f/u", HEADER_DATES) == "[redacted]"
    r = Redactor()
    r.register_values(HEADER_DATES)
    assert r.redact(f"slice of {written}: spacing 5.0") == "slice of [redacted]: spacing 5.0"


def test_another_date_is_not_the_headers_but_no_description_keeps_a_date() -> None:
    assert not contains_identifying("CT 2021-03-05 prior", HEADER_DATES)
    assert not contains_identifying("CT 05.03.2021", HEADER_DATES)
    r = Redactor()
    r.register_values(HEADER_DATES)
    assert r.redact("run 2021-03-05 at 1.2.840.10008.5.1.4") == "run 2021-03-05 at 1.2.840.10008.5.1.4"
    for dated in ("Prior 2019-05-01", "CT 12/31/99", "f/u 01.02.70", "14 Feb 2020 CT", "CT20190501"):
        assert contains_date(dated)
        assert clean_description(dated, []) == "[redacted]"


def test_a_log_line_keeps_version_numbers_that_spell_a_registered_date() -> None:
    r = Redactor()
    r.register_values(["19700102"])
    assert r.redact("monai 1.2.70, torch 2.1.0") == "monai 1.2.70, torch 2.1.0"
    assert r.redact("born 02.01.1970") == "born [redacted]"


@pytest.mark.parametrize(
    "protocol",
    [
        "T1 MPRAGE 3D", "AX T2 5.0 mm", "CHEST 1.25 B31f", "C- ABD PELVIS", "SENSE 2:1", "DWI b50-400-800",
        "Head 5/5 Bone", "3D 1.0/0.7 iso", "ASL 1.2.10", "FOV 512/512/16", "CTA 10-20-30 s", "Ax T2 FSE 3.0.12",
        "Perfusion 12.30.45", "MARKERS 2021", "DEC 3 PHASES", "SAG T1 MAY 5",
    ],
)  # fmt: skip
def test_protocol_words_are_not_dates(protocol: str) -> None:
    assert not contains_date(protocol)
    assert clean_description(protocol, HEADER_DATES) == protocol
    r = Redactor()
    r.register_values(HEADER_DATES)
    assert r.redact(protocol) == protocol


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("Ng^Bo", "CT Ng^Bo f/u"), ("Ng^Bo", "CT Ng_Bo"), ("Ng^Bo", "Bo, Ng T1"),
        ("Li^Wu", "CT Wu, Li"), ("Li^Wu", "Li-Wu T2"), ("Li^Wu", "Li. Wu"),
        ("Doe^John^W", "John W. Doe"),
    ],
)  # fmt: skip
def test_a_short_name_matches_whatever_separates_its_parts(name: str, written: str) -> None:
    assert clean_description(written, [name]) == "[redacted]"
    r = Redactor()
    r.register_values([name])
    assert "[redacted]" in r.redact(written)
    assert not {"ng", "bo", "li", "wu"} & set(re.split(r"[^a-z]+", r.redact(written).lower()))


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("Li^Wu", "LIWUX T1"),
        ("Li^Wu", "T1 oliwu"),
        ("Ng^Bo", "NGBOX scout"),
        ("Ng^Bo", "ANG BO3 T2"),
        ("Li^Wu", "Li 3 Wu"),
        # short parts run together are not a name: they spell ordinary protocol words
        ("Ng^Lu", "LUNG 1.25 MM"),
        ("Bo^Ne", "BONE 1.0"),
        ("An^Gio", "CT ANGIO HEAD"),
        ("Ho^Me", "Home"),
        ("Li^Wu", "LIWU T2"),
    ],
)
def test_a_short_name_without_separators_is_still_a_whole_word(name: str, kept: str) -> None:
    assert clean_description(kept, [name]) == kept
    r = Redactor()
    r.register_values([name])
    assert r.redact(kept) == kept


def test_descriptions_are_checked_again_once_filtered() -> None:
    """Dropping characters outside the kept set can join a value that they had split."""
    assert clean_description("T1 J\u2019ane", ["Doe^Jane"]) == "[redacted]"
    assert clean_description("DOB 1970\u200b01\u200b01", []) == "[redacted]"
    assert clean_description("CT J\u2019ane", ["Doe^Jo"]) == "CT Jane"


def test_a_scanned_description_loses_header_dates_and_short_names(tmp_path: Path) -> None:
    root = tmp_path / "export"
    dates = {"StudyDate": "20210304", "PatientBirthDate": "19700101", "PatientID": "P1"}
    write_series(root / "a", PatientName="Ng^Bo", SeriesDescription="CT 2021-03-04 DOB 01.01.1970", **dates)
    write_series(root / "b", PatientName="Ng^Bo", SeriesDescription="CT Ng^Bo f/u", **dates)
    write_series(root / "c", PatientName="Ng^Bo", SeriesDescription="T1 3D 5.0 mm 1.25 C- 2:1", **dates)
    scan_tree(root, tmp_path / "out" / "manifest.csv", ScanOptions(progress=False))
    descriptions = pd.read_csv(tmp_path / "out" / "manifest.csv")["series_description"]
    assert sorted(descriptions) == ["T1 3D 5.0 mm 1.25 C- 2:1", "[redacted]", "[redacted]"]


def test_names_and_ids_in_headers_match_token_by_token(tmp_path: Path) -> None:
    root = tmp_path / "export"
    write_series(root / "a", PatientName="Nguyen^Thi Minh Anh", SeriesDescription="Anh Nguyen T1")
    write_series(root / "b", PatientName="Li^Wu", PatientID="P2", SeriesDescription="Li Wu T2")
    write_series(root / "c", PatientName="Doe^Jo", PatientID="A1 B22 C333 D4444 E5555", SeriesDescription="E5555 T2")
    write_series(root / "d", PatientName="Lin^Wen", PatientID="P4", SeriesDescription="Lipid T2")
    scan_tree(root, tmp_path / "out" / "manifest.csv", ScanOptions(progress=False))
    descriptions = pd.read_csv(tmp_path / "out" / "manifest.csv")["series_description"]
    assert sorted(descriptions) == ["Lipid T2", "[redacted]", "[redacted]", "[redacted]"]


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    """Everything logged or warned while the test runs, through redaction installed as the CLI would."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    loggers = [logging.getLogger(), logging.getLogger("pipeline")]  # cli's set-up stops propagation
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    install_redaction(loggers[1])
    try:
        yield stream
    finally:
        uninstall_redaction()
        logging.captureWarnings(False)
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def test_installed_redaction_covers_any_logger_and_warnings(captured_log: io.StringIO, tmp_path: Path) -> None:
    register_identifying(["Doe^Jane"])
    register_root(tmp_path)
    logging.getLogger("some_reader.io").warning("failed to read %s/Doe/IM1 for Jane", tmp_path)
    try:
        raise ValueError("Doe^Jane broke it")
    except ValueError:
        logging.getLogger("pipeline").exception("while loading")
    text = captured_log.getvalue()
    assert "failed to read <path> for [redacted]" in text
    assert "Jane" not in text
    assert "Doe" not in text
    assert str(tmp_path) not in text


def test_warnings_hook_redacts_messages(tmp_path: Path) -> None:
    shown: list[str] = []
    with warnings.catch_warnings():  # restores the hook and filters afterwards
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        install_redaction()
        try:
            register_identifying(["Doe^Jane"])
            register_root(tmp_path)
            warnings.warn(f"Invalid value for VR PN: 'Doe^Jane' in {tmp_path}/x", UserWarning, stacklevel=1)
        finally:
            uninstall_redaction()
    assert shown == ["Invalid value for VR PN: '[redacted]^[redacted]' in <path>"]


def _study_outputs(tree: CanaryTree, out: Path, key_file: Path | None) -> pd.DataFrame:
    """Scan, convert every image and load every image, writing what they produce under ``out``."""
    reid = out.parent / "controller" / "reid.csv"
    summary = scan_tree(
        tree.root, out / "manifest.csv", ScanOptions(pseudonymize_key_file=key_file, reid_table=reid, progress=False)
    )
    assert summary.exit_code == 8  # the broken files are part of the canary tree
    assert tree.canary in reid.read_text(), "only the data controller's table maps ids back"
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    loaded = []
    for image in manifest[IMAGE]:
        convert(out / image, out / "converted" / (Path(image).name.split(".")[0] + ".nii.gz"))
        meta = LoadScand()({"image": str(out / image), "image_id": Path(image).name})["image"].meta
        loaded.append(repr(dict(meta)))
    convert(tree.series_dirs[0], out / "converted" / "direct.nii.gz")  # straight from the export
    convert(tree.nifti, out / "converted" / "direct_nifti.nii.gz")
    for broken in sorted((tree.root).rglob("*trunc.dcm")) + sorted(tree.root.rglob("*.txt")):
        with pytest.raises(ScanError) as info:
            load_scan(broken)
        loaded.append(str(info.value))
    (out / "loaded.txt").write_text("\n".join(loaded))
    return manifest


def test_canary_reaches_no_output_log_or_message(
    canary_tree: CanaryTree, tmp_path: Path, captured_log: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    planted = find_canary([canary_tree.root], canary_tree.canary)
    assert len(planted) > 10, "the canary is planted in names and headers (else this test proves nothing)"
    key = tmp_path / "secret" / "key"
    key.parent.mkdir()
    key.write_bytes(b"a key of more than sixteen bytes")
    out = tmp_path / "outputs"
    manifest = _study_outputs(canary_tree, out, key)
    assert len(manifest) == 4  # two series, a radiograph, a NIfTI
    assert find_canary([out], canary_tree.canary) == []
    assert canary_tree.canary.lower() not in captured_log.getvalue().lower()
    streams = capfd.readouterr()
    assert canary_tree.canary.lower() not in (streams.out + streams.err).lower()
    assert "[redacted]" in set(manifest["series_description"])


def test_without_a_key_the_patient_id_is_the_only_place_it_appears(canary_tree: CanaryTree, tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    manifest = _study_outputs(canary_tree, out, None)
    assert manifest[PATIENT_ID].str.contains(canary_tree.canary).all()
    without_ids = manifest.drop(columns=[PATIENT_ID])
    assert not without_ids.apply(lambda col: col.str.contains(canary_tree.canary)).any().any()
    hits = find_canary([out], canary_tree.canary)
    assert hits == [f"content: {out / 'manifest.csv'}"]
