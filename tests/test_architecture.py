"""The layer boundaries of the design notes, checked by import-linter (contracts in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" not in proc.stdout.lower().replace("0 broken", "")


MAX_FUNCTION_LINES = 60  # the unit size a newcomer can read at once; parameters are limited by ruff (PLR0913)


def test_no_function_is_longer_than_a_screen() -> None:
    import ast

    long = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1 if node.end_lineno else 0
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)


def test_ruff_limits_hold() -> None:
    """ruff with the project's limits (at most 8 parameters, 50 statements, 12 branches, 7 returns)."""
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    proc = subprocess.run(
        [exe, "check", "--select", "PLR09", "pipeline", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
