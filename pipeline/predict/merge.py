"""``cohortnet predict --merge DIR... --out DIR``: the shards of one prediction, joined and checked.

The shards must come from one model, one manifest, the same folds and threshold, and one shard
count; every index 0..N-1 must be there exactly once, and every shard must be finished (its ledger
accounts for every image of its share and its tables are written). Anything else is refused with
every problem listed, so a missing or half-done shard is never merged into a result. A finished
shard's tables must all come from its last run (the ``predict_id`` of its ``provenance.json``) and
must not hold an image both predicted and excluded, and the shards' leakage guards must agree on
their ``patient_check`` (carried to the merged provenance). The merged tables carry the merged
provenance's ``predict_id``; it lists the shards' own ids under ``shards``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import ValidationError
from pipeline.predict.ledger import Ledger
from pipeline.predict.run import STAMP_FILE, PredictResult, external_metrics, write_metrics_and_report
from pipeline.reporting import artifacts
from pipeline.schema import EXCLUDED_FILE, IMAGE_ID, PATIENT_ID, PER_PATIENT_FILE, PREDICTIONS_FILE, PROVENANCE_FILE

_SAME = ("model_sha256", "config_sha256", "manifest_sha256", "folds", "threshold")
UNRECORDED = "not recorded"  # the patient_check of a shard made before it was recorded


def _shard_problems(folders: list[Path]) -> tuple[list[str], list[dict[str, Any]]]:
    problems, stamps = [], []
    for folder in folders:
        path = folder / STAMP_FILE
        if not path.is_file():
            problems.append(f"{folder}: not a prediction folder ({STAMP_FILE} missing)")
            continue
        stamp = json.loads(path.read_text())
        if not stamp.get("shard"):
            problems.append(f"{folder}: not a shard (made without --shard)")
            continue
        ledger = Ledger.open(folder)
        finished = len(set(ledger.done) | set(ledger.failed))
        if finished < stamp["n_images"] or not (folder / PROVENANCE_FILE).is_file():
            problems.append(
                f"{folder}: shard {stamp['shard'][0]}/{stamp['shard'][1]} is incomplete "
                f"({finished} of {stamp['n_images']} images)"
            )
        else:
            problems += _table_problems(folder, stamp)
        stamps.append(stamp)
    return problems, stamps


def _table_problems(folder: Path, stamp: dict[str, Any]) -> list[str]:
    """A finished shard's tables must be those of its last run: each carries the ``predict_id`` of
    its ``provenance.json`` (written last), and no image is both predicted and excluded. A run
    stopped while it rewrote them (``--retry-failed`` killed between the two tables) fails this."""
    predict_id = json.loads((folder / PROVENANCE_FILE).read_text()).get("predict_id")
    ids: dict[str, set[str]] = {}
    stale = []
    for name in (PREDICTIONS_FILE, PER_PATIENT_FILE, EXCLUDED_FILE):
        if not (folder / name).is_file():
            stale.append(f"{name} is missing")
            continue
        table = pd.read_csv(folder / name, dtype=str, keep_default_na=False)
        if "predict_id" not in table.columns or (table["predict_id"] != predict_id).any():
            stale.append(f"{name} is not from the run that wrote {PROVENANCE_FILE}")
        ids[name] = set(table[IMAGE_ID]) if IMAGE_ID in table.columns else set()
    both = ids.get(PREDICTIONS_FILE, set()) & ids.get(EXCLUDED_FILE, set())
    if both:
        stale.append(f"{len(both)} image(s) are both in {PREDICTIONS_FILE} and {EXCLUDED_FILE}")
    where = f"{folder}: shard {stamp['shard'][0]}/{stamp['shard'][1]}"
    return [f"{where}: {why} (its last run was stopped while writing its tables: rerun that shard)" for why in stale]


def _set_problems(stamps: list[dict[str, Any]]) -> list[str]:
    if not stamps:
        return []
    problems = [f"the shards differ in {k}" for k in _SAME if len({json.dumps(s[k]) for s in stamps}) > 1]
    counts = {s["shard"][1] for s in stamps}
    if len(counts) > 1:
        return [*problems, f"the shards were cut into different numbers of shares: {sorted(counts)}"]
    n = counts.pop()
    seen = [s["shard"][0] for s in stamps]
    problems += [f"shard {i}/{n} is missing" for i in range(n) if i not in seen]
    problems += [f"shard {i}/{n} is given twice" for i in sorted(set(seen)) if seen.count(i) > 1]
    return problems


def merge_shards(folders: list[Path], out: Path) -> PredictResult:
    """Join finished shards into ``out``; ValidationError listing every problem otherwise."""
    problems, stamps = _shard_problems(folders)
    problems += _set_problems(stamps)
    if problems:
        raise ValidationError(problems, "shards to merge")
    order = sorted(range(len(folders)), key=lambda k: stamps[k]["shard"][0])
    provs = [json.loads((folders[k] / PROVENANCE_FILE).read_text()) for k in order]
    checks = sorted({str(p.get("patient_check", UNRECORDED)) for p in provs})
    if len(checks) > 1:  # one shard checked patient ids, another did not: the merged claim would be false
        raise ValidationError(
            [
                f"the shards differ in their leakage guard's patient_check ({'; '.join(checks)}): rerun the shards "
                "with the same model archive and leakage key"
            ],
            "shards to merge",
        )

    label = provs[0]["model"]["label_col"]

    def joined(name: str) -> pd.DataFrame:
        types = {IMAGE_ID: str, PATIENT_ID: str, label: str}
        frames = [pd.read_csv(folders[k] / name, dtype=types) for k in order]
        return pd.concat(frames, ignore_index=True)

    images, patients, excluded = joined(PREDICTIONS_FILE), joined(PER_PATIENT_FILE), joined(EXCLUDED_FILE)
    record = {
        **{k: stamps[0][k] for k in _SAME},
        "shards": [p["predict_id"] for p in provs],
        "model": provs[0]["model"],
        **{k: provs[0].get(k) for k in ("study", "study_headline")},
        "study_patients_predicted": sum(int(p.get("study_patients_predicted") or 0) for p in provs),
        "patient_check": checks[0],
    }
    prov = {"predict_id": hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16], **record}
    for frame in (images, patients, excluded):  # every table carries the merged prediction's id
        frame["predict_id"] = prov["predict_id"]
    out.mkdir(parents=True, exist_ok=True)
    artifacts.write_csv(out / PREDICTIONS_FILE, images)
    artifacts.write_csv(out / PER_PATIENT_FILE, patients)
    artifacts.write_csv(out / EXCLUDED_FILE, excluded)
    artifacts.write_json(out / PROVENANCE_FILE, prov)
    model = prov["model"]
    metrics = None
    if label in images.columns and len(images):
        metrics = external_metrics(images, label, model["positive"], prov["threshold"], model["aggregate"])
        if metrics is not None:
            write_metrics_and_report(out, prov, metrics, images, patients, excluded)
    n_images = sum(s["n_images"] for s in stamps)
    return PredictResult(out, n_images, len(images), len(excluded), metrics)
