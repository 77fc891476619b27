"""One-time preprocessing: worker processes give the same tensors as the main process, a bad
scan is recorded and skipped, and the disk cache is reused and invalidated by its key."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import DataConfig, IntensityConfig
from pipeline.datasets import Preprocessing, guarded_chain, prepare_cohort, preprocess_workers
from pipeline.transforms import deterministic_transforms, preprocessing_fingerprint

DATA = DataConfig(spatial_size=(8, 8, 8), intensity=IntensityConfig(mode="zscore"))


def cohort(tmp_path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        path = tmp_path / f"img{i}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(size=(7, 8, 9)).astype(np.float32), np.diag([1.0, 1.2, 2.0, 1.0])), path)
        rows.append((f"img{i}", f"P{i}", str(path), float(i % 2)))
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes((tmp_path / "img0.nii.gz").read_bytes()[:200])
    rows.append(("bad", "P9", str(bad), 1.0))
    nan = rng.normal(size=(7, 8, 9)).astype(np.float32)
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    rows.append(("nan", "P8", str(tmp_path / "nan.nii.gz"), 0.0))
    return pd.DataFrame(rows, columns=["image_id", "patient_id", "path", "target"])


def prepare(table: pd.DataFrame, tmp_path: Path, workers: int, cache: str = "memory", data: DataConfig = DATA):
    prep = Preprocessing(
        deterministic_transforms(data, 3),
        fingerprint=preprocessing_fingerprint(data, 3),
        cache=cache,
        cache_dir=tmp_path / "cache",
        bytes_per_image=4 * 512,
        workers=workers,
    )
    return prepare_cohort(table, prep, {i: f"hash-{i}" for i in table["image_id"]}, progress=False)


def test_workers_give_the_same_tensors_and_the_same_verdicts(tmp_path: Path) -> None:
    table = cohort(tmp_path)
    serial = prepare(table, tmp_path, workers=0)
    parallel = prepare(table, tmp_path, workers=2)
    assert sorted(serial.samples) == sorted(parallel.samples) == [f"img{i}" for i in range(6)]
    for image_id, sample in serial.samples.items():
        other = parallel.samples[image_id]
        assert type(other["image"]) is torch.Tensor  # no MONAI metadata in the cache
        assert other["image"].shape == (1, 8, 8, 8)
        assert torch.equal(sample["image"], other["image"])
        assert sample["target"] == other["target"]
    for prepared in (serial, parallel):
        verdicts = dict(zip(prepared.failures["image_id"], prepared.failures["reason"], strict=True))
        assert set(verdicts) == {"bad", "nan"}
        assert verdicts["nan"] != "preprocessing_error"
        assert all(prepared.failures["message"].str.len() > 0)


def test_chain_keeps_the_order_across_worker_batches(tmp_path: Path) -> None:
    """40 images (bad ones in the middle of worker batches) come back in order, as in-process."""
    table = cohort(tmp_path)
    items = [(f"{r.image_id}-{k}", r.patient_id, r.path, {}) for k in range(5) for r in table.itertuples()]
    chain = deterministic_transforms(DATA, 3)
    serial = list(guarded_chain(items, chain, 0))
    parallel = list(guarded_chain(items, chain, 2, lookahead=24))
    assert len(serial) == len(parallel) == 40
    for (a, fa), (b, fb), item in zip(serial, parallel, items, strict=True):
        assert (fa is None) == (fb is None) == (not item[0].startswith(("bad", "nan")))
        if a is not None:
            assert torch.equal(a, b)
        else:
            assert fa == fb


def test_disk_cache_is_reused_and_keyed_by_the_preprocessing(tmp_path: Path) -> None:
    table = cohort(tmp_path)
    first = prepare(table, tmp_path, workers=2, cache="disk")
    files = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 6
    assert first.stats["cache_hits"] == 0
    again = prepare(table, tmp_path, workers=2, cache="disk")
    assert again.stats["cache_hits"] == 6
    tensor = torch.load(files[0], weights_only=True)
    assert type(tensor) is torch.Tensor
    assert tensor.untyped_storage().nbytes() == 4 * 512  # one image, not the worker batch it came in
    changed = DataConfig(spatial_size=(8, 8, 8), intensity=IntensityConfig(mode="minmax"))
    other = prepare(table, tmp_path, workers=0, cache="disk", data=changed)
    assert other.stats["cache_hits"] == 0
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 12


def test_worker_count_follows_the_cpus_and_the_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)))
    assert preprocess_workers(None) == 8
    assert preprocess_workers(None, ranks_per_node=4) == 2
    assert preprocess_workers(None, ranks_per_node=8) == 0
    assert preprocess_workers(3) == 3
    assert preprocess_workers(0) == 0


def test_the_cache_key_changes_with_the_readers_code_and_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import monai

    from pipeline import transforms

    data = DataConfig(spatial_size=(8, 8, 8))
    key = json.loads(preprocessing_fingerprint(data, 3))
    assert key["code"]["monai"] == monai.__version__
    assert len(key["code"]["source"]) == 16
    monkeypatch.setattr(transforms, "preprocessing_code", lambda: {**key["code"], "source": "0" * 16})
    assert preprocessing_fingerprint(data, 3) != json.dumps(key, sort_keys=True)  # a fixed reader: a new key
