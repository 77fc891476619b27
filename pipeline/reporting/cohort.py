"""Who was included, who was not and why, and what the cohort looked like: the patient flow
(STARD / CONSORT style) and Table 1 with standardised differences between partitions.

Both come from the run folder's own records: ``flow.json`` (what the manifest held before the
workflow's filter, and what ``cohortnet scan`` excluded before the manifest, written when the run
starts), ``data_hashes.csv`` (every eligible image), ``excluded.csv`` (images that failed to load),
``patients.csv`` and ``splits.csv``. Nothing here reads the manifest or an image.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.schema import FOLD, GROUP, IMAGE_ID, PATIENT_ID, ROLE, TARGET

LARGE_SMD = 0.1  # conventional flag for imbalance between groups (Austin 2009)
MAX_LEVELS = 8  # categories listed per characteristic; the rest are pooled as "other"
ACQUISITION_COLUMNS = ("format", "modality", "manufacturer", "transfer_syntax")  # cohortnet scan's QC columns


# --------------------------------------------------------------------------- patient flow


def scan_exclusions(manifest: Path) -> dict[str, Any] | None:
    """Counts per reason code in ``cohortnet scan``'s exclusions table beside the manifest, if any
    (only the counts: the table names sources and patients). Files skipped as not images at all
    (``verdict`` skipped: a README, a DICOMDIR index) are counted apart: they were never scans."""
    path = manifest.with_name(manifest.stem + ".exclusions.csv")
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "reason" not in table.columns:
        return None
    skipped = table["verdict"] == "skipped" if "verdict" in table.columns else pd.Series(False, index=table.index)
    by_reason = table.loc[~skipped, "reason"].replace("", "unknown").value_counts()
    return {
        "file": path.name,
        "excluded": int((~skipped).sum()),
        "by_reason": {str(k): int(v) for k, v in by_reason.items()},
        "not_images": int(skipped.sum()),
    }


def flow_source(
    source_counts: tuple[int, int],
    eligible: pd.DataFrame,
    manifest: Path,
    keep: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """What the flow diagram needs from before the run: the manifest as read, the workflow's filter
    and the scan's exclusions (``eligible``: the cohort table after the filter)."""
    images, patients = source_counts
    n_images, n_patients = len(eligible), int(eligible[PATIENT_ID].nunique())
    rule = filter_rule(keep)
    return {
        "manifest": {"file": manifest.name, "images": int(images), "patients": int(patients)},
        "scan": scan_exclusions(manifest),
        "filter": {"rule": rule, "images": images - n_images, "patients": patients - n_patients} if keep else None,
        "eligible": {"images": n_images, "patients": n_patients},
    }


def filter_rule(keep: Mapping[str, Sequence[Any]]) -> str:
    """The workflow filter in words, ``site in {A, B}`` (``keep``: the workflow's ``filter``, or its
    labelled copy ``redact.Redaction.keep`` for a copy that leaves the run folder)."""
    return "; ".join(f"{col} in {{{', '.join(map(str, vals))}}}" for col, vals in keep.items())


