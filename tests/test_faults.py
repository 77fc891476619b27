"""Inputs that used to give a silently wrong result end in an explicit verdict: an exclusion with
a reason code while the study goes on, or exit 2 with the problem named."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.provenance import MISSING, content_hash


def write_nifti(path: Path, volume: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))


def test_a_two_dimensional_image_in_a_3d_workflow_is_excluded(
    tmp_path: Path, make_cohort: Callable[..., Path], make_workflow: Callable[..., Path]
) -> None:
    manifest = make_cohort(n_patients=16)
    table = pd.read_csv(manifest)
    write_nifti(manifest.parent / table.loc[0, "image"], np.ones((7, 8), np.float32))  # a single slice
    write_nifti(manifest.parent / table.loc[1, "image"], np.full((7, 8, 1), 2.0, np.float32))
    assert main(["run", str(make_workflow(manifest)), "--run-id", "r"]) == 0
    excluded = pd.read_csv(tmp_path / "reports" / "tiny" / "r" / "excluded.csv")
    assert sorted(excluded["reason"]) == ["wrong_dimensions", "wrong_dimensions"]
    assert excluded["message"].str.contains("2-D image").all()


def test_identical_content_under_two_patient_ids_is_refused(
    make_cohort: Callable[..., Path], make_workflow: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = make_cohort(n_patients=10)
    table = pd.read_csv(manifest)
    shutil.copyfile(manifest.parent / table.loc[2, "image"], manifest.parent / table.loc[7, "image"])
    capsys.readouterr()
    assert main(["run", str(make_workflow(manifest)), "--run-id", "r"]) == 2
    assert "identical image content under patients P002, P007" in capsys.readouterr().err


def test_a_spatial_size_beyond_the_machine_is_refused_at_check(
    make_cohort: Callable[..., Path], make_workflow: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wf = make_workflow(make_cohort(n_patients=4), data={"spatial_size": [4096, 4096, 4096]})
    assert main(["run", str(wf), "--check"]) == 2
    assert "needs 1024.0 GiB for one batch of inputs alone" in capsys.readouterr().err


def test_a_vanished_image_is_recorded_as_missing_not_as_an_empty_file(tmp_path: Path) -> None:
    assert content_hash(tmp_path / "gone.nii.gz") == MISSING
    (tmp_path / "series").mkdir()
    assert content_hash(tmp_path / "series") != MISSING


def test_a_series_hash_is_its_files_content_not_their_names(tmp_path: Path) -> None:
    """A series re-exported under other file names (scan's layout, a PACS export) is the same
    content, so the leakage guard recognises it; a changed or missing slice is not. Only the
    series folder's own files count, those the loader reads: not a subfolder's."""
    original, renamed, changed = (tmp_path / n for n in ("orig", "renamed", "changed"))
    for folder in (original, renamed, changed):
        (folder / "sub").mkdir(parents=True)
    (original / "IM1.dcm").write_bytes(b"slice one")
    (original / "IM2.dcm").write_bytes(b"slice two")
    (original / "sub" / "IM3.dcm").write_bytes(b"not read by the loader")
    (renamed / "00001.dcm").write_bytes(b"slice two")
    (renamed / "00000.dcm").write_bytes(b"slice one")
    (changed / "IM1.dcm").write_bytes(b"slice one")
    (changed / "IM2.dcm").write_bytes(b"slice 2")
    assert content_hash(original) == content_hash(renamed)
    assert content_hash(changed) != content_hash(original)
    (renamed / "sub" / "00002.dcm").write_bytes(b"another subfolder file")
    assert content_hash(renamed) == content_hash(original)
    (renamed / "00001.dcm").unlink()
    assert content_hash(renamed) != content_hash(original)


def test_the_legacy_series_hash_is_the_old_names_and_hashes_at_every_depth(tmp_path: Path) -> None:
    import hashlib

    from pipeline.provenance import content_hashes, file_sha256, legacy_content_hash

    series = tmp_path / "s"
    (series / "sub").mkdir(parents=True)
    (series / "b.dcm").write_bytes(b"two")
    (series / "sub" / "a.dcm").write_bytes(b"one")
    expected = hashlib.sha256()
    for rel in ("b.dcm", "sub/a.dcm"):
        expected.update(rel.encode())
        expected.update(file_sha256(series / rel).encode())
    assert legacy_content_hash(series) == expected.hexdigest()
    assert content_hashes(series) == (content_hash(series), expected.hexdigest())
    assert legacy_content_hash(series / "b.dcm") == content_hash(series / "b.dcm") == file_sha256(series / "b.dcm")
    assert legacy_content_hash(tmp_path / "gone") == MISSING


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("train: 5", "train: expected a section (mapping), got 5"),
        ("study: [a, b]", "study: expected str, got ['a', 'b']"),
        ("train: {epochs: " + "9" * 300 + "x}", "..."),
    ],
)
def test_malformed_sections_are_listed_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, expected: str
) -> None:
    (tmp_path / "m.csv").write_text("patient_id,image,label\n")
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"manifest: m.csv\n{body}\n" + ("study: s\n" if not body.startswith("study") else ""))
    assert main(["run", str(wf), "--check"]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert max(len(line) for line in err.splitlines()) < 400  # a pasted blob is not echoed whole


def test_an_empty_section_means_its_defaults(tmp_path: Path) -> None:
    from pipeline.config import load_config

    (tmp_path / "m.csv").write_text("patient_id,image,label\n")
    wf = tmp_path / "wf.yaml"
    wf.write_text("study: s\nmanifest: m.csv\ndata:\n")
    assert load_config(wf).data.spatial_size == (64, 64, 64)


def test_a_latin1_manifest_is_named_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.csv").write_bytes("patient_id,image,label,site\nP1,a.nii.gz,1,Zürich\n".encode("latin-1"))
    wf = tmp_path / "wf.yaml"
    wf.write_text("study: s\nmanifest: m.csv\n")
    assert main(["run", str(wf), "--check"]) == 2
    assert "m.csv is not UTF-8 text (byte 0xfc): save it as UTF-8" in capsys.readouterr().err


def test_pretrained_is_found_next_to_the_workflow_and_checked_at_check(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "weights.pt").write_bytes(b"not a checkpoint")
    wf = make_workflow(make_cohort(n_patients=6), model={"arch": "resnet10", "pretrained": "weights.pt"})
    monkeypatch.chdir(tmp_path.parent)  # the path is relative to the workflow, not to here
    assert main(["run", str(wf), "--check"]) == 2
    err = capsys.readouterr().err
    assert "model.pretrained weights.pt: cannot load weights" in err
    assert "file not found" not in err


def test_a_damaged_checkpoint_is_named(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    wf = make_workflow(make_cohort(n_patients=8), train={"epochs": 1, "amp": "off"})
    assert main(["run", str(wf), "--run-id", "r"]) == 0
    run = tmp_path / "reports" / "tiny" / "r"
    (run / "fold_1" / "done.json").unlink()
    (run / "fold_1" / "last.pt").write_bytes(b"\x80garbage")
    capsys.readouterr()
    assert main(["run", str(wf), "--run-id", "r"]) == 1
    err = capsys.readouterr().err
    assert "fold_1/last.pt is damaged" in err
    assert "delete it" in err


def test_folds_left_without_usable_images_are_named_before_training(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = make_cohort(n_patients=8)
    table = pd.read_csv(manifest)
    for rel in table.loc[table["label"] == 1, "image"]:
        (manifest.parent / rel).write_bytes(f"broken {rel}".encode())  # every positive unusable
    capsys.readouterr()
    assert main(["run", str(make_workflow(manifest)), "--run-id", "r"]) == 2
    err = capsys.readouterr().err
    assert "the usable training images are all of one class" in err
    assert "4 image(s) were excluded (see excluded.csv)" in err
    assert not list((tmp_path / "reports" / "tiny" / "r").glob("fold_*"))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount tmpfs folders (``size=1m`` or ``ro``) for the test; skipped where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)]
        done = subprocess.run(command, check=False, capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def test_a_full_disk_is_named_and_leaves_no_partial_file(
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    small_disk: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = small_disk("size=1m")
    wf = make_workflow(make_cohort(n_patients=8), output_dir=str(disk), train={"epochs": 1, "amp": "off"})
    capsys.readouterr()
    assert main(["run", str(wf), "--run-id", "r"]) == 1
    err = capsys.readouterr().err
    assert "is full" in err
    assert "Traceback" not in err
    assert not [p for p in disk.rglob("*") if p.name.startswith(".tmp_")]


def test_a_read_only_output_folder_is_named(
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    small_disk: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = small_disk("ro,size=1m")
    wf = make_workflow(make_cohort(n_patients=8), output_dir=str(disk))
    capsys.readouterr()
    assert main(["run", str(wf), "--run-id", "r"]) == 1
    err = capsys.readouterr().err
    assert "is not writable" in err
    assert "Traceback" not in err


def _gzip_bomb(path: Path, shape: tuple[int, int, int]) -> Path:
    """A valid .nii.gz of zeros: small on disk, ``prod(shape)`` bytes once inflated."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header.binaryblock + b"\0" * 4)
        chunk = b"\0" * (shape[0] * shape[1])
        for _ in range(shape[2]):
            fh.write(chunk)
    return path


def test_a_decompression_bomb_is_refused_before_it_inflates(tmp_path: Path) -> None:
    """Under a 4 GiB address-space cap: 600^3 voxels (216 MB inflated, about 2 GB to load) are
    refused from the header with too_large; nothing is decompressed, no MemoryError."""
    bomb = _gzip_bomb(tmp_path / "bomb.nii.gz", (600, 600, 600))
    assert bomb.stat().st_size < 2_000_000
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from pipeline.cli import main\n"
        f"sys.exit(main(['convert', {str(bomb)!r}, {str(tmp_path / 'out.nii.gz')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "[too_large]" in done.stderr
    assert "GiB per image" in done.stderr
    assert "MemoryError" not in done.stderr
    assert not (tmp_path / "out.nii.gz").exists()


def test_recalibrating_scores_that_are_not_probabilities_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"y": [0, 0, 1, 1] * 10, "logit": rng.normal(0, 3, 40), "part": ["val", "test"] * 20})
    table.to_csv(tmp_path / "t.csv", index=False)
    args = ["evaluate", str(tmp_path / "t.csv"), "--label-col", "y", "--score-col", "logit"]
    args += ["--threshold-split-col", "part", "--recalibrate", "platt", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "not probabilities in [0, 1] (logits? apply a sigmoid first)" in capsys.readouterr().err


def test_unusable_manifest_paths_and_huge_ids_are_listed_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_name = "x" * 300
    rows = f"P1,{long_name}.nii.gz,1\nP2,a\0b.nii.gz,0\n{'P' * 100_000},c.nii.gz,1\n"
    (tmp_path / "m.csv").write_text("patient_id,image,label\n" + rows)
    (tmp_path / "wf.yaml").write_text("study: s\nmanifest: m.csv\n")
    assert main(["run", str(tmp_path / "wf.yaml"), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("image path with a NUL byte or a name over 255 bytes") == 2
    assert "patient_id must be" in err
    assert "Traceback" not in err
    assert max(len(line) for line in err.splitlines()) < 400


def test_image_paths_outside_the_manifest_folder_need_a_listed_root(
    tmp_path: Path,
    make_cohort: Callable[..., Path],
    make_workflow: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = make_cohort(n_patients=6)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    table = pd.read_csv(manifest)
    shutil.move(str(manifest.parent / table.loc[0, "image"]), str(outside / "P000.nii.gz"))
    table.loc[0, "image"] = str(outside / "P000.nii.gz")  # absolute, outside
    shutil.move(str(manifest.parent / table.loc[1, "image"]), str(outside / "P001.nii.gz"))
    table.loc[1, "image"] = "../elsewhere/P001.nii.gz"  # relative, escaping
    table.to_csv(manifest, index=False)
    wf = make_workflow(manifest)
    assert main(["run", str(wf), "--check"]) == 2
    assert capsys.readouterr().err.count("image outside the manifest's folder") == 2
    assert main(["run", str(wf), "--check", "--set", f"data.image_roots=[{outside}]"]) == 0
