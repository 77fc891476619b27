"""Plain-text rendering of a metrics dict for the terminal (``format_metrics``)."""

from __future__ import annotations

from typing import Any

_THRESHOLD_ROWS = (
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("f1", "F1"),
)


def _num(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _with_ci(d: dict[str, Any], key: str) -> str:
    low, high = d.get(f"{key}_ci_low"), d.get(f"{key}_ci_high")
    ci = f"({_num(low)} to {_num(high)})" if low is not None and high is not None else ""
    return f"{_num(d.get(key)):>7} {ci}"


def _header(m: dict[str, Any]) -> list[str]:
    level = round(100 * float(m.get("ci_level", 0.95)))
    unit = m.get("unit", "row")
    counts = f"n = {m.get('n')}" + (f", {m['n_positive']} positive" if m.get("n_positive") is not None else "")
    if m.get("n_patients") is not None:
        counts += f" (patients; {m.get('n_images')} images, scores combined by {m.get('aggregate')})"
    return [
        f"Task: {m.get('task', 'binary')}   unit: {unit}   {counts}",
        f"AUC {_with_ci(m, 'auc')}   {level}% CI, {m.get('ci_method')}",
    ]


def _threshold_block(m: dict[str, Any]) -> list[str]:
    if m.get("threshold") is None:
        return []
    lines = [
        "",
        f"Operating point: threshold {m['threshold']:.6g} ({m.get('threshold_rule')}, "
        f"chosen on: {m.get('threshold_source')})",
        f"  TP {m['tp']}  FP {m['fp']}  TN {m['tn']}  FN {m['fn']}",
    ]
    lines += [f"  {label:<18} {_with_ci(m, key)}" for key, label in _THRESHOLD_ROWS]
    return lines


def _sections(m: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if m.get("image_level"):  # None when every patient has one image
        lines += [
            "",
            f"Image level: AUC {_with_ci(m['image_level'], 'auc')}  {m['image_level']['ci_method']}",
        ]
    if "comparison" in m:
        c = m["comparison"]
        lines += [
            "",
            f"Comparison {c['score_col']} - {c['compare_col']} ({c['method']}): "
            f"AUC {_num(c['auc1'])} vs {_num(c['auc2'])}, difference {_num(c['auc_difference'])} "
            f"({_num(c['ci_low'])} to {_num(c['ci_high'])}), "
            f"Z = {_num(c['z'], 3)}, p = {_num(c['p_value'], 4)}",
        ]
    cal = m.get("calibration", {})
    if cal and "skipped" not in cal:
        lines += [
            "",
            f"Calibration: Brier {_num(cal['brier'])}, intercept {_num(cal['calibration_intercept'])}, "
            f"slope {_with_ci(cal, 'calibration_slope').strip()}, ECE {_num(cal['ece'])}",
        ]
    elif cal:
        lines += ["", f"Calibration: skipped ({cal['skipped']})"]
    return lines


def _groups_block(m: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for col, sub in m.get("subgroups", {}).items():
        lines += ["", f"Subgroups by {col}" + (f" ({sub['derived']})" if sub.get("derived") else "") + ":"]
        for g in sub["groups"]:
            lines.append(f"  {g['value']!s:<20} n={g['n']:<6} pos={g['n_positive']:<5} AUC {_with_ci(g, 'auc')}")
        het = sub.get("heterogeneity")
        if het:
            lines.append(f"  heterogeneity: Q = {_num(het['q'])} (df {het['df']}), p = {_num(het['p_value'], 4)}")
    folds = m.get("folds")
    if folds:
        lines += [
            "",
            f"Folds ({folds['n_folds']}): AUC mean {_num(folds.get('auc_mean'))}, SD {_num(folds.get('auc_sd'))}",
        ]
        for f in folds["per_fold"]:
            lines.append(f"  fold {f['fold']!s:<8} n={f['n']:<6} AUC {_with_ci(f, 'auc')}")
        own = folds.get("own_thresholds")
        if own and "skipped" in own:
            lines.append(f"  each fold's own threshold: not computed ({own['skipped']})")
        elif own:
            cuts = ", ".join(_num(f["threshold"]) for f in own["per_fold"])
            lines.append(
                f"  each fold's own threshold ({cuts}): accuracy {_with_ci(own, 'accuracy').strip()}, "
                f"sensitivity {_num(own['sensitivity'])}, specificity {_num(own['specificity'])}"
            )
    return lines


def _multiclass_block(m: dict[str, Any]) -> list[str]:
    mc = m.get("multiclass")
    if not mc:
        return []
    lines = ["", "One-vs-rest AUC per class:"]
    lines += [f"  {r['class']!s:<20} n={r['n']:<6} AUC {_with_ci(r, 'auc')}" for r in mc["per_class"]]
    return lines


def format_metrics(metrics: dict[str, Any]) -> str:
    """Readable plain-text table of a metrics dict (from ``evaluate_predictions`` or ``binary_summary``)."""
    lines = _header(metrics) + _multiclass_block(metrics) + _threshold_block(metrics)
    lines += _sections(metrics) + _groups_block(metrics)
    if metrics.get("warnings"):
        lines += ["", "Warnings:"] + [f"  - {w}" for w in metrics["warnings"]]
    return "\n".join(lines) + "\n"
