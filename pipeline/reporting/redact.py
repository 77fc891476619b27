"""What a run may show outside its folder (the MLflow store's copy of the report and parameters):
the workflow's paths as file names, the filter's kept values as a digest (they may name patients
or hospitals), and no command line (its arguments are paths and overrides). The report itself
leaves out the per-patient table, the excluded images and the Grad-CAM cases
(``html.render_report(..., redact=True)``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.privacy import plain_digest

REDACTED_REPORT_FILE = "report_redacted.html"  # the report without patients, written when tracking is on
PATH_KEYS = ("manifest", "output_dir", "model.pretrained", "tracking.mlflow")  # shown by their file name only
_ROOTS = "data.image_roots"
_OMITTED = "(left out of this copy: see {} in the run folder)"


def digest(value: Any) -> str:
    """16 hex characters of SHA-256 of ``value`` as JSON: equal values, equal digests."""
    return plain_digest(json.dumps(value, default=str))


def leaf(key: str, value: Any) -> Any:
    """One resolved workflow value (``key``: its dotted name) as it may leave the run folder."""
    if key.startswith("filter."):
        return digest(value)
    if key in PATH_KEYS or any(key.endswith(f".{k}") for k in PATH_KEYS):  # search.model.pretrained too
        if isinstance(value, list | tuple):
            return [Path(str(v)).name if v else v for v in value]
        return Path(str(value)).name if value else value
    if key == _ROOTS:
        return [Path(str(p)).name for p in value or ()]
    return value


def workflow(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A resolved workflow (``WorkflowConfig.to_dict()``) with every value through ``leaf``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out[key] = workflow(value, f"{name}.") if isinstance(value, dict) else leaf(name, value)
    return out


def config_text(text: str) -> str:
    """The run folder's ``config.yaml`` text, redacted (written as the run writes it)."""
    try:
        tree = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        tree = None
    if not isinstance(tree, dict):
        return ""
    return yaml.safe_dump(workflow(tree), sort_keys=False)


def record(environment: dict[str, Any], name: str) -> dict[str, Any]:
    """An environment (or provenance) record without the command line it was made by; ``name``:
    the record's file in the run folder."""
    return {k: (_OMITTED.format(name) if k == "command" else v) for k, v in environment.items()}
