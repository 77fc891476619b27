"""The sealed run folder: what it was made from, who writes it, and whether its records agree.

- **Seal** (``seal.json``): at creation the run records a fingerprint of everything its results
  depend on: the resolved config (less the keys that only change speed), the manifest's SHA-256,
  a digest of every image's content hash, the splits and the code version. Resuming into the same
  folder recomputes it and refuses (exit 2, with a short diff) when anything differs, so folds
  made from different inputs are never pooled.
- **Fold records**: a finished fold's ``done.json`` carries the seal's digest and its prediction
  counts; pooling and ``report`` refuse folds whose records disagree with the seal or with the
  saved predictions (a truncated ``predictions.csv`` is caught, not reported on).
- **One writer** (``run.lock``): ``fcntl.flock`` on a lock file for the length of the run. The
  kernel releases it when the process dies, so a lock left by a killed run is simply taken over;
  a second live run on the folder is refused at once, naming the holder's process id.
- **Names stay inside** ``output_dir``: run ids are plain names.
- **Damaged files** (empty, truncated, not UTF-8, a column missing): ``read_table`` and
  ``read_record`` are the run folder's readers; they refuse such a file with a ValidationError
  naming it (exit 2), never a traceback and never a report made from half a table.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.errors import CohortnetError, ValidationError
from pipeline.provenance import package_versions
from pipeline.reporting import artifacts
from pipeline.schema import FOLD, FOLD_DONE_FILE, INNER, LOCK_FILE, PATIENT_ID, ROLE, SCORE, SEAL_FILE, TARGET

# keys that change how fast a run goes, never what it computes, and the manifest's path (its
# content is sealed by hash): a resume may change them
OPERATIONAL_KEYS = (
    "output_dir",
    "manifest",
    "data.workers",
    "data.cache",
    "train.num_threads",
    "train.device",
    "tracking.mlflow",
    "tracking.experiment",
    # what the report shows, never what is trained or scored
    "report.covariates",
    "report.explain.cases",
    "report.explain.method",
    "report.explain.layer",
    "report.explain.nifti",
    "report.explain.cpu_max_parameters",
)
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunLockedError(CohortnetError):
    exit_code = 2


def check_run_id(run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ValidationError(
            [f"--run-id must be a plain name (letters, digits, '.', '_', '-'; no path), got {run_id!r}"],
            "command line",
        )


# columns a run folder's tables hold as whole numbers (fold numbers, 0/1 targets) or as numbers
_INTEGER_COLUMNS = (FOLD, TARGET)
_NUMERIC_COLUMNS = (SCORE,)


def damaged(path: Path, run_dir: Path, why: str) -> ValidationError:
    """The error for a run-folder file that cannot be used: it names the folder, the file and why."""
    try:
        name = Path(path).relative_to(run_dir).as_posix()
    except ValueError:
        name = str(path)
    return ValidationError(
        [f"run folder {run_dir}: {name} is damaged ({why}): rerun the study or restore the file"], "run folder"
    )


def _read_problem(exc: Exception) -> str:
    """Why a file could not be read or parsed, in a few words."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x})"
    if isinstance(exc, pd.errors.EmptyDataError):
        return "the file is empty"
    if isinstance(exc, json.JSONDecodeError):
        return (
            "the file is empty" if not exc.doc.strip() else f"not valid JSON at line {exc.lineno}, column {exc.colno}"
        )
    if isinstance(exc, pd.errors.ParserError):
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        return f"not a well-formed CSV: {detail.removeprefix('Error tokenizing data. C error: ')[:200]}"
    if isinstance(exc, OSError):
        return f"cannot be read: {exc.strerror or type(exc).__name__}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def read_record(path: Path, run_dir: Path) -> dict[str, Any]:
    """A run-folder JSON record (``seal.json``, a fold's ``done.json``, ``nested.json``) as a mapping;
    a missing, truncated or unreadable file is a ValidationError naming it."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise damaged(path, run_dir, "the file is missing") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise damaged(path, run_dir, _read_problem(exc)) from None
    if not isinstance(record, dict):
        raise damaged(path, run_dir, f"expected a JSON object, found a {type(record).__name__}")
    return record


def read_table(path: Path, run_dir: Path, required: tuple[str, ...] = (), **read_csv: Any) -> pd.DataFrame:
    """A run-folder CSV (``predictions.csv``, ``splits.csv`` ...) with the ``required`` columns; fold
    numbers and targets must be whole numbers and scores numbers. A missing, empty, malformed or
    non-UTF-8 file, or one without a required column, is a ValidationError naming it."""
    try:
        table = pd.read_csv(path, **read_csv)
    except FileNotFoundError:
        raise damaged(path, run_dir, "the file is missing") from None
    except (OSError, ValueError) as exc:  # EmptyDataError, ParserError and UnicodeDecodeError are ValueErrors
        raise damaged(path, run_dir, _read_problem(exc)) from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise damaged(path, run_dir, f"no column {', '.join(repr(c) for c in missing)}")
    for column in (c for c in required if c in _INTEGER_COLUMNS + _NUMERIC_COLUMNS):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | ((values != np.round(values)) if column in _INTEGER_COLUMNS else False)
        if bad.any():
            kind = "whole numbers" if column in _INTEGER_COLUMNS else "numbers"
            raise damaged(path, run_dir, f"column {column!r} holds {int(bad.sum())} value(s) that are not {kind}")
    return table


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): obj}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(
    config: dict[str, Any],
    manifest_sha256: str,
    image_hashes: dict[str, str],
    splits: pd.DataFrame,
    code: str | None,
    weights_sha256: str | None = None,
) -> dict[str, Any]:
    """What the run's results depend on, in a form that can be compared and diffed: the config,
    the data's content, the splits, the code (cohortnet, its commit, torch and MONAI) and the
    content of ``model.pretrained`` (its path alone is in the config)."""
    flat = {k: v for k, v in _flatten(config).items() if k not in OPERATIONAL_KEYS}
    columns = [FOLD, PATIENT_ID, ROLE, *([INNER] if INNER in splits.columns else [])]  # nested: both levels
    split_rows = sorted(splits[columns].astype(str).itertuples(index=False, name=None))
    seal = {
        "config": flat,
        "manifest_sha256": manifest_sha256,
        "images": _digest(sorted(image_hashes.items())),
        "n_images": len(image_hashes),
        "splits": _digest(split_rows),
        "code": {"cohortnet": __version__, "commit": code, **package_versions(("torch", "monai"))},
    }
    if weights_sha256 is not None:
        seal["pretrained_sha256"] = weights_sha256
    return {**seal, "digest": _digest(seal)}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    for key in sorted(set(old.get("config", {})) | set(new["config"])):
        a, b = old.get("config", {}).get(key, "(absent)"), new["config"].get(key, "(absent)")
        if a != b:
            lines.append(f"config {key}: {a!r} -> {b!r}")
    if old.get("manifest_sha256") != new["manifest_sha256"]:
        lines.append("the manifest's content changed")
    if old.get("images") != new["images"]:
        lines.append(f"image contents changed ({old.get('n_images')} -> {new['n_images']} images)")
    if old.get("pretrained_sha256") != new.get("pretrained_sha256"):
        lines.append("the content of model.pretrained changed")
    if old.get("splits") != new["splits"]:
        lines.append("the splits changed")
    if old.get("code") != new["code"]:
        lines.append(f"code version {old.get('code')} -> {new['code']}")
    return lines


def seal_or_check(run_dir: Path, seal: dict[str, Any]) -> bool:
    """Write the seal of a new run folder, or check a resumed one against it; True when resuming."""
    path = run_dir / SEAL_FILE
    if not path.is_file():
        artifacts.write_json(path, seal)
        return False
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValidationError([f"{path}: the run's seal is unreadable; start a new run"], "run folder") from None
    if old.get("digest") == seal["digest"]:
        return True
    diff = _differences(old, seal)[:12] or ["the recorded fingerprint differs"]
    diff.append(f"{run_dir.name} was made from other inputs: start a new run (another --run-id, or none)")
    raise ValidationError(diff, f"resumed run folder {run_dir}")


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run.lock`` for the block; refuse at once when another live process holds it."""
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunLockedError(
                f"{run_dir} is in use by {holder}; wait for it to finish, or start a new run (another --run-id)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def is_finished(job_dir: Path) -> bool:
    """Whether a job's folder holds its ``done.json`` (written last, so everything else is there)."""
    return (job_dir / FOLD_DONE_FILE).is_file()


def check_visible(run_dir: Path, seal_digest: str) -> str | None:
    """Why a process (a cluster worker) cannot write into this run folder, or None: the folder and
    the seal this run made must be there, or the worker does not share the driver's filesystem."""
    try:
        recorded = json.loads((run_dir / SEAL_FILE).read_text(encoding="utf-8")).get("digest")
    except (OSError, ValueError):
        recorded = None
    if recorded == seal_digest:
        return None
    where = f"the process {os.getpid()} on {socket.gethostname()}"
    if recorded is None:
        return (
            f"{where} cannot see run folder {run_dir} (no readable {SEAL_FILE}): "
            "every worker needs the run folder on a filesystem it shares with the driver"
        )
    return f"{where} sees run folder {run_dir} sealed by another run: it is not the driver's folder"


def fold_record(seal_digest: str, predictions: pd.DataFrame) -> dict[str, Any]:
    """What a finished fold records about itself: the seal it was made under, its prediction counts."""
    counts = predictions[ROLE].value_counts()
    return {"seal": seal_digest, "n_test": int(counts.get("test", 0)), "n_val": int(counts.get("val", 0))}


def recorded_seal(run_dir: Path) -> str | None:
    """The digest in the run's ``seal.json``; None for a run folder from before the seal."""
    path = run_dir / SEAL_FILE
    if not path.is_file():
        return None
    digest = read_record(path, run_dir).get("digest")
    if not isinstance(digest, str):
        raise damaged(path, run_dir, "it records no digest")
    return digest


def check_fold_records(run_dir: Path, folds: list[int], seal_digest: str | None = None) -> list[dict[str, Any]]:
    """The folds' ``done.json`` records, in the order of ``folds``; raises when one is missing,
    damaged or made under another seal (a run folder from before the seal has none to compare)."""
    digest = seal_digest or recorded_seal(run_dir)
    records, problems = [], []
    for fold in folds:
        done = run_dir / f"fold_{fold}" / FOLD_DONE_FILE
        if not done.is_file():
            problems.append(f"fold {fold} is not finished ({done.name} missing)")
            continue
        record = read_record(done, run_dir)
        if digest is not None and record.get("seal") != digest:
            problems.append(f"fold {fold} was made from other inputs than this run's seal")
        records.append(record)
    if problems:
        raise ValidationError(problems, f"run folder {run_dir}")
    return records


def job_record(done: Path, seal_digest: str) -> dict[str, Any]:
    """A finished job's ``done.json`` (an inner fold of nested CV), made under this run's seal."""
    if not done.is_file():
        raise ValidationError([f"{done.parent.name} is not finished ({done.name} missing)"], str(done.parent.parent))
    record = read_record(done, done.parent.parent)
    if record.get("seal") != seal_digest:
        raise ValidationError([f"{done.parent.name} was made from other inputs than this run's seal"], str(done.parent))
    return record


def check_predictions_complete(run_dir: Path, test: pd.DataFrame, val: pd.DataFrame, splits: pd.DataFrame) -> None:
    """Refuse predictions that do not match what the folds recorded and what the splits allow."""
    if not (run_dir / SEAL_FILE).is_file():
        return  # a run folder from before the seal: nothing to check against
    folds = sorted(int(f) for f in splits[FOLD].unique())
    records = dict(zip(folds, check_fold_records(run_dir, folds), strict=True))
    problems = []
    for fold in folds:
        for role, frame, key in (("test", test, "n_test"), ("val", val, "n_val")):
            rows = frame[frame[FOLD].astype(int) == fold]
            expected = records[fold].get(key)
            if expected is not None and len(rows) != expected:
                problems.append(f"fold {fold}: {len(rows)} {role} predictions saved, the fold made {expected}")
            allowed = set(splits.loc[(splits[FOLD].astype(int) == fold) & (splits[ROLE] == role), PATIENT_ID])
            stray = set(rows[PATIENT_ID].astype(str)) - {str(p) for p in allowed}
            if stray:
                problems.append(f"fold {fold}: {len(stray)} {role} predictions for patients outside its {role} split")
    if problems:
        raise ValidationError([*problems, "the predictions are incomplete or damaged: rerun the study"], str(run_dir))
