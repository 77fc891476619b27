"""Exceptions that carry a user-facing message; cli.py maps them to exit codes.

Messages never contain identifying DICOM values: they name a file by its image id or pseudonym
and state the problem, e.g. ``ScanError("missing_slices", "3 slices missing between z=10 and z=16", "P007/ct")``.
"""

from __future__ import annotations

from collections.abc import Iterable


class CohortnetError(Exception):
    """Base class for errors that are reported to the user without a traceback."""

    exit_code = 1


class ValidationError(CohortnetError):
    """The workflow or manifest is invalid. ``problems`` lists every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: Iterable[str], what: str = "input") -> None:
        self.problems = list(problems)
        self.what = what
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the {what}:\n{lines}")

    def __reduce__(self) -> tuple[type, tuple[list[str], str]]:  # intact after a trip from a Dask worker
        return type(self), (self.problems, self.what)


class ScanError(CohortnetError):
    """One image or series cannot be used.

    ``reason`` is a short machine-readable code (``corrupt_file``, ``missing_slices``,
    ``nonfinite_voxels`` ...) that lands in exclusion tables; ``source`` names the file by a
    non-identifying label (image id, pseudonym or a path relative to the scanned root).
    """

    exit_code = 3

    def __init__(self, reason: str, message: str, source: str = "") -> None:
        self.reason = reason
        self.source = source
        self.detail = message
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{message} [{reason}]")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # intact after a trip from a Dask worker
        return type(self), (self.reason, self.detail, self.source)


class LeakageError(CohortnetError):
    """A patient appears on both sides of a split."""

    exit_code = 4


class NonFiniteError(CohortnetError):
    """Training produced NaN or Inf (loss, gradient or scores): the fold is stopped, nothing is pooled."""

    exit_code = 5
