"""Grad-CAM explanations of chosen held-out cases of a finished run (``<run>/explanations/``).

Cases (:func:`select_cases`): test patients classified as the study classifies them (their image
scores combined by ``evaluation.aggregate``, positive when score >= the locked threshold), in this
order, each patient in one category only: the most confident false positives (highest score) and
false negatives (lowest score), the borderline patients (nearest the threshold), and typical true
positives and true negatives (score nearest their category's median). Each chosen patient is shown
by the image that drove the call: the highest-scoring one for a positive call, the lowest-scoring
for a negative. Ties go to the smaller id, so the rule is deterministic; no random draw is made
(the seed is recorded with the counts requested and found per category). A category with fewer
patients than its share passes the rest on to the next one, so a model without errors is still
shown by ``explain.cases`` maps (borderline and typical cases) when the test set has them.

Maps: ``monai.visualize.GradCAM`` or ``GradCAMpp`` on ``layer4`` (the last convolutional stage of
MONAI's ResNet), for the one logit (the positive class), with MONAI's postprocessing replaced by
the identity: MONAI's ``default_normalizer`` maps (min, max) to (1, 0) and so flips the map
(MONAI tutorials issue 1796). Here each fold model's map is ReLU'd and divided by its maximum,
the maps of the fold models that scored the case are averaged and scaled again to [0, 1], so
hot means important; a map that is zero everywhere stays zero and is flagged (``zero_map``).

NIfTI maps (``report.explain.nifti``) are taken back to the source image's grid by MONAI's
inverse of the deterministic preprocessing (Orientation, Spacing, Resize/pad-crop, in reverse),
and written with the source image's own RAS affine (``original_affine`` of the loaded scan).

Nothing here may break a finished run: a case that fails is recorded and skipped, and any other
failure leaves an ``explanations.json`` that says why. Only the run folder's ids appear in files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gzip
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureTyped
from monai.utils import MetaKeys
from torch import nn

from pipeline.config import WorkflowConfig, load_config
from pipeline.io.geometry import plane_affine
from pipeline.manifest import Cohort, load_manifest
from pipeline.nested import chosen_config
from pipeline.privacy import redact
from pipeline.reporting import artifacts
from pipeline.reporting.explanations import (
    CASE_COLUMNS,
    CASES_FILE,
    CATEGORIES,
    EXPLANATIONS_DIR,
    FORMAT_VERSION,
    RECORD_FILE,
    explanation_figure,
)
from pipeline.schema import (
    FOLD,
    IMAGE_ID,
    METRICS_FILE,
    MODEL_FILE,
    PATIENT_ID,
    PATIENTS_FILE,
    PREDICTIONS_FILE,
    RESOLVED_CONFIG_FILE,
    ROLE,
    SCORE,
    TARGET,
)
from pipeline.transforms import KEY, deterministic_transforms

log = logging.getLogger(__name__)

TARGET_LAYER = "layer4"
SELECTION_RULE = (
    "test patients at the locked threshold, scored as the study scores them (image scores combined by "
    "evaluation.aggregate; positive when score >= threshold); in order: false positives with the highest "
    "scores, false negatives with the lowest, the remaining patients nearest the threshold, true positives "
    "and true negatives nearest their category's median score; each shown by the image that drove the call "
    "(highest-scoring for a positive call, lowest for a negative); ties by id; a category with fewer "
    "patients than its share passes the rest of its share on to the next"
)
NORMALISATION = (
    "ReLU, then divided by the map's maximum for each fold model; the fold models that scored the case "
    "averaged and scaled to [0, 1] again (1 = most important); MONAI's flipping default_normalizer is not used; "
    "a zero map means no region raised the positive-class logit"
)
NIFTI_GEOMETRY = (
    "MONAI inverse of the deterministic preprocessing back to the source grid; the source image's RAS affine"
)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# --- case selection (pure pandas) -------------------------------------------------------------


def split_budget(n_cases: int) -> dict[str, int]:
    """``n_cases`` shared across ``CATEGORIES`` as evenly as possible; the remainder goes to the
    earlier categories (errors first)."""
    base, extra = divmod(max(int(n_cases), 0), len(CATEGORIES))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(CATEGORIES)}


def per_image(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per image: mean score over the rows that scored it and the folds, ";"-joined.

    ``predictions`` needs image_id, patient_id, fold, label, score, target (rows with a ``role``
    other than "test" are dropped)."""
    df = predictions
    if ROLE in df.columns:
        df = df[df[ROLE].astype(str) == "test"]
    grouped = df.groupby(IMAGE_ID, sort=True)
    out = grouped.agg(
        patient_id=(PATIENT_ID, "first"),
        label=("label", "first"),
        target=(TARGET, "first"),
        score=(SCORE, "mean"),
    ).reset_index()
    folds = grouped[FOLD].agg(lambda s: ";".join(str(int(f)) for f in sorted(set(s))))
    out[FOLD] = out[IMAGE_ID].map(folds)
    out[TARGET] = out[TARGET].astype(int)
    return out


