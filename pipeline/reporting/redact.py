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
(``build.redacted_inputs``), and ``Redaction.refuse`` checks the finished text before it is written:
the page's visible text and its title and alt attributes (``page_text``: no tag, style, script or
figure data), a copy that still shows a value in clear is not written. A column whose values already
look like such labels ("Site 1") gets labels of another stem (``site #1``…), so that no label spells a
value.

A value that is also a word of the report's own vocabulary (``vocabulary``: the words of the report
templates, of the string literals of ``pipeline.reporting`` and ``pipeline.evaluation`` and of the
checklists), such as "Test", "Internal" or "Images" (every word of it such a word), cannot be told
apart from that word in free text: the safety net does not search for it and ``Redaction.text``
leaves it in free text (the study's name, a warning's prose); it is still replaced where it stands
as the column's value (its cells, ``<column>=<value>``, the filter's list, the held-out groups, the
subgroups' values). The map itself is never written: a build draws it afresh."""

from __future__ import annotations

import ast
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from html.parser import HTMLParser
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


_HERE = Path(__file__).resolve().parent
_LETTERS = re.compile(r"[^\W\d_]+")  # a word of letters
_TOKENS = re.compile(r"[^\W_]+")  # a value's words and numbers
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def _words_of(text: str) -> set[str]:
    return set(_LETTERS.findall(text.lower()))


def _literals(source: str) -> list[str]:
    """The str constants of a module (f-strings' fixed parts too), not its docstrings: what it can
    write into a report."""
    tree = ast.parse(source)
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    ]


def _template_text(source: str) -> str:
    """A template's visible text, its Jinja tags read for their string literals only."""
    literals = lambda m: " ".join(a or b for a, b in _QUOTED.findall(m.group(0)))  # noqa: E731
    return page_text(_JINJA.sub(literals, source))


@cache
def vocabulary() -> frozenset[str]:
    """The report's own words (lower case, letters only): those of the report templates' text, of
    the string literals of ``pipeline/reporting/*.py`` and ``pipeline/evaluation/*.py`` and of the
    checklists. A value made only of such words reads as the report's own word in free text."""
    words: set[str] = set()
    for path in sorted((_HERE / "templates").glob("*.html")):
        words |= _words_of(_template_text(path.read_text(encoding="utf-8")))
    for path in sorted((_HERE / "checklists").rglob("*")):
        if path.is_file():
            words |= _words_of(path.read_text(encoding="utf-8"))
    for folder in (_HERE, _HERE.parent / "evaluation"):
        for path in sorted(folder.glob("*.py")):
            words |= _words_of("\n".join(_literals(path.read_text(encoding="utf-8"))))
    return frozenset(words)


def ordinary(value: str) -> bool:
    """Whether ``value`` is spelled only by words of the report's ``vocabulary`` ("Test", "Main
    campus"): in free text it cannot be told apart from the report's own words."""
    tokens = _TOKENS.findall(value.lower())
    return bool(tokens) and all(t.isalpha() and t in vocabulary() for t in tokens)


def _searchable(value: str) -> bool:
    return len(value.strip()) >= LEAST and not _NUMBER.fullmatch(value)


def _searched(value: str) -> bool:
    """A value the safety net looks for in free text (and ``Redaction.text`` replaces there)."""
    return _searchable(value) and not ordinary(value)


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def _pattern(values: Iterable[str]) -> re.Pattern[str]:
    """Any of ``values`` as a whole word, any case, any run of white space between its words."""
    ordered = sorted(set(values), key=len, reverse=True)
    alternatives = "|".join(r"\s+".join(re.escape(w) for w in v.split()) for v in ordered)
    return re.compile(f"{_BEFORE}(?:{alternatives}){_AFTER}", re.IGNORECASE)


# label stems, the first whose labels spell no value: "<column> <k>", or for values such as "Site 1"…
_STEMS = ("{c} {k}", "{c} #{k}", "{c} group {k}", "{c} label {k}", "label {k} of {c}")


def _labelled(column: str, ordered: Sequence[str], taken: re.Pattern[str] | None, values: set[str]) -> dict[str, str]:
    for stem in _STEMS:
        labels = [stem.format(c=column, k=k) for k in range(1, len(ordered) + 1)]
        if not any(label.lower() in values or (taken is not None and taken.search(label)) for label in labels):
            break
    return dict(zip(ordered, labels, strict=True))  # the last stem, when none will do: the check refuses


