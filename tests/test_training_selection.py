"""How a fold is trained, unit by unit (pipeline/training.py): which epoch is kept, when early
stopping stops, how an imbalanced training set is balanced and what the learning rate is each epoch.

The model is a linear layer over a 2x2 image and the validation step is scripted (monkeypatched
``validation_metrics``), so the chosen AUC / loss sequences decide the outcome; each test runs in
well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from torch import nn
from torch.utils.data import WeightedRandomSampler

from pipeline import training
from pipeline.config import TrainConfig
from pipeline.precision import Precision
from pipeline.schema import CHECKPOINT_FILE, TARGET
from pipeline.training import FoldSpec, make_loader, make_loss, train_fold, warmup_cosine

CPU = torch.device("cpu")


def toy_items(labels: Sequence[int], seed: int = 0) -> list[dict[str, Any]]:
    """Prepared samples as the cache hands them out: a (1, 2, 2) image tensor and the target."""
    gen = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(1, 2, 2, generator=gen), TARGET: float(y)} for y in labels]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 1))


def spec_for(tmp_path: Path, stop_after: int | None = None, **train: Any) -> FoldSpec:
    cfg = TrainConfig(**{"epochs": 6, "batch_size": 4, "lr": 0.01, "class_balance": "none", **train})
    return FoldSpec(
        cfg,
        Compose([]),  # no augmentation
        CPU,
        tmp_path / "model.pt",
        seed=0,
        precision=Precision(False),
        spatial_dims=2,
        stop_after=stop_after,
    )


class ScriptedValidation:
    """Stands in for ``training.validation_metrics``: epoch k's (loss, AUC) is ``script[k - 1]``;
    keeps a copy of the weights it was shown, so a test can say which epoch's weights were kept."""

    def __init__(self, script: Sequence[tuple[float, float | None]]) -> None:
        self.script = list(script)
        self.weights: list[dict[str, torch.Tensor]] = []

    def __call__(self, model: nn.Module, items: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return self.script[len(self.weights) - 1]


def run_fold(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: Sequence[tuple[float, float | None]],
    **train: Any,
) -> tuple[training.FoldResult, ScriptedValidation, nn.Module]:
    scripted = ScriptedValidation(script)
    monkeypatch.setattr(training, "validation_metrics", scripted)
    model = tiny_model()
    result = train_fold(model, toy_items([0, 1] * 4), toy_items([0, 1], seed=1), spec_for(tmp_path, **train))
    return result, scripted, model


def assert_kept_epoch(model: nn.Module, scripted: ScriptedValidation, epoch: int, tmp_path: Path) -> None:
    """``model`` and model.pt hold the weights that epoch ``epoch`` was validated with."""
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    for key, value in scripted.weights[epoch - 1].items():
        assert torch.equal(model.state_dict()[key], value)
        assert torch.equal(saved[key], value)
    # the epochs differ (a test that kept the wrong one would notice)
    assert len({tuple(w["1.weight"].flatten().tolist()) for w in scripted.weights}) == len(scripted.weights)


# --------------------------------------------------------------------------- the best epoch


def test_select_auc_keeps_the_highest_validation_auc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = [(0.70, 0.60), (0.65, 0.80), (0.40, 0.75), (0.60, 0.70), (0.30, 0.55), (0.69, 0.50)]
    result, scripted, model = run_fold(tmp_path, monkeypatch, script, select="auc")
    assert result.best_epoch == 2  # not epoch 5, the lowest loss
    assert result.best_val_auc == pytest.approx(0.80)
    assert result.history["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert result.history["val_auc"].tolist() == pytest.approx([a for _, a in script])
    assert result.history["val_loss"].tolist() == pytest.approx([loss for loss, _ in script])
    assert_kept_epoch(model, scripted, 2, tmp_path)


def test_select_loss_keeps_the_lowest_validation_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = [(0.70, 0.60), (0.65, 0.80), (0.40, 0.75), (0.60, 0.70), (0.30, 0.55), (0.69, 0.50)]
    result, scripted, model = run_fold(tmp_path, monkeypatch, script, select="loss")
    assert result.best_epoch == 5  # not epoch 2, the highest AUC
    assert result.best_val_auc == pytest.approx(0.55)
    assert_kept_epoch(model, scripted, 5, tmp_path)


def test_an_auc_tie_goes_to_the_lower_loss_and_a_full_tie_to_the_earlier_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # epochs 2, 4 and 5 share the best AUC; 4 and 5 also share the lowest loss among them
    script = [(0.50, 0.70), (0.60, 0.90), (0.20, 0.85), (0.40, 0.90), (0.40, 0.90), (0.45, 0.90)]
    result, scripted, model = run_fold(tmp_path, monkeypatch, script, select="auc")
    assert result.best_epoch == 4  # the lower loss breaks the AUC tie; a later equal epoch does not replace it
    assert_kept_epoch(model, scripted, 4, tmp_path)


def test_a_loss_tie_goes_to_the_higher_auc_and_a_full_tie_to_the_earlier_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = [(0.50, 0.70), (0.30, 0.60), (0.45, 0.99), (0.30, 0.75), (0.30, 0.75), (0.30, 0.70)]
    result, scripted, model = run_fold(tmp_path, monkeypatch, script, select="loss")
    assert result.best_epoch == 4
    assert_kept_epoch(model, scripted, 4, tmp_path)


def test_a_single_class_validation_set_counts_as_auc_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no AUC (None) ranks below any AUC; among AUC-less epochs the loss decides
    script = [(0.50, None), (0.40, None), (0.60, 0.10), (0.30, None)]
    result, _, _ = run_fold(tmp_path, monkeypatch, script, select="auc", epochs=4)
    assert result.best_epoch == 3
    script = [(0.50, None), (0.40, None), (0.45, None), (0.41, None)]
    (tmp_path / "b").mkdir()
    result, _, _ = run_fold(tmp_path / "b", monkeypatch, script, select="auc", epochs=4)
    assert result.best_epoch == 2
    assert result.best_val_auc is None


def test_without_validation_patients_the_last_epoch_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = ScriptedValidation([])
    monkeypatch.setattr(training, "validation_metrics", scripted)
    result = train_fold(tiny_model(), toy_items([0, 1] * 4), [], spec_for(tmp_path, epochs=3, patience=1))
    assert result.best_epoch == 3  # a refit: nothing to choose on, and nothing stops it early
    assert scripted.weights == []
    assert result.history["val_loss"].isna().all()


# --------------------------------------------------------------------------- early stopping


def test_patience_stops_after_that_many_epochs_without_improvement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # best at epoch 2, then epochs 3 and 4 are no better (4 equals it: not an improvement) -> stop
    script = [(0.5, 0.60), (0.5, 0.80), (0.5, 0.70), (0.5, 0.80), (0.5, 0.99), (0.5, 0.99)]
    result, scripted, model = run_fold(tmp_path, monkeypatch, script, patience=2, epochs=6)
    assert result.history["epoch"].tolist() == [1, 2, 3, 4]
    assert len(scripted.weights) == 4  # epoch 5 was never trained nor validated
    assert result.best_epoch == 2
    assert_kept_epoch(model, scripted, 2, tmp_path)
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["stale"] == 2


def test_an_improvement_resets_the_patience_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = [(0.5, 0.60), (0.5, 0.50), (0.5, 0.70), (0.5, 0.65), (0.5, 0.66), (0.5, 0.99)]
    result, _, _ = run_fold(tmp_path, monkeypatch, script, patience=2, epochs=6)
    assert result.history["epoch"].tolist() == [1, 2, 3, 4, 5]  # stale 1 after epoch 2, 0 after 3, 2 after 5
    assert result.best_epoch == 3


def test_patience_zero_never_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = [(0.5, 0.90), (0.5, 0.10), (0.5, 0.10), (0.5, 0.10), (0.5, 0.10), (0.5, 0.10)]
    result, _, _ = run_fold(tmp_path, monkeypatch, script, patience=0, epochs=6)
    assert len(result.history) == 6
    assert result.best_epoch == 1


def test_a_fixed_number_of_epochs_ignores_patience(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = [(0.5, 0.90), (0.5, 0.10), (0.5, 0.10), (0.5, 0.10), (0.5, 0.10), (0.5, 0.10)]
    result, _, _ = run_fold(tmp_path, monkeypatch, script, patience=1, epochs=6, stop_after=4)
    assert result.history["epoch"].tolist() == [1, 2, 3, 4]  # nested CV's refit trains exactly stop_after


def test_the_patience_count_survives_a_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = [(0.5, 0.90), (0.5, 0.10), (0.5, 0.20), (0.5, 0.30), (0.5, 0.99)]

    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crash_in_epoch_3(model: nn.Module, items: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash
        return script[calls["n"] - 1]

    monkeypatch.setattr(training, "validation_metrics", crash_in_epoch_3)
    spec = spec_for(tmp_path, patience=2, epochs=5)
    with pytest.raises(Crash):
        train_fold(tiny_model(), toy_items([0, 1] * 4), toy_items([0, 1], seed=1), spec)
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["stale"] == 1
    rest = ScriptedValidation(script[2:])
    monkeypatch.setattr(training, "validation_metrics", rest)
    result = train_fold(tiny_model(), toy_items([0, 1] * 4), toy_items([0, 1], seed=1), spec)
    assert len(rest.weights) == 1  # epoch 3 only: stale 1 + 1 = patience
    assert result.history["epoch"].tolist() == [1, 2, 3]
    assert result.best_epoch == 1


# --------------------------------------------------------------------------- class balance


IMBALANCED = [1, 0, 0, 0, 0, 0, 0, 0, 1, 0]  # 2 positives, 8 negatives


def test_weighted_loss_weighs_positives_by_the_class_ratio() -> None:
    y = np.array(IMBALANCED, dtype=np.float32)
    cfg = TrainConfig(class_balance="weighted_loss")
    loss = make_loss(cfg, y, CPU)
    assert isinstance(loss, nn.BCEWithLogitsLoss)
    assert loss.pos_weight is not None
    assert loss.pos_weight.tolist() == [4.0]  # 8 negatives / 2 positives
    # at logit 0 every sample costs ln 2, a positive 4 times as much: (2 * 4 + 8) / 10 ln 2
    value = loss(torch.zeros(len(y)), torch.from_numpy(y))
    assert float(value) == pytest.approx(1.6 * math.log(2))


@pytest.mark.parametrize("balance", ["none", "sampler"])
def test_no_loss_weight_unless_asked(balance: str) -> None:
    y = np.array(IMBALANCED, dtype=np.float32)
    loss = make_loss(TrainConfig(class_balance=balance), y, CPU)
    assert getattr(loss, "pos_weight", None) is None
    assert float(loss(torch.zeros(len(y)), torch.from_numpy(y))) == pytest.approx(math.log(2))


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [1, 1, 1]])
def test_a_single_class_training_set_is_not_weighted(labels: list[int]) -> None:
    y = np.array(labels, dtype=np.float32)
    for balance in ("weighted_loss", "sampler"):
        assert getattr(make_loss(TrainConfig(class_balance=balance), y, CPU), "pos_weight", None) is None
    loader = make_loader(toy_items(labels), TrainConfig(class_balance="sampler"), None, torch.Generator())
    assert not isinstance(loader.sampler, WeightedRandomSampler)  # no division by a missing class


def test_the_sampler_draws_both_classes_equally_often() -> None:
    items = toy_items(IMBALANCED)
    generator = torch.Generator().manual_seed(0)
    loader = make_loader(items, TrainConfig(class_balance="sampler", batch_size=4), None, generator)
    sampler = loader.sampler
    assert isinstance(sampler, WeightedRandomSampler)
    assert sampler.replacement
    assert sampler.num_samples == len(items)  # an epoch is as long as the training set
    weights = sampler.weights.numpy()
    y = np.array(IMBALANCED)
    assert weights[y == 1] == pytest.approx([0.25, 0.25])  # half the mass to each class
    assert weights[y == 0] == pytest.approx([0.0625] * 8)
    drawn = np.array([IMBALANCED[i] for _ in range(400) for i in sampler])
    assert drawn.mean() == pytest.approx(0.5, abs=0.03)  # 4000 draws; an unweighted sampler gives 0.2


def test_without_the_sampler_an_epoch_is_a_shuffle_of_the_set() -> None:
    items = toy_items(IMBALANCED)
    generator = torch.Generator().manual_seed(0)
    loader = make_loader(items, TrainConfig(class_balance="weighted_loss", batch_size=4), None, generator)
    assert not isinstance(loader.sampler, WeightedRandomSampler)
    seen = sorted(float(t) for batch in loader for t in batch[TARGET])
    assert seen == sorted(float(v) for v in IMBALANCED)  # each sample once (10 % 4 = 2: nothing dropped)


# --------------------------------------------------------------------------- learning-rate schedule


def test_warmup_cosine_per_step() -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(9):
        lrs.append(optimizer.param_groups[0]["lr"])  # the lr of the next step
        optimizer.step()
        scheduler.step()
    half = 0.5 * (1 + math.cos(math.pi / 4))
    # warm-up: the first step already has lr/2 (not 0); cosine over the 4 steps after; then zero
    expected = [1.0, 2.0, 2.0, 2.0 * half, 1.0, 2.0 * (1 - half), 0.0, 0.0, 0.0]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_the_schedule_of_a_fold_per_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 training samples in batches of 4: 2 steps an epoch; 2 warm-up epochs (4 steps) of 4 epochs (8)
    script = [(0.5, 0.5)] * 4
    result, _, _ = run_fold(tmp_path, monkeypatch, script, epochs=4, warmup_epochs=2, lr=0.01)
    # the history's lr is the optimizer's after the epoch's last step: the next step's lr
    assert result.history["lr"].tolist() == pytest.approx([0.0075, 0.01, 0.005, 0.0], abs=1e-12)


def test_the_first_step_of_a_fold_uses_a_warm_up_fraction_of_the_lr(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, epochs=4, warmup_epochs=2, lr=0.01)
    trainer = training.make_trainer(tiny_model(), toy_items([0, 1] * 4), spec)
    assert len(trainer.loader) == 2
    optimizer, scheduler = trainer.step.optimizer, trainer.step.scheduler
    assert scheduler is not None
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(
        [
            0.0025,
            0.005,
            0.0075,
            0.01,
            0.01,
            0.01 * (0.5 + 0.5 * math.cos(math.pi / 4)),
            0.005,
            0.01 * (0.5 - 0.5 * math.cos(math.pi / 4)),
        ],
        abs=1e-12,
    )


def test_no_warm_up_starts_at_the_full_lr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, _, _ = run_fold(tmp_path, monkeypatch, [(0.5, 0.5)] * 2, epochs=2, warmup_epochs=0, lr=0.01)
    assert result.history["lr"].tolist() == pytest.approx([0.005, 0.0], abs=1e-12)  # cosine over 4 steps