def per_patient(images: pd.DataFrame, threshold: float, aggregate: str) -> pd.DataFrame:
    """One row per patient (:func:`per_image` rows combined as the study combines them): the
    patient's ``score`` and ``predicted`` call, and the image that drove the call with its
    ``image_score`` and ``fold``."""
    from pipeline.evaluation.table import aggregate_by_patient  # the study's own combination

    out = aggregate_by_patient(images[[PATIENT_ID, "label", TARGET, SCORE]], PATIENT_ID, [SCORE], aggregate)
    out = out[[PATIENT_ID, "label", TARGET, SCORE]]
    out["predicted"] = (out[SCORE] >= threshold).astype(int)
    positive = out.set_index(PATIENT_ID)["predicted"]
    ranked = images.assign(_call=images[PATIENT_ID].map(positive))
    ranked = ranked.assign(_key=np.where(ranked["_call"] == 1, -ranked[SCORE], ranked[SCORE]))
    shown = ranked.sort_values([PATIENT_ID, "_key", IMAGE_ID], kind="mergesort").groupby(PATIENT_ID).head(1)
    shown = shown.set_index(PATIENT_ID)
    out[IMAGE_ID] = out[PATIENT_ID].map(shown[IMAGE_ID])
    out["image_score"] = out[PATIENT_ID].map(shown[SCORE])
    out[FOLD] = out[PATIENT_ID].map(shown[FOLD])
    return out.sort_values(IMAGE_ID, kind="mergesort").reset_index(drop=True)


