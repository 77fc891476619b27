"""What a run may show outside its folder (the MLflow store's copies of the report, the metrics and
the parameters): the workflow's paths as file names, no command line (its arguments are paths and
overrides), and no value of a *sensitive column* in clear. The report itself leaves out the
per-patient table, the excluded images and the Grad-CAM cases (``html.render_report(..., redact=True)``).

The sensitive columns (``sensitive_columns``) are the workflow filter's keys and
``validation.group`` (the column leave-one-group-out holds out, or a grouped validation's), but not
``split`` or the label: their values name hospitals, scanners or patients, and they reach the report
through the flow diagram, the fold table, Table 1, the subgroups, the statistical warnings and the
checklist. ``Redaction`` maps each of their values to a numbered label, ``<column> 1``, ``<column>
2``…; the report's inputs and ``metrics.json`` go through it before the copy's sections are built
(``build.redacted_inputs``), and ``Redaction.refuse`` checks the finished text before it is written.
The map itself is never written: a build draws it afresh."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline.config import WorkflowConfig
from pipeline.reporting.cohort import MISSING_WORDS
from pipeline.schema import SPLIT

REDACTED_REPORT_FILE = "report_redacted.html"  # the report without patients, written when tracking is on
REDACTED_METRICS_FILE = "metrics_redacted.json"  # metrics.json with the sensitive values as labels, likewise
PATH_KEYS = ("manifest", "output_dir", "model.pretrained", "tracking.mlflow")  # shown by their file name only
_ROOTS = "data.image_roots"
_OMITTED = "(left out of this copy: see {} in the run folder)"
# Values are searched for in free text (warnings, the finished page) only from this length on and when
# they are not numbers: "A" or "12" are spelled by ordinary words and counts. Shorter values and numbers
# are replaced where they are known to stand: a column's cells, ``<column>=<value>``, a filter's list.
LEAST = 3
_NOT_VALUES = MISSING_WORDS | {"(missing)"}  # no value at all: kept as it is (Table 1 counts it as missing)
_NUMBER = re.compile(r"[\d\s.,:+-]+")
# a whole word: not inside a longer word, nor a number's digits around a decimal point ("0.001")
_BEFORE, _AFTER = r"(?<![\w.])", r"(?!\w|\.\d)"
_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]*")


class RedactionError(ValueError):
    """A copy for outside the run folder would show a sensitive column's value in clear."""


def sensitive_columns(cfg: WorkflowConfig) -> tuple[str, ...]:
    """The columns whose values never leave the run folder in clear: the workflow filter's keys and
    ``validation.group`` (leave-one-group-out's held-out column, or a grouped validation's). The
    official ``split`` and the label column are not among them: their values (train, val, test; the
    classes) name no one, and the report's own words spell them."""
    group = (cfg.validation.group,) if cfg.validation.group else ()
    plain = {SPLIT, cfg.task.label}
    return tuple(c for c in dict.fromkeys([*cfg.filter, *group]) if c not in plain)


def _searchable(value: str) -> bool:
    return len(value.strip()) >= LEAST and not _NUMBER.fullmatch(value)