def redact_flow(flow: dict[str, Any], keep: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """``flow`` (``flow_counts``, or the ``flow.json`` it starts from) with the filter's rule as
    ``filter_rule(keep)``; ``keep``: the run's filter with its values as labels
    (``redact.Redaction.keep``). A flow with a filter but no ``keep`` (a config without one) shows no
    values at all. The filter block is marked ``redacted``."""
    flt = flow.get("filter")
    if not flt:
        return flow
    rule = filter_rule(keep) if keep else "values left out of this copy"
    return {**flow, "filter": {**flt, "rule": rule, "redacted": True}}


def usable_images(image_ids: Sequence[str], excluded: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every eligible image, those not in ``excluded``), each with image_id and patient_id (the
    patient of an image id ``<patient_id>#<n>``, the manifest's contract)."""
    images = pd.DataFrame({IMAGE_ID: [str(i) for i in image_ids]})
    images[PATIENT_ID] = images[IMAGE_ID].str.rsplit("#", n=1).str[0]
    failed = set(excluded[IMAGE_ID].astype(str)) if IMAGE_ID in excluded.columns else set()
    return images, images[~images[IMAGE_ID].isin(failed)]


def flow_counts(
    source: dict[str, Any] | None,
    image_ids: Sequence[str],
    excluded: pd.DataFrame,
    patients: pd.DataFrame,
    splits: pd.DataFrame,
) -> dict[str, Any]:
    """Every box of the flow diagram. ``image_ids``: the eligible images (data_hashes.csv);
    ``patients``: patient_id and target of the eligible patients; ``splits``: fold, patient_id, role."""
    images, usable = usable_images(image_ids, excluded)
    included = set(usable[PATIENT_ID])
    eligible_patients = set(patients[PATIENT_ID].astype(str))
    reasons = excluded["reason"].value_counts() if len(usable) < len(images) else pd.Series(dtype=int)
    target = patients.set_index(patients[PATIENT_ID].astype(str))[TARGET].astype(int)
    inc_target = target[target.index.isin(included)]
    out: dict[str, Any] = dict(source or {})
    out["eligible"] = {"images": len(images), "patients": len(eligible_patients)}
    out["loading"] = {
        "images": len(images) - len(usable),
        "patients": len(eligible_patients - included),
        "by_reason": {str(k): int(v) for k, v in reasons.items()},
    }
    out["included"] = {
        "images": len(usable),
        "patients": len(included),
        "positives": int(inc_target.sum()),
        "negatives": int(len(inc_target) - inc_target.sum()),
    }
    out["partitions"] = _partitions(splits, target, included)
    return out


def _partitions(splits: pd.DataFrame, target: pd.Series, included: set[str]) -> list[dict[str, Any]]:
    """Per fold: the held-out (test) patients, with the train and validation counts that fold used;
    with one fold (holdout), the train, val and test sets."""
    s = splits.assign(**{PATIENT_ID: splits[PATIENT_ID].astype(str)})
    s = s[s[PATIENT_ID].isin(included)]
    s = s.assign(**{TARGET: s[PATIENT_ID].map(target).astype(int)})
    folds = sorted(s[FOLD].unique())
    rows = []
    if len(folds) == 1:
        for role in ("train", "val", "test"):
            part = s[s[ROLE] == role]
            rows.append(_partition(role, part))
        return rows
    for fold in folds:
        part = s[s[FOLD] == fold]
        row = _partition(_fold_name(part, fold), part[part[ROLE] == "test"])
        row["train"] = int((part[ROLE] == "train").sum())
        row["val"] = int((part[ROLE] == "val").sum())
        rows.append(row)
    return rows


def _fold_name(part: pd.DataFrame, fold: Any) -> str:
    """ "fold k", or with leave-one-group-out "fold k: <held-out value>"."""
    if GROUP in part.columns and len(part):
        return f"fold {fold}: {part[GROUP].iloc[0]}"
    return f"fold {fold}"


def _partition(name: str, part: pd.DataFrame) -> dict[str, Any]:
    pos = int(part[TARGET].sum())
    return {"name": name, "patients": len(part), "positives": pos, "negatives": len(part) - pos}


def flow_problems(flow: dict[str, Any]) -> list[str]:
    """The ways the flow's counts fail to add up (empty when every box is accounted for)."""
    problems = []
    man, flt = flow.get("manifest"), flow.get("filter")
    eli, load, inc = flow["eligible"], flow["loading"], flow["included"]
    if man:
        dropped = flt or {"images": 0, "patients": 0}
        for unit in ("images", "patients"):
            if man[unit] - dropped[unit] != eli[unit]:
                problems.append(f"manifest {unit} {man[unit]} - filtered {dropped[unit]} != eligible {eli[unit]}")
    for unit in ("images", "patients"):
        if eli[unit] - load[unit] != inc[unit]:
            problems.append(f"eligible {unit} {eli[unit]} - excluded {load[unit]} != included {inc[unit]}")
    if sum(load["by_reason"].values()) != load["images"]:
        problems.append("the exclusion reasons do not add up to the excluded images")
    if inc["positives"] + inc["negatives"] != inc["patients"]:
        problems.append("included positives + negatives != included patients")
    parts = flow["partitions"]
    held_out = [p for p in parts if "train" in p] or parts
    if sum(p["patients"] for p in held_out) != inc["patients"]:
        problems.append("the partitions do not hold every included patient exactly once")
    for p in parts:
        if p["positives"] + p["negatives"] != p["patients"]:
            problems.append(f"{p['name']}: positives + negatives != patients")
    return problems


# --------------------------------------------------------------------------- Table 1


def patient_partition(splits: pd.DataFrame) -> pd.Series:
    """patient_id -> the partition Table 1 describes: the fold whose test set holds the patient
    (k-fold) or the patient's role (holdout)."""
    s = splits.assign(**{PATIENT_ID: splits[PATIENT_ID].astype(str)})
    if s[FOLD].nunique() == 1:
        return s.set_index(PATIENT_ID)[ROLE]
    test = s[s[ROLE] == "test"]
    if GROUP in test.columns:
        return test.set_index(PATIENT_ID).apply(lambda r: f"fold {r[FOLD]}: {r[GROUP]}", axis=1)
    return test.set_index(PATIENT_ID)[FOLD].map(lambda f: f"fold {f}")


MISSING_WORDS = frozenset({"", "na", "n/a", "nan", "none", "null", "unknown", "missing", "?"})
FEW_LEVELS = 5  # a numeric column with at most this many distinct integers (a code, a count) is shown as counts


def _blank_missing(values: pd.Series) -> pd.Series:
    """Text values with the usual spellings of "no value" (NA, unknown, ...) made empty."""
    text = values.astype(str).str.strip()
    return text.where(~text.str.lower().isin(MISSING_WORDS), "")


def _numeric(values: pd.Series) -> pd.Series | None:
    """The values as numbers when every present one is a number and they are not a few integer
    codes (sites 1/2/3, sex 0/1); None otherwise (the column is shown as counts)."""
    present = values[values != ""]
    number = pd.to_numeric(present, errors="coerce")
    if not len(present) or number.isna().any():
        return None
    few_codes = number.nunique() <= FEW_LEVELS and bool((number == number.round()).all())
    return None if few_codes else number


def _smd_numeric(a: pd.Series, b: pd.Series) -> float:
    """(mean_a - mean_b) / sqrt((var_a + var_b) / 2), as Austin (2009)."""
    pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2.0)
    diff = abs(a.mean() - b.mean())
    if pooled > 0:
        return float(diff / pooled)
    return float("inf") if diff > 0 else 0.0  # constant within each, different between: fully separated


def _smd_categorical(a: pd.Series, b: pd.Series, levels: Sequence[str]) -> float:
    """Multi-level standardised difference of proportions (Yang & Dalton 2012); for two levels it is
    |p_a - p_b| / sqrt((p_a(1 - p_a) + p_b(1 - p_b)) / 2)."""
    pa = np.array([(a == lv).mean() for lv in levels[1:]])
    pb = np.array([(b == lv).mean() for lv in levels[1:]])
    cov = (np.diag(pa) - np.outer(pa, pa) + np.diag(pb) - np.outer(pb, pb)) / 2.0
    diff = pa - pb
    if not np.any(np.abs(diff) > 1e-12):
        return 0.0
    # a difference along a direction with no variance in either group (one level only in one
    # group, none in the other) is a complete separation, which pinv would silently call 0
    null = np.linalg.eigh(cov)
    flat = null.eigenvectors[:, null.eigenvalues <= 1e-12 * max(1.0, float(null.eigenvalues.max(initial=0.0)))]
    if flat.size and np.any(np.abs(flat.T @ diff) > 1e-9):
        return float("inf")
    value = float(diff @ np.linalg.pinv(cov) @ diff)
    return float(np.sqrt(max(value, 0.0)))


def _max_smd(groups: dict[str, pd.Series], smd: Any) -> tuple[float | None, str]:
    """The largest standardised difference over pairs of partitions, and the pair."""
    best: tuple[float | None, str] = (None, "")
    names = [n for n, g in groups.items() if len(g) > 1]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            value = smd(groups[a], groups[b])
            if not np.isnan(value) and (best[0] is None or value > best[0]):
                best = (value, f"{a} vs {b}")
    return best


def _component(text: pd.Series, index: int, least: int) -> pd.Series:
    """Component ``index`` of "AxBxC" values that have at least ``least`` components ("" otherwise)."""
    return text.astype(str).map(lambda v: v.split("x")[index] if len(v.split("x")) >= least else "")


def _derived(patients: pd.DataFrame) -> pd.DataFrame:
    """Acquisition characteristics from the scan's QC columns: slice count and slice spacing."""
    out = pd.DataFrame(index=patients.index)
    if "shape" in patients.columns:
        out["slices"] = _component(patients["shape"], 2, 3)
    if "spacing" in patients.columns:
        out["in-plane spacing (mm)"] = _component(patients["spacing"], 0, 1)
        out["slice spacing (mm)"] = _component(patients["spacing"], 2, 3)
    return out


def table_one(
    patients: pd.DataFrame,
    partition: pd.Series,
    covariates: Sequence[str],
    n_images: pd.Series | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of Table 1 over the patients that have a partition: n, positives, each
    covariate (numeric: median [IQR]; otherwise counts and %), the acquisition fields the scan
    recorded, with the largest pairwise standardised difference between partitions per row."""
    table = patients.assign(**{PATIENT_ID: patients[PATIENT_ID].astype(str)})
    table = table[table[PATIENT_ID].isin(partition.index)].reset_index(drop=True)
    table["_part"] = table[PATIENT_ID].map(partition).astype(str)
    names = sorted(table["_part"].unique(), key=_partition_order)
    columns = ["overall", *names]
    counts = table["_part"].value_counts()
    rows = [{"characteristic": "patients, n", "values": [len(table), *(int(counts[n]) for n in names)]}]
    if n_images is not None:
        images = table[PATIENT_ID].map(n_images).fillna(0).astype(float)
        rows += _numeric_rows("images per patient", images, table["_part"], names)
    positive = table[TARGET].astype(int).astype(str)
    rows += _categorical_rows("positive class", positive, table["_part"], names, only="1")
    extra = _derived(table)
    chosen = [c for c in dict.fromkeys([*covariates, *ACQUISITION_COLUMNS]) if c in table.columns]
    for col in [*chosen, *extra.columns]:
        values = _blank_missing(table[col] if col in table.columns else extra[col])
        if (values == "").all():
            continue
        number = _numeric(values)
        if number is not None:
            rows += _numeric_rows(col, number.reindex(values.index), table["_part"], names)
        else:
            rows += _categorical_rows(col, values, table["_part"], names)
    return columns, rows


def _partition_order(name: str) -> tuple[int, Any]:
    """Roles in their order, then folds by number ("fold 10" after "fold 9"; "fold 2: site 1", a
    leave-one-group-out fold, by its fold, not by the held-out group's name or label)."""
    roles = {"train": 0, "val": 1, "test": 2}
    if name in roles:
        return (0, roles[name])
    fold = re.match(r"fold (\d+)(?::|$)", name)
    return (1, int(fold.group(1))) if fold else (2, name)


def _num(x: float) -> str:
    """Three significant digits, never in exponent form (1250, not 1.25e+03)."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _numeric_rows(name: str, values: pd.Series, part: pd.Series, names: Sequence[str]) -> list[dict[str, Any]]:
    def cell(v: pd.Series) -> str:
        v = v.dropna()
        if v.empty:
            return "–"
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        return f"{_num(med)} [{_num(q1)}, {_num(q3)}]"

    groups = {n: values[part == n].dropna() for n in names}
    smd, pair = _max_smd(groups, _smd_numeric)
    row = {"characteristic": f"{name}, median [IQR]", "values": [cell(values), *(cell(groups[n]) for n in names)]}
    out = [_with_smd(row, smd, pair)]
    missing = values.isna()
    if missing.any():
        out.append(_missing_row(missing, part, names))
    return out


def _categorical_rows(
    name: str, values: pd.Series, part: pd.Series, names: Sequence[str], only: str | None = None
) -> list[dict[str, Any]]:
    present = values[values != ""]
    ranked = list(present.value_counts().index)
    shown = ranked[:MAX_LEVELS]
    pooled = present.where(present.isin(shown), "other")
    levels = sorted(set(pooled), key=lambda lv: (lv == "other", shown.index(lv) if lv in shown else 0))
    groups = {n: pooled[part[pooled.index] == n] for n in names}
    smd, pair = _max_smd(groups, lambda a, b: _smd_categorical(a, b, levels)) if len(levels) > 1 else (None, "")

    def cell(v: pd.Series, level: str) -> str:
        k = int((v == level).sum())
        return f"{k} ({100.0 * k / len(v):.0f}%)" if len(v) else "–"

    if only is not None:
        row = {
            "characteristic": f"{name}, n (%)",
            "values": [cell(pooled, only), *(cell(groups[n], only) for n in names)],
        }
        return [_with_smd(row, smd, pair)]
    out = [_with_smd({"characteristic": f"{name}, n (%)", "values": [""] * (len(names) + 1)}, smd, pair)]
    for level in levels:
        values_row = [cell(pooled, level), *(cell(groups[n], level) for n in names)]
        out.append({"characteristic": level, "level": True, "values": values_row})
    missing = values == ""
    if missing.any():
        out.append(_missing_row(missing, part, names))
    return out


def _missing_row(missing: pd.Series, part: pd.Series, names: Sequence[str]) -> dict[str, Any]:
    values = [int(missing.sum()), *(int(missing[part == n].sum()) for n in names)]
    return {"characteristic": "missing", "level": True, "values": values}


def _with_smd(row: dict[str, Any], smd: float | None, pair: str) -> dict[str, Any]:
    return {**row, "smd": smd, "smd_pair": pair, "large": smd is not None and smd > LARGE_SMD}


def table_one_frame(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Table 1 as written to ``table1.csv``."""
    records = []
    for r in rows:
        name = f"  {r['characteristic']}" if r.get("level") else r["characteristic"]
        smd = r.get("smd")
        records.append(
            {
                "characteristic": name,
                **dict(zip(columns, r["values"], strict=True)),
                "max_smd": None if smd is None else round(smd, 3),
                "smd_between": r.get("smd_pair", ""),
            }
        )
    return pd.DataFrame(records)
