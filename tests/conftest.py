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

import pytest
from cohorts import cohort_factory, workflow_factory

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
    """Factory: a manifest of NIfTI images in the test's folder (see cohort_factory)."""
    return cohort_factory(tmp_path)


@pytest.fixture
def make_workflow(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a workflow YAML in the test's folder (see workflow_factory)."""
    return workflow_factory(tmp_path)
