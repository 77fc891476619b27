"""``model.zip``: a study's model that travels without its run folder.

The archive holds the files of ``pipeline.predict.model.model_files`` plus ``archive.json``, which
lists the SHA-256 of every other file. ``export_model`` draws a random leakage key for it and
writes the key beside the archive, ``model.zip.leakage-key`` (hex text, mode 0600 from its first
byte, renamed into place once the archive is written), never inside: the archive can be shared
without revealing which patient ids trained the model, and whoever holds the key can test
whether a given id did (it stays with the data controller). ``read_archive`` verifies the
archive before anything in it is parsed: only the expected names (no paths that leave the
archive), the declared sizes within this machine's memory budget (checked before
decompressing), every hash as listed, nothing missing and nothing extra. The weights are
state_dicts read with ``torch.load(weights_only=True)`` and the config is plain YAML, so nothing
in an archive can run code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import IO

from pipeline import __version__
from pipeline.errors import ValidationError
from pipeline.predict.model import LEAKAGE_FILE, MODEL_INFO_FILE, key_file_for, model_files, new_leakage_key
from pipeline.reporting import artifacts
from pipeline.resources import physical_memory
from pipeline.schema import MODEL_FILE, RESOLVED_CONFIG_FILE

ARCHIVE_INFO_FILE = "archive.json"
_NAMES = re.compile(
    rf"^({re.escape(RESOLVED_CONFIG_FILE)}|{re.escape(MODEL_INFO_FILE)}|{re.escape(LEAKAGE_FILE)}"
    rf"|fold_[0-9]{{1,4}}/{re.escape(MODEL_FILE)})$"
)
_DEFAULT_LIMIT = 16 << 30  # bytes of decompressed content when the machine's memory is unknown


def export_model(run_dir: Path, out: Path) -> tuple[dict[str, str], Path]:
    """Write ``out`` (atomically) from a finished run folder, and its leakage key beside it
    (``key_file_for(out)``); returns name -> SHA-256 and the key file. The key is written to a
    temporary file first and renamed into place only once the archive has been: an export that
    fails leaves an earlier archive with its own key, and no archive is left without its key."""
    key = new_leakage_key()
    files = model_files(run_dir, key)
    key_file = key_file_for(out)
    staged = _stage_leakage_key(key_file, key)
    try:
        hashes = write_archive(files, out)
        _install(staged, key_file)
    finally:
        staged.unlink(missing_ok=True)
    return hashes, key_file


def _stage_leakage_key(path: Path, key: bytes) -> Path:
    """``key`` in a synced temporary file beside ``path``, mode 0600 from its creation."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp_{path.name}.", dir=path.parent)
    except OSError as exc:
        raise artifacts.explain_os_error(exc, path) from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise artifacts.explain_os_error(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _install(staged: Path, path: Path) -> None:
    """Rename ``staged`` over ``path`` (atomic) and sync the folder."""
    try:
        os.replace(staged, path)
    except OSError as exc:
        raise artifacts.explain_os_error(exc, path) from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    what = f"model archive {path}"
    if not path.exists():
        raise ValidationError(["no such file"], what)
    if not path.is_file():
        raise ValidationError(["not a file (a model archive is the model.zip of `cohortnet export`)"], what)
    if not os.access(path, os.R_OK):
        raise ValidationError(["cannot be read (permission denied)"], what)
    if not zipfile.is_zipfile(path):
        raise ValidationError(["not a zip file (truncated, or not a cohortnet model archive)"], what)
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
