"""``model.zip``: a study's model that travels without its run folder.

The archive holds the files of ``pipeline.predict.model.model_files`` plus ``archive.json``, which
lists the SHA-256 of every other file. ``read_archive`` verifies the archive before anything in it
is parsed: only the expected names (no paths that leave the archive), the declared sizes within
this machine's memory budget (checked before decompressing), every hash as listed, nothing
missing and nothing extra. The weights are state_dicts read with ``torch.load(weights_only=True)``
and the config is plain YAML, so nothing in an archive can run code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import IO

from pipeline import __version__
from pipeline.errors import CohortnetError, ValidationError
from pipeline.predict.model import LEAKAGE_FILE, MODEL_INFO_FILE, model_files
from pipeline.reporting import artifacts
from pipeline.resources import physical_memory
from pipeline.schema import MODEL_FILE, RESOLVED_CONFIG_FILE

ARCHIVE_INFO_FILE = "archive.json"
_NAMES = re.compile(
    rf"^({re.escape(RESOLVED_CONFIG_FILE)}|{re.escape(MODEL_INFO_FILE)}|{re.escape(LEAKAGE_FILE)}"
    rf"|fold_[0-9]{{1,4}}/{re.escape(MODEL_FILE)})$"
)
_DEFAULT_LIMIT = 16 << 30  # bytes of decompressed content when the machine's memory is unknown


def export_model(run_dir: Path, out: Path) -> dict[str, str]:
    """Write ``out`` (atomically) from a finished run folder; returns name -> SHA-256."""
    return write_archive(model_files(run_dir), out)


def write_archive(files: dict[str, bytes], out: Path) -> dict[str, str]:
    """The model's files (``model_files``' names) as a zip with ``archive.json`` listing their hashes."""
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    info = {
        "format": "cohortnet-model",
        "cohortnet": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "files": hashes,
    }

    def write(fh: IO[bytes]) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in sorted(files.items()):
                zf.writestr(name, data)
            zf.writestr(ARCHIVE_INFO_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")

    artifacts.write_with(out, write)
    return hashes


def read_archive(path: Path) -> dict[str, bytes]:
    """The verified files of an archive (name -> bytes); ValidationError listing every problem."""
    if not zipfile.is_zipfile(path):
        raise CohortnetError(f"{path}: not a cohortnet model archive (not a zip file)")
    what = f"model archive {path}"
    try:
        zf = zipfile.ZipFile(path)
    except _DAMAGED as exc:
        raise ValidationError([f"the zip directory is unreadable: {_why(exc)} (damaged archive)"], what) from None
    with zf:
        infos = zf.infolist()
        members = {i.filename: i for i in infos}
        problems = _member_problems(infos)
        if problems:
            raise ValidationError(problems, what)
        contents, problems = _read_members(zf, list(members))
    if ARCHIVE_INFO_FILE not in contents:
        raise ValidationError(problems, what)
    try:
        listed = dict(json.loads(contents.pop(ARCHIVE_INFO_FILE))["files"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError([*problems, f"{ARCHIVE_INFO_FILE} is unreadable ({exc})"], what) from None
    damaged = set(members) - set(contents) - {ARCHIVE_INFO_FILE}
    problems += _hash_problems({k: v for k, v in listed.items() if k not in damaged}, contents)
    if problems:
        raise ValidationError(problems, what)
    return contents


# what a damaged zip raises: a bad CRC or header (BadZipFile), flipped bits in deflated data
# (zlib.error), a cut-off member (EOFError), an unreadable file (OSError), an unsupported
# compression method or an encrypted member (NotImplementedError, RuntimeError)
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


def _why(exc: BaseException) -> str:
    name = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
    return f"{name}: {str(exc)[:120]}"


def _read_members(zf: zipfile.ZipFile, names: list[str]) -> tuple[dict[str, bytes], list[str]]:
    """Every member's bytes that can be read; one problem per member that cannot (all listed)."""
    contents: dict[str, bytes] = {}
    problems: list[str] = []
    for name in names:
        try:
            contents[name] = zf.read(name)
        except _DAMAGED as exc:
            problems.append(f"{name} cannot be read: {_why(exc)} (damaged archive)")
    return contents, problems


def _member_problems(infos: list[zipfile.ZipInfo]) -> list[str]:
    """Unexpected or repeated names, a missing index, and a decompressed size beyond the memory budget."""
    members = Counter(i.filename for i in infos)
    problems = [
        f"unexpected member {name[:80]!r}" for name in members if name != ARCHIVE_INFO_FILE and not _NAMES.match(name)
    ]
    problems += [f"member {name[:80]!r} appears {k} times" for name, k in members.items() if k > 1]
    if ARCHIVE_INFO_FILE not in members:
        problems.append(f"{ARCHIVE_INFO_FILE} is missing")
    total = sum(i.file_size for i in infos)
    memory = physical_memory()
    limit = memory // 4 if memory else _DEFAULT_LIMIT
    if total > limit:
        problems.append(
            f"the members decompress to {total / 2**30:.1f} GiB, beyond this machine's limit of {limit / 2**30:.1f} GiB"
        )
    return problems


def _hash_problems(listed: dict[str, str], files: dict[str, bytes]) -> list[str]:
    problems = [f"{name} is listed but missing" for name in sorted(set(listed) - set(files))]
    problems += [f"{name} is present but not listed" for name in sorted(set(files) - set(listed))]
    for name in sorted(set(listed) & set(files)):
        if hashlib.sha256(files[name]).hexdigest() != listed[name]:
            problems.append(f"{name} does not match its recorded SHA-256 (damaged or altered)")
    return problems
