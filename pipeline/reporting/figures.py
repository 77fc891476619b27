"""Figures for the study report (matplotlib, headless). Each returns PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def roc_figure(
    pooled: pd.DataFrame,
    *,
    auc: float | None,
    ci: tuple[float | None, float | None] = (None, None),
    folds: Sequence[tuple[str, pd.DataFrame]] = (),
    operating_point: tuple[float, float] | None = None,
    title: str = "ROC",
) -> bytes:
    """ROC curve from a table with columns fpr, tpr; per-fold curves in grey; the locked
    operating point (1 - specificity, sensitivity) as a marker."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for name, table in folds:
        ax.plot(table["fpr"], table["tpr"], color="0.75", lw=1, label=None if name != folds[0][0] else "folds")
    label = "pooled"
    if auc is not None:
        label += f" AUC {auc:.3f}"
        if ci[0] is not None and ci[1] is not None:
            label += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    ax.plot(pooled["fpr"], pooled["tpr"], color="C0", lw=2, label=label)
    if operating_point is not None:
        ax.plot(*operating_point, "o", color="C3", label="locked threshold")
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def pr_figure(
    table: pd.DataFrame,
    *,
    average_precision: float,
    prevalence: float,
    operating_point: tuple[float, float] | None = None,
    title: str = "Precision-recall",
) -> bytes:
    """Precision against recall (a step curve), with the prevalence line (a model that guesses)
    and the locked operating point (sensitivity, PPV) as a marker."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.step(table["recall"], table["precision"], where="post", color="C0", lw=2, label=f"AP {average_precision:.3f}")
    ax.axhline(prevalence, ls="--", color="0.5", lw=1, label=f"prevalence {prevalence:.3f}")
    if operating_point is not None:
        ax.plot(*operating_point, "o", color="C3", label="locked threshold")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def calibration_figure(bins: pd.DataFrame, title: str = "Calibration") -> bytes:
    """Reliability diagram from a table with columns mean_predicted, observed_rate, n (per bin);
    with observed_ci_low/high (equal-count bins), each bin's interval as an error bar."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect")
    x, y = bins["mean_predicted"], bins["observed_rate"]
    if "observed_ci_low" in bins.columns:
        err = [y - bins["observed_ci_low"], bins["observed_ci_high"] - y]
        ax.errorbar(x, y, yerr=err, fmt="o-", color="C0", capsize=3, lw=1.2, label="model (bin, 95% CI)")
    else:
        ax.plot(x, y, "o-", color="C0", label="model")
    for xi, yi, n in zip(x, y, bins["n"], strict=False):
        ax.annotate(f"n={n}", (xi, yi), textcoords="offset points", xytext=(5, -11), fontsize=7, color="0.35")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed fraction positive")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def decision_curve_figure(curve: pd.DataFrame, title: str = "Decision curve") -> bytes:
    """Net benefit against threshold probability (columns threshold, net_benefit_model,
    net_benefit_treat_all, net_benefit_treat_none)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    ax.plot(curve["threshold"], curve["net_benefit_model"], color="C0", lw=2, label="model")
    ax.plot(curve["threshold"], curve["net_benefit_treat_all"], color="0.4", lw=1, label="treat all")
    ax.plot(curve["threshold"], curve["net_benefit_treat_none"], color="0.7", lw=1, ls="--", label="treat none")
    top = float(max(curve["net_benefit_model"].max(), curve["net_benefit_treat_all"].max(), 0.01))
    ax.set(xlim=(0, 1), ylim=(-0.05 * top, 1.1 * top), xlabel="threshold probability", ylabel="net benefit")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def training_curves_figure(histories: Sequence[tuple[str, pd.DataFrame]]) -> bytes:
    """Train/validation loss and validation AUC per epoch, one line per fold."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, (name, hist) in enumerate(histories):
        color = f"C{i % 10}"
        left.plot(hist["epoch"], hist["train_loss"], color=color, lw=1, label=f"{name} train")
        left.plot(hist["epoch"], hist["val_loss"], color=color, lw=1, ls="--")
        right.plot(hist["epoch"], hist["val_auc"], color=color, lw=1, label=name)
    left.set(xlabel="epoch", ylabel="loss (solid train, dashed val)")
    right.set(xlabel="epoch", ylabel="validation AUC", ylim=(0, 1.02))
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
    right.legend(fontsize=7, ncol=2)
    return _png(fig)


