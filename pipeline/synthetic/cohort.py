"""The demo cohort: sites, the ``CohortSpec``, per-scan plans, and the folder and manifest on disk.

``plan_cohort`` draws every scan of a ``CohortSpec`` (labels, sites, formats and follow-ups
stratified by label, then each patient's anatomy, lesions, pose, grid and fake identity) without
rendering pixels; ``render_scan`` turns a ``ScanPlan`` into a volume, ``write_scan`` stores it as a
DICOM series or a NIfTI file, and ``make_demo_cohort`` writes the whole cohort and its manifest.
Three ``SITES`` differ in noise, slice spacing, DICOM storage conventions and file naming.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipeline import schema
from pipeline.reporting import artifacts
from pipeline.reporting.artifacts import write_csv
from pipeline.synthetic.anatomy import Anatomy, _u, followup_anatomy, random_anatomy
from pipeline.synthetic.dicom import SeriesSpec, fake_identity, seeded_uid, write_dicom_series
from pipeline.synthetic.geometry import Pose, Vec3, scan_affine
from pipeline.synthetic.lesions import (
    LESION_CONTRAST_HU,
    LESION_COUNT,
    LESION_ORGANS,
    LESION_RADIUS_MM,
    LesionSpec,
    followup_lesion,
    random_lesions,
)
from pipeline.synthetic.nifti import write_nifti
from pipeline.synthetic.phantom import PhantomSpec, make_phantom

# Extra manifest columns (patient-level except VISIT); the required ones come from pipeline.schema.
SITE, SCANNER, SEX, AGE, VISIT, FORMAT = "site", "scanner", "sex", "age", "visit", "format"
MANIFEST_COLUMNS = (
    schema.PATIENT_ID, schema.IMAGE, schema.LABEL, schema.STUDY_ID, schema.SERIES_ID,
    SITE, SCANNER, SEX, AGE, VISIT, FORMAT,
)  # fmt: skip

_MARKER = ".cohortnet-demo"  # in the image folder: the generator wrote it, and which manifest goes with it
_MARKER_TEXT = "written by pipeline.synthetic.make_demo_cohort; safe to delete\n"
_MANIFEST_LINE = "manifest: "


@dataclass(frozen=True)
class SiteProfile:
    """A hospital and its scanner: noise, slice spacing, DICOM storage conventions and file naming."""

    name: str
    institution: str
    address: str
    manufacturer: str
    model: str
    station: str
    referrer: str
    kernel: str
    noise_sd_hu: float
    slice_increment_mm: float  # distance between slice centres
    slice_thickness_mm: float  # nominal thickness; larger than the increment = overlapping slices
    slope: float
    intercept: float
    file_naming: Literal["im", "uid"]
    nifti_intercept: float
    fov_extra_mm: float


SITES = (
    SiteProfile(
        "north", "Northfield General Hospital (FAKE)", "1 Nowhere Street, Fakeville", "SYNTHETICA",
        "Synth CT 64", "CTNORTH01", "HOUSE^GREGORY", "B30f", 12.0, 5.0, 5.0, 1.0, -1024.0, "im", 0.0, 0.0,
    ),
    SiteProfile(
        "south", "Southbay Clinic (FAKE)", "99 Example Road, Placeholder City", "PHANTOMATIC",
        "PX Vista 128", "CTSOUTH02", "GREY^MEREDITH", "STANDARD", 18.0, 4.0, 4.0, 1.0, 0.0, "uid",
        -1024.0, 20.0,
    ),
    SiteProfile(
        "east", "East Valley Imaging (FAKE)", "7 Imaginary Lane, Notatown", "IMAGINARY MEDICAL",
        "Aquila 320", "CTEAST03", "ZHIVAGO^YURI", "FC08", 15.0, 4.0, 5.0, 0.5, -1024.0, "im", 0.0, 10.0,
    ),
)  # fmt: skip


@dataclass(frozen=True)
class CohortSpec:
    """The cohort that ``plan_cohort`` draws and ``make_demo_cohort`` writes; one spec, one set of bytes.

    Exactly ``round(prevalence * n_patients)`` patients are positive; ``dicom_fraction`` of each
    label group is stored as DICOM (the rest as NIfTI) and ``second_scan_fraction`` of it has a
    follow-up scan. Difficulty knobs: ``lesion_radius_mm`` and ``lesion_contrast_hu`` (uniform ranges),
    ``lesion_organs`` (host weights), ``lesion_count`` (lesions per positive patient, uniform between
    low and high), ``noise_scale`` (multiplies each site's noise SD), ``matrix`` (in-plane voxels)
    and ``slices`` (fewest and most slices of a scan). Bad values raise one ValueError naming them all.
    """

    n_patients: int = 100
    seed: int = 0
    prevalence: float = 0.4
    second_scan_fraction: float = 0.2
    dicom_fraction: float = 0.5
    matrix: int = 64
    slices: tuple[int, int] = (24, 40)
    noise_scale: float = 1.0
    lesion_radius_mm: tuple[float, float] = LESION_RADIUS_MM
    lesion_contrast_hu: tuple[float, float] = LESION_CONTRAST_HU
    # hash=False: a spec stays hashable although this field is a dict
    lesion_organs: Mapping[str, float] = field(default_factory=lambda: dict(LESION_ORGANS), hash=False)
    lesion_count: tuple[int, int] = LESION_COUNT

    def __post_init__(self) -> None:
        problems = []
        if self.n_patients < 2:
            problems.append(f"n_patients must be at least 2, got {self.n_patients}")
        for name in ("prevalence", "second_scan_fraction", "dicom_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be within [0, 1], got {value}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ScanPlan:
    """Everything needed to render and write one scan; ``plan_cohort`` draws these from the seed."""

    patient_id: str
    visit: int  # 0 baseline, 1 follow-up
    label: int
    site: SiteProfile
    sex: str
    age: int
    fmt: Literal["dicom", "nifti"]
    anatomy: Anatomy
    lesions: tuple[LesionSpec, ...]  # empty for a negative patient
    pose: Pose
    prone: bool
    orientation: str
    oblique_deg: Vec3
    shape: tuple[int, int, int]
    spacing: Vec3
    noise_sd_hu: float
    seed: tuple[int, ...]  # of the rendering and writing random streams
    study_id: str
    series_id: str
    series_number: int
    study_uid: str
    series_uid: str
    study_date: date
    identity: Mapping[str, str]  # fake identifying DICOM values of this patient and study

    @property
    def affine(self) -> np.ndarray:
        """Voxel -> scanner RAS mm."""
        return scan_affine(self.shape, self.spacing, orientation=self.orientation, oblique_deg=self.oblique_deg)


def _stratified_flags(rng: np.random.Generator, labels: np.ndarray, fraction: float) -> np.ndarray:
    """True for ``round(fraction * n)`` patients of each label, so the flag is independent of the label."""
    flags = np.zeros(len(labels), dtype=bool)
    for value in (0, 1):
        group = rng.permutation(np.flatnonzero(labels == value))
        flags[group[: round(fraction * len(group))]] = True
    return flags


def _stratified_sites(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    sites = np.zeros(len(labels), dtype=int)
    for value in (0, 1):
        group = rng.permutation(np.flatnonzero(labels == value))
        sites[group] = (np.arange(len(group)) + int(rng.integers(len(SITES)))) % len(SITES)
    return sites


def _scan_grid(
    rng: np.random.Generator,
    anatomy: Anatomy,
    *,
    site: SiteProfile,
    fmt: str,
    matrix: int,
    slices: tuple[int, int],
) -> dict[str, Any]:
    """Pose, orientation and grid of one scan: the field of view fits the body, as a technologist sets it."""
    increment = site.slice_increment_mm
    nz = int(np.clip(round(_u(rng, 130, 170) / increment), *slices))
    a0, ta = anatomy.body_axes[0], abs(anatomy.body_taper[0])
    fov = 10 * math.ceil((2 * a0 * (1 + ta * nz * increment / 200) + 25) / 10) + site.fov_extra_mm
    if fmt == "dicom":
        orientation = str(rng.choice(["HFS", "FFS", "HFP"], p=[0.8, 0.1, 0.1]))
    else:
        orientation = str(rng.choice(["RAS", "LAS", "LPS"], p=[0.5, 0.3, 0.2]))
    tilt = _u(rng, 5, 10) * float(rng.choice([-1, 1])) if rng.random() < 0.1 else 0.0
    pose = Pose(
        shift_mm=tuple(map(float, rng.normal(0.0, [6.0, 5.0, 6.0]))),  # type: ignore[arg-type]
        rotation_deg=tuple(map(float, rng.normal(0.0, [2.0, 2.0, 4.0]))),  # type: ignore[arg-type]
    )
    return {
        "shape": (matrix, matrix, nz), "spacing": (fov / matrix, fov / matrix, increment),
        "orientation": orientation, "oblique_deg": (tilt, 0.0, 0.0), "pose": pose,
        "prone": orientation in ("HFP", "FFP"),
    }  # fmt: skip


def _lesion_z_range(grids: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """Patient z slab that every scan covers, with room for pose rotation and oblique tilt."""
    lo, hi = -1e9, 1e9
    for g in grids:
        half = (g["shape"][2] - 1) * g["spacing"][2] / 2
        lo, hi = max(lo, -half - g["pose"].shift_mm[2]), min(hi, half - g["pose"].shift_mm[2])
    return lo + 12.0, hi - 12.0


def _uid(seed: int, *parts: object) -> str:
    return seeded_uid("cohortnet-demo", seed, *parts)


@dataclass(frozen=True)
class _Patient:
    """What ``plan_cohort`` draws for one patient before ``_plan_patient`` draws the scans."""

    index: int
    label: int
    site: SiteProfile
    sex: str
    age: int
    fmt: Literal["dicom", "nifti"]
    visits: int


def _plan_lesions(
    rng: np.random.Generator, spec: CohortSpec, anatomy: Anatomy, grids: Sequence[Mapping[str, Any]]
) -> list[tuple[LesionSpec, ...]]:
    """A positive patient's lesions at baseline and at follow-up (moved and resized)."""
    first = random_lesions(
        rng, anatomy, count=spec.lesion_count, radius_mm=spec.lesion_radius_mm, contrast_hu=spec.lesion_contrast_hu,
        organs=spec.lesion_organs, z_range=_lesion_z_range(grids),
    )  # fmt: skip
    return [first, tuple(followup_lesion(rng, lesion) for lesion in first)]


def _plan_patient(spec: CohortSpec, patient: _Patient) -> list[ScanPlan]:
    """The scans of one patient; a follow-up shares anatomy, label and lesion (moved and resized)."""
    seed, index, site = spec.seed, patient.index, patient.site
    rng = np.random.default_rng([seed, 1, index])
    pid = f"DEMO{index + 1:04d}"  # one token, so log redaction of patient ids leaves the word "demo" alone
    anatomies = [random_anatomy(rng, sex=patient.sex, age=patient.age)]
    anatomies.append(followup_anatomy(rng, anatomies[0]))
    grids = [
        _scan_grid(rng, anatomies[0], site=site, fmt=patient.fmt, matrix=spec.matrix, slices=spec.slices)
        for _ in range(patient.visits)
    ]
    lesions: list[tuple[LesionSpec, ...]] = _plan_lesions(rng, spec, anatomies[0], grids) if patient.label else [(), ()]
    identity = fake_identity(rng)
    noise = site.noise_sd_hu * spec.noise_scale * anatomies[0].body_axes[0] / 110.0
    day = date(2019, 1, 1) + timedelta(days=int(rng.integers(0, 4 * 365)))
    plans = []
    for visit, grid in enumerate(grids):
        series_number = int(rng.integers(2, 8))
        study_id = f"{pid}-ST{visit + 1}"
        plans.append(
            ScanPlan(
                patient_id=pid, visit=visit, label=patient.label, site=site, sex=patient.sex, age=patient.age,
                fmt=patient.fmt, anatomy=anatomies[visit], lesions=lesions[visit],
                noise_sd_hu=noise * _u(rng, 0.9, 1.1), seed=(seed, 2, index, visit), study_id=study_id,
                series_id=f"{study_id}-SE{series_number}", series_number=series_number,
                study_uid=_uid(seed, pid, visit, "study"), series_uid=_uid(seed, pid, visit, "series"),
                study_date=day, identity={**identity, "AccessionNumber": f"ACC{int(rng.integers(10**7, 10**8))}"},
                **grid,
            )
        )  # fmt: skip
        day += timedelta(days=int(rng.integers(90, 400)))
    return plans


def plan_cohort(spec: CohortSpec | None = None) -> list[ScanPlan]:
    """Draw every scan of the cohort ``spec`` (default ``CohortSpec()``; no pixels yet).

    ``make_demo_cohort`` renders and writes them. Format, site and a second scan are assigned
    within each label group, so none of them predicts the label.
    """
    spec = CohortSpec() if spec is None else spec
    n = spec.n_patients
    rng = np.random.default_rng([spec.seed, 0])
    labels = np.zeros(n, dtype=int)
    labels[rng.permutation(n)[: round(spec.prevalence * n)]] = 1
    dicom = _stratified_flags(rng, labels, spec.dicom_fraction)
    two = _stratified_flags(rng, labels, spec.second_scan_fraction)
    sites = _stratified_sites(rng, labels)
    sexes = rng.choice(["F", "M"], size=n)
    ages = np.clip(np.rint(rng.normal(62.0, 12.0, size=n)), 25, 90).astype(int)
    plans: list[ScanPlan] = []
    for p in range(n):
        patient = _Patient(
            index=p, label=int(labels[p]), site=SITES[sites[p]], sex=str(sexes[p]), age=int(ages[p]),
            fmt="dicom" if dicom[p] else "nifti", visits=2 if two[p] else 1,
        )  # fmt: skip
        plans += _plan_patient(spec, patient)
    return plans


def render_scan(plan: ScanPlan) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The scan's (X, Y, Z) int16 HU volume, its voxel -> RAS mm affine and ``make_phantom``'s info."""
    affine = plan.affine
    phantom = PhantomSpec(
        plan.shape, plan.spacing, lesion=plan.lesions, affine=affine, anatomy=plan.anatomy, pose=plan.pose,
        prone=plan.prone, noise_sd_hu=plan.noise_sd_hu,
    )  # fmt: skip
    volume, info = make_phantom(np.random.default_rng(list(plan.seed)), phantom)
    return volume, affine, info


def _dicom_tags(plan: ScanPlan) -> dict[str, Any]:
    site, day = plan.site, plan.study_date.strftime("%Y%m%d")
    return {
        **plan.identity, "InstitutionName": site.institution, "InstitutionAddress": site.address,
        "ReferringPhysicianName": site.referrer, "StationName": site.station,
        "Manufacturer": site.manufacturer, "ManufacturerModelName": site.model,
        "ConvolutionKernel": site.kernel, "PatientSex": plan.sex, "PatientAge": f"{plan.age:03d}Y",
        "StudyDate": day, "SeriesDate": day, "AcquisitionDate": day, "ContentDate": day,
        "StudyID": str(plan.visit + 1),
        "PatientPosition": plan.orientation if plan.orientation in ("HFS", "FFS", "HFP", "FFP") else "HFS",
    }  # fmt: skip


def write_scan(plan: ScanPlan, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Render ``plan`` and write it under ``out_dir``: a DICOM series folder or a .nii.gz file."""
    volume, affine, info = render_scan(plan)
    if plan.fmt == "nifti":
        path = Path(out_dir) / "nifti" / f"{plan.patient_id}_ses-{plan.visit + 1}_ct.nii.gz"
        return write_nifti(volume, affine, path, intercept=plan.site.nifti_intercept), info
    folder = Path(out_dir) / "dicom" / plan.patient_id / f"ST{plan.visit + 1:02d}" / f"SE{plan.series_number:02d}"
    series = SeriesSpec(
        patient_id=plan.patient_id, study_uid=plan.study_uid, series_uid=plan.series_uid,
        series_number=plan.series_number, slope=plan.site.slope, intercept=plan.site.intercept,
        slice_thickness=plan.site.slice_thickness_mm, file_naming=plan.site.file_naming,
        extra_tags=_dicom_tags(plan),
    )  # fmt: skip
    write_dicom_series(volume, affine, folder, series, rng=np.random.default_rng([*plan.seed, 1]))
    return folder, info


def _prepare_out_dir(out_dir: Path, manifest_path: Path) -> None:
    """Empty the cohort's own subfolders; refuse a non-empty folder this module did not write. The
    folder's marker names the manifest that goes with it (its hash follows once it is written)."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / _MARKER).is_file():
        from pipeline.errors import ValidationError

        raise ValidationError(
            [f"{out_dir} is not empty and was not written by the demo generator; refusing to overwrite it"],
            "demo output folder",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("dicom", "nifti"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    _write_marker(out_dir, manifest_path, None)


def _write_marker(out_dir: Path, manifest_path: Path, sha256: str | None) -> None:
    named = f"{_MANIFEST_LINE}{Path(os.path.relpath(manifest_path, out_dir)).as_posix()}"
    artifacts.write_text(out_dir / _MARKER, f"{_MARKER_TEXT}{named}{f' sha256={sha256}' if sha256 else ''}\n")


def _is_own_manifest(manifest_path: Path, out_dir: Path) -> bool:
    """Whether the generator wrote the file at ``manifest_path``: the image folder's marker names it
    (with its content hash, when the generator got to record it). A marker from before the marker
    named its manifest accepts a CSV with exactly the demo's header."""
    if not manifest_path.is_file() or manifest_path.is_symlink():
        return False
    try:
        marker = (out_dir / _MARKER).read_text(encoding="utf-8", errors="replace")
    except OSError:  # the image folder was deleted ("safe to delete"): a demo manifest still reads as one
        return _reads_as_demo(manifest_path, out_dir)
    named = [line.removeprefix(_MANIFEST_LINE) for line in marker.splitlines() if line.startswith(_MANIFEST_LINE)]
    if not named:  # a marker from before it named the manifest
        with manifest_path.open(encoding="utf-8", errors="replace") as fh:
            return fh.readline(4096).strip() == ",".join(MANIFEST_COLUMNS)
    relative, _, sha256 = named[0].partition(" sha256=")
    if (out_dir / relative).resolve() != manifest_path.resolve():
        return False
    return not sha256 or hashlib.sha256(manifest_path.read_bytes()).hexdigest() == sha256


def _reads_as_demo(manifest_path: Path, out_dir: Path) -> bool:
    """A manifest without its image folder is the demo's when it has exactly the demo's header and
    every image points into ``out_dir`` (where the generator writes them)."""
    import pandas as pd

    try:
        table = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError):
        return False
    if list(table.columns) != list(MANIFEST_COLUMNS) or table.empty:
        return False
    root = Path(os.path.abspath(out_dir))
    return all(Path(os.path.abspath(manifest_path.parent / i)).is_relative_to(root) for i in table[schema.IMAGE])


