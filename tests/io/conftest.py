"""Fixtures for the ingestion tests: the malformed corpus, a canary cohort, the shared real data."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import CanaryTree, build_corpus, make_canary_tree

from pipeline.privacy import REDACTOR


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="session")
def corpus(corpus_root: Path) -> dict[str, Path]:
    """Every case of ``factories.CORPUS`` written once per session under ``corpus_root/<case>``:
    case -> path to load."""
    return build_corpus(corpus_root)


@pytest.fixture
def canary_tree(tmp_path: Path) -> CanaryTree:
    return make_canary_tree(tmp_path / "export")


@pytest.fixture(autouse=True)
def _fresh_redactor() -> None:
    """Registered identifiers are process-wide; start each test without those of the last one."""
    REDACTOR.clear()
