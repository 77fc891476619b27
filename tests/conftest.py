"""Shared fixtures: small synthetic NIfTI cohorts, manifests and workflows.

Volumes have deliberately unequal shapes such as (7, 8, 9), so that a swapped axis fails a test.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from volumes import blob_volume, write_nifti

os.environ.setdefault("OMP_NUM_THREADS", "2")


# --------------------------------------------------------------------------- skips that CI must not take

# Tests that need a tool the machine may lack skip with a reason naming it; CI installs the tools
# (make test: the browser target), so there such a skip means a test silently did not run: a failure.
# GPU skips, the absent reference data and the tmpfs tests (mounting needs privileges no install
# gives, e.g. root in an unprivileged container) stay skips everywhere.
MUST_RUN_UNDER_CI = re.compile(r"chromium|headless browser", re.IGNORECASE)


def under_ci() -> bool:
    """``CI`` set to anything but an explicit false ("", 0, false, no, off)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def skip_reason(report: pytest.TestReport) -> str:
    """The reason of a skipped report (its longrepr is (path, line, "Skipped: reason"))."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: pytest.TestReport = yield  # type: ignore[misc]
    if report.skipped and not hasattr(report, "wasxfail") and under_ci():
        reason = skip_reason(report)
        if MUST_RUN_UNDER_CI.search(reason):
            report.outcome = "failed"
            report.longrepr = f"skipped under CI ({reason}); CI must run this test: install what it needs"
    return report  # type: ignore[return-value]


# --------------------------------------------------------------------------- torch's global state

# Training sets torch's thread count (train.num_threads) and deterministic mode (train.deterministic)
# process-wide; each test gets them back as they were. torch is not imported here for that (a test
# run without torch, e.g. tests/evaluation, stays as fast): where torch is first imported during a
# test, its state right after that import is what the test leaves behind.
TORCH_AT_IMPORT: dict[str, Any] = {}


def torch_state(torch: ModuleType) -> dict[str, Any]:
    return {
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def restore_torch_state(torch: ModuleType, state: dict[str, Any]) -> None:
    if torch.get_num_threads() != state["threads"]:
        torch.set_num_threads(state["threads"])
    torch.use_deterministic_algorithms(state["deterministic"], warn_only=state["warn_only"])
    torch.backends.cudnn.deterministic = state["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = state["cudnn_benchmark"]


class RecordTorchAtImport(importlib.abc.MetaPathFinder):
    """Finds torch as the path finder does, with its loader wrapped to record, once torch has been
    imported, the state a fresh import sets (TORCH_AT_IMPORT); then it leaves sys.meta_path."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_record(module: ModuleType) -> None:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            exec_module(module)
            TORCH_AT_IMPORT.update(torch_state(module))

        loader.exec_module = exec_and_record  # type: ignore[method-assign]
        return spec


if "torch" in sys.modules:
    TORCH_AT_IMPORT.update(torch_state(sys.modules["torch"]))
else:
    sys.meta_path.insert(0, RecordTorchAtImport())


@pytest.fixture(autouse=True)
def _restore_torch_global_state() -> Iterator[None]:
    """torch's thread count and deterministic flags after the test as they were before it."""
    torch = sys.modules.get("torch")
    before = torch_state(torch) if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    state = before if before is not None else TORCH_AT_IMPORT  # torch first imported by this test
    if torch is not None and state:
        restore_torch_state(torch, state)


@pytest.fixture
def make_cohort(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a manifest of NIfTI images; returns the manifest path.

    ``make_cohort(n_patients=12, shape=(7, 8, 9), second_scan=(0, 3), split=True, extra=True)``
    """

    def factory(
        n_patients: int = 12,
        shape: tuple[int, ...] = (7, 8, 9),
        second_scan: tuple[int, ...] = (),
        split: bool = False,
        extra: bool = True,
        seed: int = 0,
        folder: str = "cohort",
    ) -> Path:
        rng = np.random.default_rng(seed)
        root = tmp_path / folder
        rows: list[dict[str, Any]] = []
        for i in range(n_patients):
            pid = f"P{i:03d}"
            label = i % 2
            for scan in range(2 if i in second_scan else 1):
                rel = f"images/{pid}_{scan}.nii.gz"
                write_nifti(root / rel, blob_volume(rng, shape, bool(label)))
                row: dict[str, Any] = {"patient_id": pid, "image": rel, "label": label}
                if split:
                    # consecutive pairs share a split, so every split holds both labels
                    row["split"] = ("train", "train", "val", "test")[(i // 2) % 4]
                if extra:
                    row["site"] = "A" if i % 3 else "B"
                rows.append(row)
        manifest = root / "manifest.csv"
        pd.DataFrame(rows).to_csv(manifest, index=False)
        return manifest

    return factory


@pytest.fixture
def make_workflow(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a workflow YAML next to ``manifest``; keyword sections override the tiny defaults."""

    def factory(manifest: Path, name: str = "wf.yaml", **sections: Any) -> Path:
        wf: dict[str, Any] = {
            "study": "tiny",
            "manifest": os.path.relpath(manifest, tmp_path),
            "task": {"label": "label", "positive": 1},
            "model": {"arch": "resnet10", "spatial_dims": 3, "stem_stride": 2},
            "data": {"spatial_size": [8, 8, 8], "intensity": {"mode": "zscore"}},
            "train": {"epochs": 1, "batch_size": 4, "lr": 0.001, "seed": 0},
            "validation": {"scheme": "kfold", "folds": 2},
            "evaluation": {"aggregate": "mean", "n_bootstrap": 200},
            "report": {"explain": {"cases": 0}},  # Grad-CAM is tested where a test asks for it
            "output_dir": "reports",
        }
        for key, value in sections.items():
            if key == "validation" and "scheme" in value:  # another scheme reads other keys
                wf[key] = value
            elif isinstance(value, dict) and isinstance(wf.get(key), dict):
                wf[key] = {**wf[key], **value}
            else:
                wf[key] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(wf, sort_keys=False))
        return path

    return factory