def _check_manifest(manifest_path: Path, out_dir: Path) -> None:
    """Refuse to replace or remove a file at ``manifest_path`` that the generator did not write."""
    if not manifest_path.exists() and not manifest_path.is_symlink():
        return
    if _is_own_manifest(manifest_path, out_dir):
        return
    from pipeline.errors import ValidationError

    raise ValidationError(
        [
            f"{manifest_path} exists and was not written by the demo generator (or was changed since); refusing "
            "to replace it: point the workflow's manifest at a new file, or move this one away"
        ],
        "demo manifest",
    )


def _manifest_row(plan: ScanPlan, image: Path, manifest_dir: Path) -> dict[str, Any]:
    """The manifest row of one written scan; ``image`` becomes relative to the manifest's folder."""
    return {
        schema.PATIENT_ID: plan.patient_id, schema.IMAGE: Path(os.path.relpath(image, manifest_dir)).as_posix(),
        schema.LABEL: plan.label, schema.STUDY_ID: plan.study_id, schema.SERIES_ID: plan.series_id,
        SITE: plan.site.name, SCANNER: f"{plan.site.manufacturer} {plan.site.model}", SEX: plan.sex,
        AGE: plan.age, VISIT: plan.visit, FORMAT: plan.fmt,
    }  # fmt: skip


