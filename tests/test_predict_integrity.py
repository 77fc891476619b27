"""`cohortnet predict`'s records after damage and interruptions: a damaged model.zip, a ledger cut by
a kill inside an append, and the shard count of a `--dask` prediction kept across reruns."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.errors import CohortnetError, ValidationError

FILES = {
    "config.yaml": b"a: 1\n" * 1000,
    "model.json": b"{}",
    "leakage.json": b"{}",
    "fold_0/model.pt": bytes(range(256)) * 400,
    "fold_1/model.pt": bytes(range(255, -1, -1)) * 400,
}


def archive(tmp_path: Path) -> tuple[Path, bytearray]:
    from pipeline.predict.archive import write_archive

    path = tmp_path / "model.zip"
    write_archive(FILES, path)
    return path, bytearray(path.read_bytes())


def data_offset(path: Path, name: str) -> int:
    """Where the (compressed) bytes of member ``name`` start in the file."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    raw = path.read_bytes()
    name_len, extra_len = (
        int.from_bytes(raw[info.header_offset + k : info.header_offset + k + 2], "little") for k in (26, 28)
    )
    return info.header_offset + 30 + name_len + extra_len


def test_a_damaged_archive_lists_every_damaged_member(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, raw = archive(tmp_path)
    assert main(["export", "--verify", str(path)]) == 0
    for name in ("fold_0/model.pt", "fold_1/model.pt"):  # flipped bytes inside the deflated weights
        start = data_offset(path, name)
        for k in range(10, 40):
            raw[start + k] ^= 0xFF
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["export", "--verify", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert f"model archive {damaged}" in err
    assert "fold_0/model.pt cannot be read" in err
    assert "fold_1/model.pt cannot be read" in err
    assert "Traceback" not in err
    assert main(["predict", str(damaged), str(tmp_path), "--out", str(tmp_path / "p")]) == 2
    assert "fold_0/model.pt cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_crc_mismatch_or_a_broken_directory_is_a_listed_problem(tmp_path: Path) -> None:
    from pipeline.predict.archive import read_archive

    stored = tmp_path / "stored.zip"
    with zipfile.ZipFile(stored, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in FILES.items():
            zf.writestr(name, data)
        zf.writestr("archive.json", "{}")
    raw = bytearray(stored.read_bytes())
    raw[data_offset(stored, "config.yaml") + 5] ^= 0x01  # the stored bytes differ from their CRC-32
    crc = tmp_path / "crc.zip"
    crc.write_bytes(bytes(raw))
    with pytest.raises(ValidationError) as err:
        read_archive(crc)
    assert any("config.yaml cannot be read" in p and "CRC" in p for p in err.value.problems)
    path, raw = archive(tmp_path)
    with zipfile.ZipFile(path) as zf:
        raw[zf.start_dir] ^= 0xFF  # the signature of the central directory's first entry
    broken = tmp_path / "broken.zip"
    broken.write_bytes(bytes(raw))
    with pytest.raises(ValidationError) as err:
        read_archive(broken)
    assert "the zip directory is unreadable" in err.value.problems[0]
    assert str(broken) in str(err.value)


def test_an_append_after_a_cut_line_keeps_every_record(tmp_path: Path) -> None:
    from pipeline.predict.ledger import LEDGER_FILE, Ledger

    ledger = Ledger.open(tmp_path)
    ledger.record_chunk(pd.DataFrame({"image_id": ["a", "b"], "score": [0.1, 0.2]}), [])
    with open(tmp_path / LEDGER_FILE, "a", encoding="utf-8") as fh:  # killed inside the next append
        fh.write('{"image_id": "c", "part": "part-0000')
    resumed = Ledger.open(tmp_path)
    assert sorted(resumed.done) == ["a", "b"]
    resumed.record_chunk(pd.DataFrame({"image_id": ["c"], "score": [0.3]}), [])
    resumed.record_chunk(pd.DataFrame(), [{"image_id": "d", "reason": "corrupt_file", "message": "cut"}])
    again = Ledger.open(tmp_path)
    assert sorted(again.done) == ["a", "b", "c"]
    assert again.failed == {"d": ("corrupt_file", "cut")}
    # a whole record that lost only its newline is kept, not cut
    with open(tmp_path / LEDGER_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"image_id": "e", "status": "failed", "reason": "r", "message": "m"}))
    last = Ledger.open(tmp_path)
    last.record_chunk(pd.DataFrame({"image_id": ["f"], "score": [0.5]}), [])
    final = Ledger.open(tmp_path)
    assert sorted(final.done) == ["a", "b", "c", "f"]
    assert sorted(final.failed) == ["d", "e"]


def test_the_dask_shard_count_is_recorded_once_and_kept(tmp_path: Path) -> None:
    from pipeline.predict.fanout import shard_count

    out = tmp_path / "p"
    assert shard_count(out, None, 0) == 2  # a cluster still scaling up: at least one worker's worth
    assert json.loads((out / "shards" / "shards.json").read_text()) == {"n_shards": 2}
    assert shard_count(out, None, 8) == 2  # a rerun with more workers resumes the same shards
    assert shard_count(out, 2, 8) == 2
    with pytest.raises(ValidationError, match="cut into 2 shards by its first run"):
        shard_count(out, 5, 8)
    assert shard_count(tmp_path / "q", 5, 1) == 5
    old = tmp_path / "old"  # made before the count was recorded: its shard folders say it
    for i in range(3):
        (old / "shards" / f"{i}-of-3").mkdir(parents=True)
    assert shard_count(old, None, 1) == 3


def test_no_worker_on_the_cluster_is_a_clear_error() -> None:
    from pipeline.predict.fanout import wait_for_workers

    class Client:
        def __init__(self, workers: int) -> None:
            self.workers = workers

        def wait_for_workers(self, n_workers: int, timeout: float) -> None:
            if self.workers < n_workers:
                raise TimeoutError(f"only {self.workers} workers after {timeout} s")

        def scheduler_info(self) -> dict[str, dict[str, object]]:
            return {"workers": {f"w{k}": {} for k in range(self.workers)}}

    assert wait_for_workers(Client(3), "tcp://h:8786", timeout=0.1) == 3
    with pytest.raises(CohortnetError, match="no worker joined the scheduler"):
        wait_for_workers(Client(0), "tcp://h:8786", timeout=0.1)
