"""Where the checkout and the real data in ../shared/data live, for tests in any folder.

A plain module rather than conftest: tests/ and tests/io/ each have a conftest.py, and
``from conftest import ...`` would pick whichever was imported last.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{'/'.join(parts)} (real reference data, absent here)")
    return path