def select_cases(
    predictions: pd.DataFrame, threshold: float, n_cases: int, aggregate: str = "mean"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The cases to explain and the counts per category (see the module docstring for the rule).

    ``predictions``: per-image rows with image_id, patient_id, fold, label, score, target.
    Returns (one row per chosen patient with the columns of :func:`per_patient` and ``category``,
    in category order; ``{category: {"requested", "found", "available"}}``).
    """
    df = per_patient(per_image(predictions), threshold, aggregate)
    budget = split_budget(n_cases)
    pools = {
        "false_positive": (df[TARGET] == 0) & (df["predicted"] == 1),
        "false_negative": (df[TARGET] == 1) & (df["predicted"] == 0),
        "borderline": pd.Series(True, index=df.index),
        "true_positive": (df[TARGET] == 1) & (df["predicted"] == 1),
        "true_negative": (df[TARGET] == 0) & (df["predicted"] == 0),
    }
    keys = {
        "false_positive": -df[SCORE],
        "false_negative": df[SCORE],
        "borderline": (df[SCORE] - threshold).abs(),
        "true_positive": (df[SCORE] - df.loc[pools["true_positive"], SCORE].median()).abs(),
        "true_negative": (df[SCORE] - df.loc[pools["true_negative"], SCORE].median()).abs(),
    }
    taken: set[int] = set()
    chosen: list[pd.DataFrame] = []
    counts: dict[str, Any] = {}
    carried = 0  # what the earlier categories could not fill
    for name in CATEGORIES:
        free = pools[name] & ~df.index.isin(list(taken))
        pool = df[free].assign(_key=keys[name][free]).sort_values(["_key", IMAGE_ID], kind="mergesort")
        pick = pool.head(budget[name] + carried).drop(columns="_key").assign(category=name)
        carried = budget[name] + carried - len(pick)
        taken.update(int(i) for i in pick.index)
        chosen.append(pick)
        counts[name] = {"requested": budget[name], "found": len(pick), "available": int(free.sum())}
    cases = pd.concat(chosen, ignore_index=True) if chosen else df.head(0)
    return cases, counts


def shortfalls(counts: dict[str, Any]) -> list[str]:
    """Sentences for the categories that had fewer cases than their share (the rest of which went to
    the next category)."""
    return [
        f"{name.replace('_', ' ')}: {c['found']} of {c['requested']} requested (only {c['available']} available)"
        for name, c in counts.items()
        if c["found"] < c["requested"]
    ]


# --- maps (torch, MONAI) ----------------------------------------------------------------------


def normalise_map(raw: np.ndarray) -> tuple[np.ndarray, bool]:
    """ReLU then divide by the maximum: (map in [0, 1], is_zero). Hot means important; a map with
    no positive value (or no finite one) is returned as zeros and flagged."""
    cam = np.nan_to_num(np.asarray(raw, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max()) if cam.size else 0.0
    if peak <= 0.0:
        return np.zeros_like(cam, dtype=np.float32), True
    return (cam / peak).astype(np.float32), False


def make_cam(net: nn.Module, method: str, target_layer: str = TARGET_LAYER) -> Callable[[torch.Tensor], np.ndarray]:
    """A function x (1, C, *spatial) -> raw (unnormalised, non-negative) map (*spatial) for the
    positive-class logit (index 0) of ``net``, upsampled to the input size by MONAI."""
    from monai.visualize import GradCAM, GradCAMpp

    names = {name for name, _ in net.named_modules()}
    if target_layer not in names:
        raise ValueError(f"the model has no layer {target_layer!r} to explain")
    cls = GradCAMpp if method == "gradcampp" else GradCAM
    cam = cls(nn_module=net, target_layers=target_layer, postprocessing=_identity)

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.enable_grad():  # an input that requires grad lets the full backward hooks fire cleanly
            out = cam(x.detach().requires_grad_(True), class_idx=0)
        return np.asarray(out.detach().float().cpu().numpy()[0, 0])

    return run


def fold_mean_map(cams: list[Callable[[torch.Tensor], np.ndarray]], x: torch.Tensor) -> tuple[np.ndarray, bool]:
    """Each model's map normalised, averaged, normalised again: ((*spatial) in [0, 1], is_zero)."""
    maps = [normalise_map(cam(x))[0] for cam in cams]
    return normalise_map(np.mean(maps, axis=0))


def count_parameters(cfg: WorkflowConfig) -> int:
    from pipeline.models import build_model

    net = build_model(dataclasses.replace(cfg.model, pretrained=None))
    return sum(p.numel() for p in net.parameters())


def load_fold_net(run_dir: Path, cfg: WorkflowConfig, fold: int, device: torch.device) -> nn.Module:
    from pipeline.models import build_model

    net = build_model(dataclasses.replace(cfg.model, pretrained=None))
    state = torch.load(run_dir / f"fold_{fold}" / MODEL_FILE, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.to(device).eval()


# --- geometry ---------------------------------------------------------------------------------


def preprocessing(cfg: WorkflowConfig) -> Compose:
    """The study's deterministic chain, keeping the MetaTensor (affine, applied operations) so the
    map can be inverted: the final ``EnsureTyped(track_meta=False)`` is left out."""
    chain = deterministic_transforms(cfg.data, cfg.model.spatial_dims)
    return Compose([t for t in chain.transforms if not isinstance(t, EnsureTyped)])


def spacing_of(affine: Any, spatial_dims: int) -> list[float]:
    a = np.asarray(affine, dtype=np.float64)
    return [float(v) for v in np.linalg.norm(a[:3, :spatial_dims], axis=0)]


def to_source_grid(cam: np.ndarray, image: MetaTensor, chain: Compose) -> tuple[np.ndarray, np.ndarray]:
    """``cam`` (*spatial, the model grid of ``image``) -> (array of the source shape, source affine).

    Uses MONAI's inverse of ``chain`` (the same instance that made ``image``)."""
    mt = MetaTensor(torch.from_numpy(cam[None].astype(np.float32)), meta=copy.deepcopy(dict(image.meta)))
    mt.applied_operations = copy.deepcopy(image.applied_operations)
    back = chain.inverse({KEY: mt})[KEY]
    arr = np.clip(np.asarray(back.detach().cpu().numpy()[0], dtype=np.float32), 0.0, 1.0)
    affine = np.asarray(image.meta[MetaKeys.ORIGINAL_AFFINE], dtype=np.float64)
    source_shape = tuple(int(s) for s in np.asarray(image.meta[MetaKeys.SPATIAL_SHAPE]).ravel())
    if arr.shape != source_shape:
        raise ValueError(f"the inverted map has shape {arr.shape}, the source image {source_shape}")
    return arr, affine


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    img = nib.Nifti1Image(array.astype(np.float32), affine)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), mtime=0)


