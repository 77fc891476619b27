"""``cohortnet scan``: a tree of any depth -> a manifest of usable images and an exclusions table.

Headers only (pixel data deferred); one file's failure is one exclusion row, never an abort.
Every series, NIfTI file and stray file ends as ok, excluded(reason), error(reason) or
skipped(reason). Outputs name images and files by ids (``s-``/``n-``/``f-`` digests, keyed when a
pseudonymisation key is given); paths and identifying values go only to the optional
re-identification table, which must live outside the output folder.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from pipeline.errors import ScanError, ValidationError
from pipeline.io import checks, sniff
from pipeline.io.dicom import DicomHeader, read_header
from pipeline.io.ids import Ids
from pipeline.io.isolation import WORKER_CRASH, default_workers, map_isolated
from pipeline.io.labels import LabelTable, read_labels
from pipeline.io.layout import LAYOUT_DIR, LINK_MODES, Entry, build_layout, image_path
from pipeline.io.loader import NONFINITE_POLICIES, dicom_meta, iter_files
from pipeline.io.reasons import ERROR, EXCLUDED, OK, SKIPPED, verdict_of
from pipeline.io.series import Stack, group_stacks
from pipeline.io.volume import StackPlan, plan_stack
from pipeline.privacy import load_key, register_identifying, register_root
from pipeline.reporting.artifacts import write_csv
from pipeline.schema import IMAGE, LABEL, PATIENT_ID, SERIES_ID, STUDY_ID

log = logging.getLogger("pipeline.io.scan")

QC_COLUMNS = (
    "format",
    "modality",
    "manufacturer",
    "shape",
    "spacing",
    "orientation",
    "slice_spacing_deviation",
    "n_files",
    "n_volumes",
    "series_description",
    "transfer_syntax",
    "photometric",
    "qc_warnings",
)
MANIFEST_COLUMNS = (PATIENT_ID, IMAGE, LABEL, STUDY_ID, SERIES_ID, *QC_COLUMNS)
EXCLUSION_COLUMNS = (
    "source",
    "kind",
    "verdict",
    "reason",
    "message",
    PATIENT_ID,
    STUDY_ID,
    SERIES_ID,
    "n_files",
)
REID_COLUMNS = (
    "id",
    "kind",
    PATIENT_ID,
    "original_patient_id",
    STUDY_ID,
    "original_study_uid",
    "original_accession",
    "relative_paths",
)
EXIT_OK, EXIT_PARTIAL, EXIT_NOTHING_USABLE = 0, 8, 9
VERIFY_MODES = ("header", "sample", "full")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
ALARM_MIN, ALARM_SHARE = 3, 0.10


@dataclass
class ScanSummary:
    """What ``scan_tree`` wrote and how every input ended."""

    manifest: Path
    exclusions: Path
    n_files: int
    n_images: int
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (verdict, reason, kind) -> rows
    files: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # same key -> files
    alarms: list[str] = field(default_factory=list)
    labels_unmatched: int = 0
    images_unlabelled: int = 0
    seconds: float = 0.0

    @property
    def n_failed(self) -> int:
        return sum(n for (verdict, _, _), n in self.counts.items() if verdict in (EXCLUDED, ERROR))

    @property
    def exit_code(self) -> int:
        """0: every image usable; 8: some excluded or broken; 9: nothing usable."""
        if self.n_images == 0:
            return EXIT_NOTHING_USABLE
        return EXIT_PARTIAL if self.n_failed else EXIT_OK

    def format_table(self) -> str:
        order = {OK: 0, EXCLUDED: 1, ERROR: 2, SKIPPED: 3}
        lines = [f"{'verdict':<9} {'reason':<28} {'kind':<7} {'count':>7} {'files':>7}"]
        for key in sorted(self.counts, key=lambda k: (order.get(k[0], 9), k[1], k[2])):
            verdict, reason, kind = key
            lines.append(f"{verdict:<9} {reason or '-':<28} {kind:<7} {self.counts[key]:>7} {self.files[key]:>7}")
        lines.append(f"{self.n_images} usable image(s) from {self.n_files} file(s) in {self.seconds:.1f} s")
        lines.extend(f"ALARM: {a}" for a in self.alarms)
        if self.labels_unmatched or self.images_unlabelled:
            lines.append(
                f"labels: {self.images_unlabelled} image(s) without a label, "
                f"{self.labels_unmatched} label row(s) matched no image"
            )
        return "\n".join(lines)


@dataclass
class _Image:
    """A usable image before labels: manifest row fields, layout entry and the raw keys for labels."""

    row: dict[str, Any]
    entry: Entry
    study_keys: tuple[str, ...]
    patient_keys: tuple[str, ...]


@dataclass
class _Run:
    root: Path
    ids: Ids
    verify: str
    nonfinite: str
    images: list[_Image] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    reid: list[dict[str, Any]] = field(default_factory=list)
    headers: list[DicomHeader] = field(default_factory=list)
    workers: int = 1
    # NIfTI has no patient id: the file name is the patient, unless one name stands in several
    # folders (patA/ct.nii.gz, patB/ct.nii.gz), when the folder is
    nifti_by_folder: bool = False

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def exclude(self, source: str, kind: str, exc: ScanError, n_files: int = 1, **ids: str) -> None:
        """One exclusions row; messages are ours (no header text), named by ``source``."""
        self.rows.append(
            {
                "source": source,
                "kind": kind,
                "verdict": verdict_of(exc.reason),
                "reason": exc.reason,
                "message": exc.detail,
                "n_files": n_files,
                PATIENT_ID: ids.get("patient", ""),
                STUDY_ID: ids.get("study", ""),
                SERIES_ID: ids.get("series", ""),
            }
        )


@dataclass(frozen=True)
class _Options:
    root: Path
    manifest: Path
    exclusions: Path
    labels_csv: Path | None
    label_col: str | None
    key_file: Path | None
    reid_table: Path | None
    layout: str
    verify: str
    nonfinite: str


def _validate(o: _Options) -> tuple[bytes | None, LabelTable | None]:
    """Every argument problem at once (ValidationError, exit 2); returns the key and the labels."""
    problems: list[str] = []
    if not o.root.is_dir():
        problems.append("the folder to scan does not exist or is not a folder")
    if o.manifest.resolve() == o.exclusions.resolve():
        problems.append("the manifest and the exclusions table must be different files")
    for name, value, allowed in (
        ("layout", o.layout, LINK_MODES),
        ("verify", o.verify, VERIFY_MODES),
        ("nonfinite", o.nonfinite, NONFINITE_POLICIES),
    ):
        if value not in allowed:
            problems.append(f"{name} must be one of {', '.join(allowed)}")
    key = None
    if o.key_file is not None:
        try:
            key = load_key(o.key_file)
        except ValueError as exc:
            problems.append(f"pseudonymisation key file: {exc}")
        except OSError:
            problems.append("pseudonymisation key file cannot be read")
    if o.reid_table is not None and o.reid_table.resolve().is_relative_to(o.manifest.resolve().parent):
        problems.append("the re-identification table must be written outside the manifest's folder")
    if o.label_col and o.labels_csv is None:
        problems.append("--label-col needs --labels")
    table = None
    if o.labels_csv is not None and not o.labels_csv.is_file():
        problems.append("labels file does not exist")
    elif o.labels_csv is not None:
        table, label_problems = read_labels(o.labels_csv, o.label_col or LABEL)
        problems.extend(label_problems)
    if problems:
        raise ValidationError(problems, "scan arguments")
    return key, table


@dataclass(frozen=True)
class ScanOptions:
    """How ``scan_tree`` scans (the flags of ``cohortnet scan``).

    ``exclusions_out``: the exclusions table (default: beside the manifest, ``<stem>.exclusions.csv``);
    ``labels_csv``/``label_col``: a labels table joined by patient (and study) id;
    ``pseudonymize_key_file``: the key for pseudonymous ids; ``reid_table``: where the
    re-identification table goes (outside the manifest's folder); ``layout``: how ``images/``
    points at the files; ``verify``: "header" (no pixels), "sample" (decode one file per series;
    read NIfTI voxels for the NaN check) or "full" (assemble every series as ``load_scan`` would);
    ``nonfinite``: the NaN/Inf policy the study will use; ``workers``: processes reading headers
    and decoding (default: 1 below 256 files, else up to 8 CPUs; with several, a decoder that
    crashes its process costs one ``worker_crash`` verdict).
    """

    exclusions_out: str | Path | None = None
    labels_csv: str | Path | None = None
    label_col: str | None = None
    pseudonymize_key_file: str | Path | None = None
    reid_table: str | Path | None = None
    layout: str = "symlink"
    verify: str = "sample"
    nonfinite: str = "refuse"
    progress: bool = True
    workers: int | None = None


def _resolve(root: str | Path, manifest: Path, opts: ScanOptions) -> _Options:
    def path(value: str | Path | None) -> Path | None:
        return Path(value) if value else None

    return _Options(
        root=Path(root),
        manifest=manifest,
        exclusions=path(opts.exclusions_out) or manifest.with_name(manifest.stem + ".exclusions.csv"),
        labels_csv=path(opts.labels_csv),
        label_col=opts.label_col,
        key_file=path(opts.pseudonymize_key_file),
        reid_table=path(opts.reid_table),
        layout=opts.layout,
        verify=opts.verify,
        nonfinite=opts.nonfinite,
    )


def scan_tree(root: str | Path, out_manifest: str | Path, options: ScanOptions = ScanOptions()) -> ScanSummary:
    """Scan ``root``; write the manifest, the exclusions table and the ``images/`` link layout.

    Raises ValidationError for bad options; never raises for bad images (each gets a verdict).
    """
    started = time.perf_counter()
    manifest = Path(out_manifest)
    o = _resolve(root, manifest, options)
    key, table = _validate(o)
    register_root(o.root)
    if key is None:
        log.warning("no pseudonymisation key: patient and study ids are written as found in the headers")
    run = _Run(o.root.resolve(), Ids(key), o.verify, o.nonfinite)
    out_dir = manifest.resolve().parent
    skip = {manifest.resolve(), o.exclusions.resolve(), o.reid_table.resolve() if o.reid_table else None}
    files = [f for f in iter_files(run.root) if f not in skip and not _inside_layout(f, out_dir)]
    run.workers = default_workers(len(files)) if options.workers is None else options.workers
    _read_all(run, files, options.progress)
    _scan_stacks(run, group_stacks(run.headers))
    summary = _write(run, o, table)
    summary.n_files, summary.seconds = len(files), time.perf_counter() - started
    return summary


def _inside_layout(path: Path, out_dir: Path) -> bool:
    """Our own link layout (and its temporary or old copies) when the output lies in the tree."""
    if not path.is_relative_to(out_dir):
        return False
    top = path.relative_to(out_dir).parts[0]
    return top == LAYOUT_DIR or top.startswith(f".{LAYOUT_DIR}.")


def _file_problem(path: Path, kind: str, fid: str) -> ScanError:
    """The verdict for a file that is neither a readable DICOM nor a NIfTI."""
    if kind == sniff.EMPTY:
        return ScanError("empty_file", "zero-byte file", fid)
    if kind == "unreadable":
        return ScanError("corrupt_file", "the file cannot be opened", fid)
    if path.name.lower().endswith(DICOM_SUFFIXES) or sniff.has_nifti_name(path):
        return ScanError("corrupt_file", "named like DICOM/NIfTI but its content is neither", fid)
    return ScanError("not_dicom", "neither DICOM nor NIfTI by content", fid)


def read_file(job: tuple[Path, str]) -> tuple[str, DicomHeader | tuple[str, str] | None]:
    """Sniff one file and read its DICOM header: (kind, header or (reason, detail) or None).

    Runs in worker processes, so it returns plain picklable values and logs nothing.
    """
    path, fid = job
    try:
        kind = sniff.sniff(path)
    except OSError:
        return "unreadable", None
    if kind not in (sniff.DICOM, sniff.DICOM_NO_META):
        return kind, None
    try:
        return kind, read_header(path, source=fid)[0]
    except ScanError as exc:
        return "failed", (exc.reason, exc.detail)
    except Exception as exc:  # read_header maps its own failures; anything else is still one file's verdict
        return "failed", ("corrupt_header", f"{type(exc).__name__} while reading the header")


def _classify_file(run: _Run, path: Path, fid: str, result: tuple[str, Any]) -> None:
    kind, value = result
    if isinstance(value, DicomHeader):
        register_identifying(value.identifying)  # read in a worker: the registry lives here
        run.headers.append(value)
        return
    if kind in (sniff.NIFTI, sniff.NIFTI_GZ):
        _scan_nifti(run, path, kind, run.rel(path))
        return
    problem = ScanError(value[0], value[1], fid) if kind == "failed" else _file_problem(path, kind, fid)
    run.exclude(fid, "file", problem)
    run.reid.append({"id": fid, "kind": "file", "relative_paths": run.rel(path)})


def _read_all(run: _Run, files: list[Path], progress: bool) -> None:
    """Headers of every file, in file order (in worker processes for large trees)."""
    jobs = [(f, run.ids.file(run.rel(f))) for f in files]
    run.nifti_by_folder = _nifti_names_repeat(files)
    if run.nifti_by_folder:
        log.info("scan: NIfTI file names repeat across folders: each file's folder is its patient")
    bar = tqdm(total=len(jobs), desc="scan", unit="file", disable=None if progress else True, file=sys.stderr)
    crashed = ("failed", ("worker_crash", "the process reading this file died"))
    for (path, fid), result in zip(jobs, map_isolated(read_file, jobs, run.workers), strict=True):
        _classify_file(run, path, fid, crashed if result == WORKER_CRASH else result)
        bar.update()
    bar.close()


def _nifti_stem(path: Path) -> str:
    return path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem


def _nifti_names_repeat(files: list[Path]) -> bool:
    folders: dict[str, set[Path]] = {}
    for f in files:
        if f.name.lower().endswith((".nii", ".nii.gz")):
            folders.setdefault(_nifti_stem(f), set()).add(f.parent)
    return any(len(parents) > 1 for parents in folders.values())


def _scan_nifti(run: _Run, path: Path, kind: str, rel: str) -> None:
    nid = run.ids.nifti(rel)
    folder = Path(rel).parent.as_posix()
    stem = folder if run.nifti_by_folder and folder != "." else _nifti_stem(path)
    patient = run.ids.patient(stem, rel)
    reid = {
        "id": nid,
        "kind": "nifti",
        PATIENT_ID: patient,
        "original_patient_id": stem,
        "relative_paths": rel,
    }
    run.reid.append(reid)
    try:
        info = checks.check_nifti(path, kind, source=nid, verify=run.verify, nonfinite=run.nonfinite)
    except ScanError as exc:
        run.exclude(nid, "nifti", exc, patient=patient, series=nid)
        return
    suffix = ".nii.gz" if kind == sniff.NIFTI_GZ else ".nii"
    row = {PATIENT_ID: patient, STUDY_ID: "", SERIES_ID: nid, **checks.nifti_qc(info)}
    run.images.append(_Image(row, Entry(nid, (path,), suffix), (), (stem, patient)))


def _series_reid(run: _Run, stack: Stack, ids: dict[str, str]) -> dict[str, Any]:
    first = stack.first
    return {
        "id": ids["series"],
        "kind": "series",
        PATIENT_ID: ids["patient"],
        "original_patient_id": first.patient_key,
        STUDY_ID: ids["study"],
        "original_study_uid": first.study_uid,
        "original_accession": first.accession,
        "relative_paths": ";".join(sorted({run.rel(h.path.parent) for h in stack.headers})),
    }


def _scan_stacks(run: _Run, stacks: Sequence[Stack]) -> None:
    """Plan every stack (headers only), then decode-check the candidates, isolated from crashes."""
    owners: Counter[Path] = Counter(h.path for s in stacks for h in s.headers)
    candidates: list[tuple[StackPlan, dict[str, str]]] = []
    for stack in stacks:
        sid = run.ids.series(stack.series_uid, stack.index)
        first = stack.first
        ids = {"patient": run.ids.patient(first.patient_key, first.study_uid or sid), "series": sid}
        ids["study"] = run.ids.study(first.study_uid)
        run.reid.append(_series_reid(run, stack, ids))
        try:
            if any(owners[h.path] > 1 for h in stack.headers):
                raise ScanError("multiple_series", "one file holds planes of several stacks", sid)
            candidates.append((plan_stack(stack, source=sid), ids))
        except ScanError as exc:
            run.exclude(sid, "series", exc, n_files=len(stack.headers), **ids)
    jobs = [(plan, run.verify, run.nonfinite, ids["series"]) for plan, ids in candidates]
    for (plan, ids), problem in zip(candidates, map_isolated(checks.verify_job, jobs, run.workers), strict=True):
        if problem is not None:
            reason, detail = problem if problem != WORKER_CRASH else (problem, "the decoding process died")
            run.exclude(ids["series"], "series", ScanError(reason, detail), n_files=len(plan.stack.headers), **ids)
        else:
            run.images.append(_dicom_image(plan, ids))


def _dicom_image(plan: StackPlan, ids: dict[str, str]) -> _Image:
    first, files = plan.stack.first, plan.stack.headers
    row = {PATIENT_ID: ids["patient"], STUDY_ID: ids["study"], SERIES_ID: ids["series"]}
    row |= checks.dicom_qc(dicom_meta(plan))
    entry = Entry(ids["series"], tuple(h.path for h in files), ".dcm" if len(files) == 1 else "")
    study_keys = (first.study_uid, first.accession, first.study_key, ids["study"])
    return _Image(row, entry, study_keys, (first.patient_key, ids["patient"]))


def _label_of(table: LabelTable | None, image: _Image) -> str:
    if table is None:
        return ""
    return table.lookup(image.study_keys if table.by == STUDY_ID else image.patient_keys)


def _count(summary: ScanSummary, rows: Sequence[dict[str, Any]], run: _Run) -> None:
    for r in rows:
        key = (OK, "", "nifti" if r["format"] == "nifti" else "series")
        summary.counts[key] += 1
        summary.files[key] += int(r["n_files"])
    for r in run.rows:
        key = (r["verdict"], r["reason"], r["kind"])
        summary.counts[key] += 1
        summary.files[key] += int(r["n_files"])


def _write(run: _Run, o: _Options, table: LabelTable | None) -> ScanSummary:
    """Layout first, then the manifest, exclusions and re-identification tables (each atomic)."""
    images = sorted(run.images, key=lambda im: (im.row[PATIENT_ID], im.row[STUDY_ID], im.row[SERIES_ID]))
    rows = [{**im.row, IMAGE: image_path(im.entry), LABEL: _label_of(table, im)} for im in images]
    out_dir = o.manifest.resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    build_layout(out_dir, [im.entry for im in images], o.layout)
    write_csv(o.manifest, pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)))
    write_csv(o.exclusions, pd.DataFrame(run.rows, columns=list(EXCLUSION_COLUMNS)))
    if o.reid_table is not None:
        write_csv(o.reid_table, pd.DataFrame(run.reid, columns=list(REID_COLUMNS)))
    summary = ScanSummary(o.manifest, o.exclusions, 0, len(rows))
    _count(summary, rows, run)
    summary.alarms = _alarms(summary)
    summary.images_unlabelled = sum(1 for r in rows if not r[LABEL]) if table else 0
    summary.labels_unmatched = table.unmatched if table else 0
    return summary


def _alarms(summary: ScanSummary) -> list[str]:
    """A reason shared by many images points to a systematic cause (a missing codec, a bad export)."""
    candidates = summary.n_images + sum(n for (v, _, _), n in summary.counts.items() if v != SKIPPED)
    by_reason: Counter[str] = Counter()
    for (verdict, reason, _), n in summary.counts.items():
        if verdict == ERROR or reason == "unsupported_transfer_syntax":
            by_reason[reason] += n
    base = max(candidates, 1)
    return [
        f"{n} input(s) ({n / base:.0%}) failed with {reason}: check for a systematic cause"
        for reason, n in sorted(by_reason.items())
        if n >= ALARM_MIN and n > ALARM_SHARE * base
    ]