def _svg(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return buf.getvalue()


def _reasons(by_reason: dict[str, int]) -> str:
    return "".join(f"\n  {reason}: {n}" for reason, n in sorted(by_reason.items(), key=lambda kv: -kv[1]))


def _flow_boxes(flow: dict[str, Any]) -> tuple[list[str], list[str | None]]:
    """The main boxes from the top down, and the exclusion branching off between each pair."""
    mains: list[str] = []
    exclusions: list[str | None] = []
    man, scan, flt = flow.get("manifest"), flow.get("scan"), flow.get("filter")
    if man and scan:
        mains.append("Export scanned (cohortnet scan)")
        others = f"\n({scan['not_images']} files that are not images skipped)" if scan.get("not_images") else ""
        exclusions.append(f"Excluded at scan: {scan['excluded']} series or files{_reasons(scan['by_reason'])}{others}")
    if man and flt:
        mains.append(f"Manifest ({man['file']})\n{man['images']} images, {man['patients']} patients")
        exclusions.append(
            f"Excluded by the workflow filter\n({flt['rule']})\n{flt['images']} images, {flt['patients']} patients"
        )
    eli, load, inc = flow["eligible"], flow["loading"], flow["included"]
    first = f"Manifest ({man['file']})" if man and not flt else "Eligible"
    mains.append(f"{first}\n{eli['images']} images, {eli['patients']} patients")
    exclusions.append(
        f"Excluded at loading: {load['images']} images{_reasons(load['by_reason'])}\n"
        f"{load['patients']} patients left with no usable image"
    )
    mains.append(
        f"Included\n{inc['images']} images, {inc['patients']} patients\n"
        f"{inc['positives']} positive, {inc['negatives']} negative"
    )
    return mains, exclusions


def _partition_text(part: dict[str, Any]) -> str:
    text = f"{part['name']}{' test set' if 'train' in part else ''}\n{part['patients']} patients\n"
    text += f"{part['positives']} pos / {part['negatives']} neg"
    if "train" in part:
        text += f"\ntrained on {part['train']}\n(validation {part['val']})"
    return text


def flow_texts(flow: dict[str, Any]) -> list[str]:
    """Every text ``flow_figure`` draws (its boxes hold nothing else): the main boxes, the
    exclusions and the partitions. The PNG's text cannot be searched; this can."""
    mains, exclusions = _flow_boxes(flow)
    return [*mains, *(e for e in exclusions if e), *map(_partition_text, flow["partitions"])]


def flow_figure(flow: dict[str, Any]) -> tuple[bytes, bytes]:
    """STARD / CONSORT-style patient flow (the boxes of ``cohort.flow_counts``): (PNG, SVG)."""
    mains, exclusions = _flow_boxes(flow)
    parts = flow["partitions"]
    rows = 2 * len(mains) + 1  # main boxes and the exclusions between them, then the partitions
    fig, ax = plt.subplots(figsize=(max(7.5, 1.9 * len(parts)), 0.75 * rows + 0.8))
    ax.set_axis_off()
    ax.set(xlim=(0, 1), ylim=(-0.5, rows))
    box = {"boxstyle": "round,pad=0.5", "fc": "#f5f5f7", "ec": "#555"}
    side = {**box, "fc": "#fdf1e6", "ec": "#a15c00"}
    arrow = {"arrowstyle": "-|>", "color": "#555", "lw": 1, "shrinkA": 14, "shrinkB": 14}
    x_main = 0.3
    ys = [rows - 0.5 - 2 * i for i in range(len(mains))]
    for i, (text, y) in enumerate(zip(mains, ys, strict=True)):
        ax.text(x_main, y, text, ha="center", va="center", fontsize=8.5, bbox=box)
        if i + 1 < len(mains):
            ax.annotate("", (x_main, ys[i + 1]), (x_main, y), arrowprops={**arrow, "shrinkA": 16, "shrinkB": 16})
        branch = exclusions[i] if i < len(exclusions) else None
        if branch:
            ax.text(0.58, y - 1, branch, ha="left", va="center", fontsize=7.5, bbox=side)
            ax.annotate("", (0.57, y - 1), (x_main, y - 1), arrowprops={"arrowstyle": "-|>", "color": "#a15c00"})
    y_parts, y_bar = 0.4, 1.75
    xs = [(i + 0.5) / len(parts) for i in range(len(parts))]
    ax.plot([x_main, x_main], [ys[-1] - 0.6, y_bar], color="#555", lw=1)
    ax.plot([min(xs[0], x_main), max(xs[-1], x_main)], [y_bar, y_bar], color="#555", lw=1)
    for i, part in enumerate(parts):
        x = (i + 0.5) / len(parts)
        ax.text(x, y_parts, _partition_text(part), ha="center", va="center", fontsize=7.5, bbox=box)
        ax.annotate("", (x, y_parts + 0.75), (x, y_bar), arrowprops={**arrow, "shrinkA": 0, "shrinkB": 0})
    svg = _svg(fig)
    return _png(fig), svg