def make_demo_cohort(out_dir: Path, manifest_path: Path, spec: CohortSpec | None = None) -> pd.DataFrame:
    """Write the seeded demo cohort ``spec`` (default ``CohortSpec()``) under ``out_dir`` and its manifest CSV.

    An existing ``out_dir`` is reused only when it is empty or the generator wrote it (its marker
    file), an existing manifest replaced only when that marker names it and its content is what the
    generator wrote; anything else is refused (ValidationError) before a file is touched.

    Images: ``dicom/<patient>/STnn/SEnn/`` series folders and ``nifti/<patient>_ses-N_ct.nii.gz``
    files. Manifest (at ``manifest_path``): one row per scan with ``MANIFEST_COLUMNS``; ``image`` is
    relative to the manifest's folder. The same spec gives the same bytes (UIDs are seeded too).
    Returns the manifest table.
    """
    plans = plan_cohort(spec)
    manifest_path = Path(manifest_path).absolute()
    out_dir, manifest_path = Path(out_dir).resolve(), manifest_path.parent.resolve() / manifest_path.name
    _check_manifest(manifest_path, out_dir)  # before anything is written or removed
    _prepare_out_dir(out_dir, manifest_path)
    # the manifest goes first and comes back last (atomically): a generator killed half-way leaves
    # no manifest that points at half-written files
    manifest_path.unlink(missing_ok=True)
    rows = []
    for plan in plans:
        image, info = write_scan(plan, out_dir)
        if plan.label and info["lesion_voxels"] == 0:
            raise RuntimeError(f"{plan.series_id}: positive scan without a visible lesion (generator bug)")
        rows.append(_manifest_row(plan, image, manifest_path.parent))
    table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    write_csv(manifest_path, table)
    _write_marker(out_dir, manifest_path, hashlib.sha256(manifest_path.read_bytes()).hexdigest())
    return table