# --- the run folder ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Job:
    """What every case needs."""

    cfg: WorkflowConfig
    device: torch.device
    chain: Compose
    paths: dict[str, str]
    cams: dict[int, Callable[[torch.Tensor], np.ndarray]]
    threshold: float
    staging: Path


def safe_error(exc: BaseException, paths: Sequence[str] = ()) -> str:
    """An exception as text with paths removed (folder names may identify patients)."""
    text = str(exc)
    for p in paths:
        text = text.replace(p, "<image>")
    text = re.sub(r"(?:[A-Za-z]:)?[\\/][^\s'\":,]+", "<path>", text)
    return f"{type(exc).__name__}: {redact(text)[:300]}"


def _test_predictions(run_dir: Path, cfg: WorkflowConfig) -> pd.DataFrame:
    preds = pd.read_csv(run_dir / PREDICTIONS_FILE, dtype={PATIENT_ID: str, IMAGE_ID: str})
    label = cfg.task.label
    preds["label"] = preds[label if label in preds.columns else "label"].astype(str)
    if TARGET not in preds.columns:
        patients_path = run_dir / PATIENTS_FILE
        if patients_path.is_file():
            patients = pd.read_csv(patients_path, dtype={PATIENT_ID: str}, usecols=[PATIENT_ID, TARGET])
            preds[TARGET] = preds[PATIENT_ID].map(patients.set_index(PATIENT_ID)[TARGET])
        else:
            preds[TARGET] = (preds["label"] == str(cfg.task.positive)).astype(int)
    return preds


def _image_paths(cfg: WorkflowConfig, cohort: Cohort | None) -> dict[str, str]:
    if cohort is None:
        cohort = load_manifest(
            cfg.manifest, label_col=cfg.task.label, positive=cfg.task.positive, check_files=False, keep=cfg.filter
        )
    return dict(zip(cohort.table[IMAGE_ID].astype(str), cohort.table["path"].astype(str), strict=True))


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in row.items()} for row in table.to_dict("records")]


