"""Figures for the study report (matplotlib, headless). Each returns PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

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
    """Reliability diagram from a table with columns mean_predicted, observed_rate, n (per bin)."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect")
    ax.plot(bins["mean_predicted"], bins["observed_rate"], "o-", color="C0", label="model")
    for x, y, n in zip(bins["mean_predicted"], bins["observed_rate"], bins["n"], strict=False):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="0.4")
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
