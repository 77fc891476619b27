"""What an evaluation is asked to do, as two small values: the columns of the score table
(``ScoreColumns``) and the statistical choices (``EvaluationOptions``, with the interval settings in
``Interval``). ``cohortnet evaluate`` builds them from its flags and a study from its workflow, so
both paths hand ``evaluate_predictions`` the same objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Interval:
    """How confidence intervals are computed: method, bootstrap replicates and seed, level."""

    ci_method: str = "delong"
    n_bootstrap: int = 2000
    seed: int = 0
    level: float = 0.95


@dataclasses.dataclass(frozen=True)
class ScoreColumns:
    """The columns of a score table. ``score`` is one column (binary) or one per class (multi-class,
    in the order of ``classes``; default the sorted label values). ``group`` holds patient ids
    (figures per patient), ``compare`` a second score for a paired test, ``fold`` the fold of each
    row, ``subgroups`` the columns to stratify by."""

    label: str
    score: str | tuple[str, ...]
    positive: Any = None
    compare: str | None = None
    group: str | None = None
    subgroups: tuple[str, ...] = ()
    fold: str | None = None
    classes: tuple[Any, ...] | None = None

    @property
    def scores(self) -> list[str]:
        return [self.score] if isinstance(self.score, str) else list(self.score)

    def for_validation(self, positive: Any = None) -> ScoreColumns:
        """The columns a validation table needs: no comparison, subgroups or folds."""
        pos = self.positive if positive is None else positive
        return dataclasses.replace(self, positive=pos, compare=None, subgroups=(), fold=None)

    @classmethod
    def of(cls, label: str, score: str | Sequence[str], **kw: Any) -> ScoreColumns:
        """Build from sequences as parsed from a command line (lists become tuples)."""
        one = score if isinstance(score, str) else (score[0] if len(score) == 1 else tuple(score))
        for k in ("subgroups", "classes"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(label, one, **kw)


@dataclasses.dataclass(frozen=True)
class EvaluationOptions:
    """The choices behind metrics.json: the threshold rule (locked on validation rows when given),
    the interval settings, whether to add calibration and decision curves, how the images of a
    patient are combined, and an optional recalibration fitted on the validation rows."""

    threshold_rule: str = "youden"
    interval: Interval = Interval()
    calibration: bool = True
    aggregate: str = "mean"
    recalibration: str | None = None