def _file_stem(image_id: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", image_id)
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name


def ras_world(world: np.ndarray, meta: dict[str, Any], dims: int) -> np.ndarray:
    """A point of the preprocessed image's world in RAS millimetres: a 2-D image's world is turned
    into its own plane for MONAI (``geometry.plane_affine``), so a coronal or sagittal image's
    point is turned back with the same rotation (an axial image's rotation is the identity)."""
    original = meta.get(MetaKeys.ORIGINAL_AFFINE)
    if dims != 2 or original is None:
        return world
    a = np.asarray(original, dtype=np.float64)
    rotation = (plane_affine(a) @ np.linalg.inv(a))[:3, :3]
    return rotation.T @ world


def _explain_case(job: _Job, case: dict[str, Any], stem: str) -> dict[str, Any]:
    """Map, figure and (optionally) NIfTI of one case; returns its cases.csv row."""
    image_id = str(case[IMAGE_ID])
    if image_id not in job.paths:
        raise KeyError("the image is not in the cohort table")
    sample = job.chain({KEY: job.paths[image_id], IMAGE_ID: image_id})
    image = sample[KEY]
    x = torch.as_tensor(image.as_tensor(), dtype=torch.float32)[None].to(job.device)
    folds = [int(f) for f in str(case[FOLD]).split(";")]
    cam, zero = fold_mean_map([job.cams[f] for f in folds], x)
    dims = job.cfg.model.spatial_dims
    peak = [int(v) for v in np.unravel_index(int(np.argmax(cam)), cam.shape)]
    affine = np.asarray(image.affine, dtype=np.float64)
    world = ras_world(affine[:3, :dims] @ np.asarray(peak, dtype=np.float64) + affine[:3, 3], image.meta, dims)
    title = (
        f"{image_id} \u00b7 {case['category'].replace('_', ' ')} \u00b7 patient score {case[SCORE]:.3f} "
        f"(threshold {job.threshold:.3f}; this image {case['image_score']:.3f}) \u00b7 label {case['label']}"
        + (" \u00b7 zero map" if zero else "")
    )
    png = explanation_figure(
        np.asarray(image.detach().cpu().numpy()[0]), cam, spacing=spacing_of(affine, dims), peak=peak, title=title
    )
    png_name, nifti_name = f"{stem}_gradcam.png", ""
    artifacts.write_bytes(job.staging / png_name, png)
    if job.cfg.report.explain.nifti:
        source, source_affine = to_source_grid(cam, image, job.chain)
        nifti_name = f"{stem}_gradcam.nii.gz"
        artifacts.write_bytes(job.staging / nifti_name, nifti_bytes(source, source_affine))
    row = {k: case[k] for k in CASE_COLUMNS if k in case}
    row.update(
        map_max_voxel=",".join(str(v) for v in peak),
        map_max_ras_mm=",".join(f"{v:.2f}" for v in world),
        zero_map=zero,
        png=png_name,
        nifti=nifti_name,
    )
    return row


def _publish(staging: Path, run_dir: Path) -> None:
    """Replace ``run_dir/explanations`` by ``staging`` (each file in it was written atomically)."""
    final = run_dir / EXPLANATIONS_DIR
    old = run_dir / f".{EXPLANATIONS_DIR}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _base_record(cfg: WorkflowConfig, device: torch.device) -> dict[str, Any]:
    import monai

    opts = cfg.report.explain
    return {
        "version": FORMAT_VERSION,
        "method": opts.method,
        "monai_class": "GradCAMpp" if opts.method == "gradcampp" else "GradCAM",
        "target_layer": opts.layer,
        "target": f"the model's logit for {cfg.task.label} = {cfg.task.positive}",
        "requested": opts.cases,
        "seed": cfg.train.seed,
        "device": device.type,
        "monai_version": monai.__version__,
        "skipped": None,
    }


def _skip_reason(cfg: WorkflowConfig, device: torch.device, n_parameters: int) -> str | None:
    opts = cfg.report.explain
    if opts.cases <= 0:
        return "report.explain.cases is 0"
    if device.type == "cpu" and n_parameters > opts.cpu_max_parameters:
        return (
            f"no GPU, and the model has {n_parameters:,} parameters, more than "
            f"report.explain.cpu_max_parameters ({opts.cpu_max_parameters:,})"
        )
    return None


def _explain_cases(job: _Job, cases: pd.DataFrame) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(cases.csv rows, failures): each chosen case explained, a failing one recorded and skipped."""
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    used: set[str] = set()
    for case in _records(cases):
        try:
            rows.append(_explain_case(job, case, _file_stem(str(case[IMAGE_ID]), used)))
        except Exception as exc:  # one case never stops the others or the run
            path = job.paths.get(str(case[IMAGE_ID]))
            failures.append(
                {
                    IMAGE_ID: case[IMAGE_ID],
                    "category": case["category"],
                    "error": safe_error(exc, [path] if path else []),
                }
            )
            log.warning("explanation of %s failed: %s", case[IMAGE_ID], failures[-1]["error"])
    return rows, failures


def _explain(
    run_dir: Path, cfg: WorkflowConfig, cohort: Cohort | None, device: torch.device, staging: Path
) -> dict[str, Any]:
    record = _base_record(cfg, device)
    n_parameters = count_parameters(cfg)
    record["n_parameters"] = n_parameters
    reason = _skip_reason(cfg, device, n_parameters)
    if reason is not None:
        record["skipped"] = reason
        return record
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    if metrics.get("threshold") is None:
        record["skipped"] = "the run has no locked threshold (explanations are made for binary studies)"
        return record
    threshold = float(metrics["threshold"])
    cases, counts = select_cases(
        _test_predictions(run_dir, cfg), threshold, cfg.report.explain.cases, cfg.evaluation.aggregate
    )
    record.update(
        selection=SELECTION_RULE,
        normalisation=NORMALISATION,
        threshold=threshold,
        threshold_source=metrics.get("threshold_source"),
        counts=counts,
        shortfalls=shortfalls(counts),
        nifti=cfg.report.explain.nifti,
        nifti_geometry=NIFTI_GEOMETRY if cfg.report.explain.nifti else None,
    )
    torch.manual_seed(cfg.train.seed)
    folds = sorted({int(f) for value in cases[FOLD] for f in str(value).split(";")})
    nets = {f: load_fold_net(run_dir, cfg, f, device) for f in folds}
    grids = stage_grids(next(iter(nets.values())), cfg) if nets else {}
    layer = choose_layer(grids, cfg.report.explain.layer)
    record["target_layer"] = layer
    job = _Job(
        cfg=cfg,
        device=device,
        chain=preprocessing(cfg),
        paths=_image_paths(cfg, cohort) if len(cases) else {},
        cams={f: make_cam(net, cfg.report.explain.method, layer) for f, net in nets.items()},
        threshold=threshold,
        staging=staging,
    )
    rows, failures = _explain_cases(job, cases)
    artifacts.write_csv(staging / CASES_FILE, pd.DataFrame(rows, columns=list(CASE_COLUMNS)))
    record.update(
        n_cases=len(rows),
        zero_maps=[r[IMAGE_ID] for r in rows if r["zero_map"]],
        failures=failures,
        feature_map=_feature_map_note(grids, layer, cfg),
    )
    return record


STAGES = ("layer1", "layer2", "layer3", "layer4")  # MONAI ResNet's residual stages, shallow to deep
MIN_GRID = 4  # voxels per axis a map needs to locate anything (report.explain.layer: auto)


def stage_grids(net: nn.Module, cfg: WorkflowConfig) -> dict[str, tuple[int, ...]]:
    """The output grid of each ResNet stage for the study's input size (one forward pass)."""
    modules = dict(net.named_modules())
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, tuple(out.shape[2:])))
        for name in STAGES
        if name in modules
    ]
    try:
        param = next(net.parameters())
        with torch.no_grad():
            net(torch.zeros(1, cfg.model.in_channels, *cfg.data.spatial_size, device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def choose_layer(grids: dict[str, tuple[int, ...]], wanted: str) -> str:
    """``wanted``, or for "auto" the deepest stage at least MIN_GRID voxels wide (else the widest)."""
    if wanted != "auto":
        return wanted
    wide = [name for name in STAGES if name in grids and min(grids[name]) >= MIN_GRID]
    if wide:
        return wide[-1]
    return max(grids, key=lambda n: (min(grids[n]), STAGES.index(n))) if grids else TARGET_LAYER


def _feature_map_note(grids: dict[str, tuple[int, ...]], layer: str, cfg: WorkflowConfig) -> dict[str, Any]:
    """The explained layer's grid for the study's input size: a map is no finer than this."""
    shape = grids.get(layer, ())
    note = None
    if shape and min(shape) < 2:
        note = f"{layer} is {'x'.join(map(str, shape))} voxels at this input size: the maps cannot locate much"
    return {
        "shape": list(shape),
        "input": list(cfg.data.spatial_size),
        "note": note,
        "stages": {k: list(v) for k, v in grids.items()},
    }


def explain_run(
    run_dir: Path, cfg: WorkflowConfig | None = None, cohort: Cohort | None = None, *, device: str | None = None
) -> dict[str, Any]:
    """Explain chosen held-out cases of the finished run ``run_dir``; returns explanations.json.

    ``cfg``: the run's resolved workflow (read from config.yaml when None); ``cohort``: the
    study's cohort for the image paths (read from ``cfg.manifest`` when None); ``device``: "cuda"
    or "cpu" (None: the GPU when there is one). Writes ``run_dir/explanations/`` (replaced as a
    whole). Never raises for a problem of the run's data: the record says what went wrong.
    """
    run_dir = Path(run_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    staging = run_dir / f".{EXPLANATIONS_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    record: dict[str, Any] = {"version": FORMAT_VERSION, "device": dev.type, "skipped": None}
    try:
        cfg = cfg if cfg is not None else load_config(run_dir / RESOLVED_CONFIG_FILE, check_files=False)
        chosen = chosen_config(run_dir, cfg)
        if chosen is None:
            record["skipped"] = (
                "nested cross-validation: the outer folds chose search points with different model or data "
                "settings, so their models do not share one architecture and input"
            )
        else:
            record = _explain(run_dir, chosen, cohort, dev, staging)
    except Exception as exc:  # explanations are an extra: a failure is recorded, the run stands
        log.warning("explanations skipped: %s", safe_error(exc), exc_info=log.isEnabledFor(logging.DEBUG))
        record["skipped"] = f"explanations failed: {safe_error(exc)}"
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    try:
        if record.get("skipped"):
            shutil.rmtree(staging, ignore_errors=True)
        artifacts.write_json(staging / RECORD_FILE, record)
        _publish(staging, run_dir)
    except (OSError, artifacts.OutputError) as exc:
        log.warning("explanations could not be written: %s", safe_error(exc))
        shutil.rmtree(staging, ignore_errors=True)
        record["skipped"] = f"explanations could not be written: {safe_error(exc)}"
    return record