@dataclass(frozen=True)
class Redaction:
    """The sensitive columns' values and their labels: ``labels[column][value] = "<column> <k>"``."""

    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, values: Mapping[str, Iterable[Any]], salt: bytes | None = None) -> Redaction:
        """Labels for every value of each column of ``values`` (blank and "unknown" are no values).
        The values are numbered in the order of their HMAC-SHA256 under ``salt``, by default a random
        key drawn per build: a label says nothing of its value, not even where it sorts, and the same
        build (report and metrics) shares one map; a rebuild draws new labels."""
        key = secrets.token_bytes(32) if salt is None else salt
        labels = {}
        for column, vals in values.items():
            distinct = {str(v) for v in vals if str(v).strip().lower() not in _NOT_VALUES}
            keyed = sorted((hmac.new(key, f"{column}\x1f{v}".encode(), hashlib.sha256).digest(), v) for v in distinct)
            labels[column] = {v: f"{column} {k}" for k, (_, v) in enumerate(keyed, 1)}
        return cls(labels)

    @property
    def columns(self) -> list[str]:
        return list(self.labels)

    def value(self, column: str, value: Any) -> Any:
        """``value`` of ``column`` as its label (a value the map does not know of, as it is)."""
        return self.labels.get(column, {}).get(str(value), value)

    def values(self, column: str, values: Iterable[Any]) -> list[Any]:
        """``values`` of ``column`` as labels, in the labels' order: a list's own order (a filter
        written alphabetically, subgroups sorted by value) would tell how the values sort."""
        rank = {label: k for k, label in enumerate(self.labels.get(column, {}).values())}
        labelled = [self.value(column, v) for v in values]
        return sorted(labelled, key=lambda v: (0, rank[v], "") if v in rank else (1, 0, str(v)))

    def keep(self, keep: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """A workflow ``filter`` with its kept values as labels (``values``)."""
        return {column: self.values(column, vals) for column, vals in keep.items()}

    def frame(self, table: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
        """``table`` with the cells of ``columns`` (those it has and the map knows) as labels."""
        known = [c for c in columns if c in table.columns and c in self.labels]
        return table.assign(**{c: table[c].map(lambda v, c=c: self.value(c, v)) for c in known})

    @cached_property
    def _words(self) -> tuple[re.Pattern[str] | None, dict[str, str]]:
        """One pattern of every value in free text (``<column>=<value>``, and searchable values
        alone), longest first, and the replacement of each (lower-cased) match."""
        subs: dict[str, str] = {}
        for column, labels in self.labels.items():
            for value, label in labels.items():
                subs.setdefault(f"{column}={value}".lower(), f"{column}={label}")
        for labels in self.labels.values():
            for value, label in labels.items():
                if _searchable(value):
                    subs.setdefault(value.lower(), label)
        if not subs:
            return None, subs
        alternatives = "|".join(re.escape(k) for k in sorted(subs, key=len, reverse=True))
        return re.compile(f"{_BEFORE}(?:{alternatives}){_AFTER}", re.IGNORECASE), subs

    def text(self, text: str) -> str:
        """Free text (a warning, a file name) with every value in it, as a whole word, as its label."""
        pattern, subs = self._words
        if pattern is None:
            return text
        return pattern.sub(lambda m: subs.get(m.group(0).lower(), "(redacted)"), text)

    def json(self, node: Any) -> Any:
        """Every string of a JSON-like tree (keys too) through ``text``."""
        if isinstance(node, dict):
            return {self.text(k) if isinstance(k, str) else k: self.json(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [self.json(v) for v in node]
        return self.text(node) if isinstance(node, str) else node

    def metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``metrics.json`` as it may leave the run folder: a sensitive column's subgroup values as
        labels (whatever their length), then every string through ``text`` (the warnings)."""
        subgroups = dict(metrics.get("subgroups") or {})
        for column, block in subgroups.items():
            if column in self.labels and isinstance(block, dict):
                groups = {str(self.value(column, g.get("value"))): g for g in block.get("groups") or []}
                ordered = [{**groups[str(v)], "value": v} for v in self.values(column, groups)]  # by label
                subgroups[column] = {**block, "groups": ordered}
        return self.json({**metrics, "subgroups": subgroups} if "subgroups" in metrics else metrics)

    @cached_property
    def _search(self) -> dict[str, re.Pattern[str]]:
        out = {}
        for column, labels in self.labels.items():
            values = sorted((v for v in labels if _searchable(v)), key=len, reverse=True)
            if values:
                alternatives = "|".join(re.escape(v) for v in values)
                out[column] = re.compile(f"{_BEFORE}(?:{alternatives}){_AFTER}", re.IGNORECASE)
        return out

    def found(self, text: str) -> list[str]:
        """The columns of which a searchable value occurs in ``text`` (as a whole word, any case)."""
        return [column for column, pattern in self._search.items() if pattern.search(text)]

    def refuse(self, text: str, what: str) -> None:
        """Raise ``RedactionError`` naming the column (never the value) when ``text``, the copy
        ``what`` (its figures' base64 data left aside), shows a sensitive value in clear."""
        columns = self.found(_DATA_URI.sub("data:", text))
        if columns:
            raise RedactionError(
                f"{what} is not written: it would show values of the column(s) {', '.join(columns)} in clear; "
                f"outside the run folder they appear only as labels ({columns[0]} 1, {columns[0]} 2, ...)"
            )


def count(values: Any) -> str:
    """A filter's kept values as their number ("3 values"): what the parameters show of them."""
    n = len(values) if isinstance(values, list | tuple) else 1
    return f"{n} value{'s' if n != 1 else ''}"


def leaf(key: str, value: Any, redaction: Redaction | None = None) -> Any:
    """One resolved workflow value (``key``: its dotted name) as it may leave the run folder: a
    filter's values as their labels (``redaction``) or, without one, as their number."""
    if key.startswith("filter."):
        column, values = key.removeprefix("filter."), value if isinstance(value, list | tuple) else [value]
        return redaction.values(column, values) if redaction is not None else count(value)
    if key in PATH_KEYS or any(key.endswith(f".{k}") for k in PATH_KEYS):  # search.model.pretrained too
        if isinstance(value, list | tuple):
            value = [Path(str(v)).name if v else v for v in value]
        else:
            value = Path(str(value)).name if value else value
    elif key == _ROOTS:
        value = [Path(str(p)).name for p in value or ()]
    return value if redaction is None else redaction.json(value)


def workflow(tree: dict[str, Any], prefix: str = "", redaction: Redaction | None = None) -> dict[str, Any]:
    """A resolved workflow (``WorkflowConfig.to_dict()``) with every value through ``leaf``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out[key] = workflow(value, f"{name}.", redaction) if isinstance(value, dict) else leaf(name, value, redaction)
    return out


def config_text(text: str, redaction: Redaction | None = None) -> str:
    """The run folder's ``config.yaml`` text, redacted (written as the run writes it)."""
    try:
        tree = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        tree = None
    if not isinstance(tree, dict):
        return ""
    return yaml.safe_dump(workflow(tree, redaction=redaction), sort_keys=False)


def record(environment: dict[str, Any], name: str) -> dict[str, Any]:
    """An environment (or provenance) record without the command line it was made by; ``name``:
    the record's file in the run folder."""
    return {k: (_OMITTED.format(name) if k == "command" else v) for k, v in environment.items()}
