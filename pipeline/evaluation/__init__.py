"""ROC statistics for classification studies: plain NumPy/SciPy/scikit-learn, no torch, no MONAI.

Public API (pROC equivalents in brackets):

- :func:`binary_summary` -- AUC with CI, counts, metrics at a threshold [``roc`` + ``ci.auc`` + ``coords``]
- :func:`evaluate_predictions` -- everything metrics.json holds for a table of scores, given its
  :class:`ScoreColumns` and :class:`EvaluationOptions` (CI settings in :class:`Interval`)
- :func:`roc_table` -- ROC curve as a DataFrame (threshold, fpr, tpr)
- :func:`pr_table` -- precision-recall curve, average precision and prevalence
- :func:`delong_ci` -- AUC, DeLong SE and interval (logit-scale by default; ``transform="none"`` is pROC's)
- :func:`delong_paired_test`, :func:`delong_unpaired_test`, :func:`bootstrap_paired_test`,
  :func:`bootstrap_unpaired_test` -- comparing two AUCs [``roc.test``]
- :func:`choose_threshold`, :func:`threshold_metrics`, :func:`wilson_interval` -- operating points
- :func:`calibration_summary`, :func:`fit_recalibration` -- calibration and Platt/isotonic recalibration
- :func:`net_benefit` -- decision-curve analysis
- :func:`multiclass_summary` -- one-vs-rest AUCs and their macro average
- :func:`format_metrics` -- plain-text table for the terminal

Their benchmarks live in :mod:`pipeline.benchmarks.intervals`. Degenerate input (length mismatch, NaN
scores, labels other than 0/1) raises ValueError; a single class raises SingleClassError (a
ValueError), except inside subgroups and folds, which report ``auc: None`` and a warning.
"""

from pipeline.evaluation._inputs import SingleClassError
from pipeline.evaluation.calibration import calibration_summary, fit_recalibration
from pipeline.evaluation.compare import (
    bootstrap_paired_test,
    bootstrap_unpaired_test,
    delong_paired_test,
    delong_unpaired_test,
)
from pipeline.evaluation.decision import net_benefit
from pipeline.evaluation.multiclass import multiclass_summary
from pipeline.evaluation.predictions import evaluate_predictions
from pipeline.evaluation.report import format_metrics
from pipeline.evaluation.roc import delong_ci, pr_table, roc_table
from pipeline.evaluation.spec import EvaluationOptions, Interval, ScoreColumns
from pipeline.evaluation.summary import CI_METHODS, binary_summary
from pipeline.evaluation.thresholds import choose_threshold, threshold_metrics, wilson_interval

__all__ = [
    "CI_METHODS",
    "EvaluationOptions",
    "Interval",
    "ScoreColumns",
    "SingleClassError",
    "binary_summary",
    "bootstrap_paired_test",
    "bootstrap_unpaired_test",
    "calibration_summary",
    "choose_threshold",
    "delong_ci",
    "delong_paired_test",
    "delong_unpaired_test",
    "evaluate_predictions",
    "fit_recalibration",
    "format_metrics",
    "multiclass_summary",
    "net_benefit",
    "pr_table",
    "roc_table",
    "threshold_metrics",
    "wilson_interval",
]