class _Visible(HTMLParser):
    """A page's text as a reader sees it: the text outside ``<style>`` and ``<script>``, and the
    title and alt attributes (tooltips, images' text), entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script"):
            self.hidden += 1
        self.parts += [v for k, v in attrs if k in ("title", "alt") and v]

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.parts += [v for k, v in attrs if k in ("title", "alt") and v]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script") and self.hidden:
            self.hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def page_text(page: str) -> str:
    """The visible text and title/alt attributes of an HTML ``page`` (``_Visible``), one part per
    line, figure data left out: what the page shows a reader."""
    parser = _Visible()
    parser.feed(page)
    parser.close()
    return _DATA_URI.sub("data:", "\n".join(parser.parts))


@dataclass(frozen=True)
class Redaction:
    """The sensitive columns' values and their labels: ``labels[column][value] = "<column> <k>"``."""

    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, values: Mapping[str, Iterable[Any]], salt: bytes | None = None) -> Redaction:
        """Labels for every value of each column of ``values`` (blank and "unknown" are no values).
        The values are numbered in the order of their HMAC-SHA256 under ``salt``, by default a random
        key drawn per build: a label says nothing of its value, not even where it sorts, and the same
        build (report and metrics) shares one map; a rebuild draws new labels.
        A column whose values look like its labels ("Site 1") is labelled with the first stem of
        ``_STEMS`` whose labels match no value that the check searches for (nor any value at all,
        in any case): "site #1", "site #2"…"""
        key = secrets.token_bytes(32) if salt is None else salt
        distinct = {
            c: {str(v) for v in vals if str(v).strip().lower() not in _NOT_VALUES} for c, vals in values.items()
        }
        everything = {v for vals in distinct.values() for v in vals}
        searched = [v for v in everything if _searched(v)]
        taken = _pattern(searched) if searched else None
        lowered = {v.strip().lower() for v in everything}
        labels = {}
        for column, vals in distinct.items():
            keyed = sorted((hmac.new(key, f"{column}\x1f{v}".encode(), hashlib.sha256).digest(), v) for v in vals)
            labels[column] = _labelled(column, [v for _, v in keyed], taken, lowered)
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
        """One pattern of every value in free text (``<column>=<value>``, whatever the value, and
        the values searched for alone: ``_searched``, not the report's own words), longest first,
        and the replacement of each match (lower-cased, its white space as single spaces)."""
        subs: dict[str, str] = {}
        for column, labels in self.labels.items():
            for value, label in labels.items():
                subs.setdefault(_key(f"{column}={value}"), f"{column}={label}")
        for labels in self.labels.values():
            for value, label in labels.items():
                if _searched(value):
                    subs.setdefault(_key(value), label)
        if not subs:
            return None, subs
        return _pattern(subs), subs

    def text(self, text: str) -> str:
        """Free text (a warning, a file name) with every value in it, as a whole word, as its label;
        a value spelled by the report's own words only where it stands as ``<column>=<value>``."""
        pattern, subs = self._words
        if pattern is None:
            return text
        return pattern.sub(lambda m: subs.get(_key(m.group(0)), "(redacted)"), text)

    def json(self, node: Any) -> Any:
        """Every string value of a JSON-like tree through ``text``; its keys as they are (the
        report reads them: a value "images" or "folds" renames no key)."""
        if isinstance(node, dict):
            return {k: self.json(v) for k, v in node.items()}
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
        """Each column's pattern of the values the safety net looks for (``_searched``)."""
        out = {}
        for column, labels in self.labels.items():
            values = [v for v in labels if _searched(v)]
            if values:
                out[column] = _pattern(values)
        return out

    def found(self, text: str) -> list[str]:
        """The columns of which a value searched for (``_searched``: at least ``LEAST`` characters,
        not a number, not only the report's own words) occurs in ``text`` (as a whole word, any
        case). For a page, ``text`` is its ``page_text``."""
        return [column for column, pattern in self._search.items() if pattern.search(text)]

    def example(self, column: str) -> list[str]:
        """The first two labels of ``column`` (as "site 1", "site 2"), for a message."""
        labels = sorted(self.labels.get(column, {}).values(), key=lambda v: (len(v), v))[:2]
        return labels or [f"{column} 1"]

    def refuse(self, text: str, what: str) -> None:
        """Raise ``RedactionError`` naming the column (never the value) when ``text``, the copy
        ``what`` (its figures' base64 data left aside), shows a sensitive value in clear."""
        columns = self.found(_DATA_URI.sub("data:", text))
        if columns:
            raise RedactionError(
                f"{what} is not written: it would show values of the column(s) {', '.join(columns)} in clear; "
                f"outside the run folder they appear only as labels ({', '.join(self.example(columns[0]))}, ...)"
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
