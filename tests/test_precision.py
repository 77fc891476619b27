"""bf16 autocast checked layer by layer: a layer whose bf16 kernel is wrong is found and kept in
fp32, on every machine (a broken kernel is emulated where the CPU's own are correct)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import precision as precision_module
from pipeline.config import ModelConfig
from pipeline.models import build_model
from pipeline.precision import (
    Precision,
    _Fp32Forward,
    bf16_error,
    classifier_head,
    keep_in_fp32,
    resolve_precision,
    unsafe_bf16_layers,
)

CPU = torch.device("cpu")


class _NanGradient(torch.autograd.Function):
    """Identity forward; the backward returns NaN: what oneDNN's bf16 weight gradient does at
    some shapes on CPUs with native bf16."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
        return w.view_as(w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("nan"))


class BrokenBf16Conv3d(nn.Conv3d):
    """A Conv3d whose weight gradient is NaN under bf16 autocast and exact in fp32."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if torch.is_autocast_enabled(input.device.type):
            weight = _NanGradient.apply(weight)
        return F.conv3d(input, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def tiny_net(broken: bool) -> nn.Module:
    conv = BrokenBf16Conv3d if broken else nn.Conv3d
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.ReLU(),
        conv(4, 4, 3, padding=1),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(4, 1),
    )


def test_a_broken_bf16_layer_is_found_and_kept_in_fp32() -> None:
    torch.manual_seed(0)
    model = tiny_net(broken=True)
    assert set(unsafe_bf16_layers(model, (1, 6, 7, 8), 4, CPU)) == {"2"}
    keys = list(model.state_dict())
    precision = resolve_precision(model, "bf16", CPU, (1, 6, 7, 8), batch_size=4)
    assert precision == Precision(True, ("2", "5"), precision.reason)  # the broken layer, and the head
    assert "kept in fp32 (2, 5)" in precision.describe()
    assert "classifier head 5" in precision.reason
    assert list(model.state_dict()) == keys  # checkpoints stay loadable
    assert isinstance(model[2], BrokenBf16Conv3d)
    # trained under bf16 autocast, the kept layer gets a finite gradient and an fp32 output
    x = torch.randn(4, 1, 6, 7, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        first = model[0](x)
        kept = model[2](model[1](first))
    assert first.dtype == torch.bfloat16  # the other layers keep bf16
    assert kept.dtype == torch.float32
    assert out.dtype == torch.float32  # the head's logits are not rounded to bf16
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_check_does_not_touch_the_training_random_stream() -> None:
    model = tiny_net(broken=True)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    resolve_precision(model, "bf16", CPU, (1, 6, 7, 8), batch_size=2)
    assert torch.equal(torch.get_rng_state(), state)


def test_correct_layers_pass_and_off_skips_the_check() -> None:
    model = tiny_net(broken=False)
    assert bf16_error(nn.Conv3d(4, 4, 3, padding=1), (4, 6, 7, 8), 4, CPU) < 0.05
    assert resolve_precision(model, "off", CPU, (1, 6, 7, 8), 4) == Precision(False, reason="train.amp is off")


def test_auto_on_a_cpu_with_native_bf16_checks_every_layer_and_keeps_the_failing_ones_in_fp32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``amp: auto`` on a CPU with native bf16 (pretended here, so this runs on every CPU)."""
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    checked: list[tuple[int, ...]] = []
    real_check = precision_module.unsafe_bf16_layers

    def spy(model: nn.Module, input_shape: tuple[int, ...], *args: Any, **kwargs: Any) -> dict[str, str]:
        checked.append(input_shape)
        return real_check(model, input_shape, *args, **kwargs)

    monkeypatch.setattr(precision_module, "unsafe_bf16_layers", spy)
    torch.manual_seed(0)
    model = tiny_net(broken=True)
    auto = resolve_precision(model, "auto", CPU, (1, 6, 7, 8), 4)
    assert checked == [(1, 6, 7, 8)]  # the per-layer check ran, at the training shape
    assert auto == Precision(True, ("2", "5"), auto.reason)  # the broken layer and the head
    assert "bf16 kernels are wrong or not trusted" in auto.reason
    assert "classifier head 5" in auto.reason
    assert isinstance(model[2], _Fp32Forward)
    assert isinstance(model[5], _Fp32Forward)
    assert not isinstance(model[0], _Fp32Forward)  # a correct layer keeps bf16
    # a correct model keeps bf16 everywhere but its head
    correct = tiny_net(broken=False)
    assert resolve_precision(correct, "auto", CPU, (1, 6, 7, 8), 4) == Precision(
        True, ("5",), "the classifier head 5 keeps the scores' fp32 resolution"
    )


def test_auto_on_a_cpu_without_native_bf16_is_fp32_without_a_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)

    def no_check(*args: Any, **kwargs: Any) -> dict[str, str]:
        raise AssertionError("the bf16 check ran although bf16 is off")

    monkeypatch.setattr(precision_module, "unsafe_bf16_layers", no_check)
    model = tiny_net(broken=True)
    auto = resolve_precision(model, "auto", CPU, (1, 6, 7, 8), 4)
    assert auto == Precision(False, (), "no native bf16 on this cpu")
    assert auto.describe() == "fp32: no native bf16 on this cpu"
    assert not any(isinstance(m, _Fp32Forward) for m in model.modules())
    # an explicit bf16 is honoured on such a CPU too (the check then runs: here it would raise)
    with pytest.raises(AssertionError, match="the bf16 check ran"):
        resolve_precision(model, "bf16", CPU, (1, 6, 7, 8), 4)


def test_every_layer_broken_means_fp32() -> None:
    model = nn.Sequential(BrokenBf16Conv3d(1, 2, 3, padding=1), nn.Flatten())
    precision = resolve_precision(model, "bf16", CPU, (1, 4, 5, 6), 2)
    assert not precision.bf16
    assert "no layer" in precision.reason


def test_the_cpu_flags_the_depth_two_convolution_of_the_demo_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oneDNN defect behind the demo's NaNs: 3x3x3 weight gradient over a 2x2x1 map. A kernel
    larger than its input map is kept in fp32 on every CPU, native bf16 or not, without the check
    (stubbed here to pass every layer it is asked about: the rule must not rely on it)."""
    asked: list[int] = []

    def every_layer_passes(layer: nn.Module, *args: Any, **kwargs: Any) -> float:
        asked.append(id(layer))
        return 0.0

    monkeypatch.setattr(precision_module, "bf16_error", every_layer_passes)
    monkeypatch.setattr(precision_module, "_CHECKED", {})  # the stub's verdicts stay out of the process cache
    cfg = ModelConfig(arch="resnet10", spatial_dims=3, stem_stride=2, norm="instance", widen_factor=0.5)
    model = build_model(cfg)
    bad = unsafe_bf16_layers(model, (1, 48, 48, 32), 8, CPU)
    # 48x48x32 through the stride-2 stem and stages: layer3.0.conv2 sees 3x3x2, layer4.0.conv1 3x3x2,
    # layer4.0.conv2 2x2x1 (a 3x3x3 kernel is larger in depth); every other map is at least 3 deep
    kernel_rule = "has a kernel larger than its input map"
    assert bad == {"layer3.0.conv2": kernel_rule, "layer4.0.conv1": kernel_rule, "layer4.0.conv2": kernel_rule}
    modules = dict(model.named_modules())
    assert not {id(modules[name]) for name in bad} & set(asked)  # flagged without the check
    assert asked  # the other layers were checked


def test_keep_in_fp32_twice_is_harmless() -> None:
    model = tiny_net(broken=False)
    keep_in_fp32(model, ["2"])
    cls = type(model[2])
    keep_in_fp32(model, ["2"])
    assert type(model[2]) is cls


def test_the_resnets_classifier_head_computes_in_fp32_so_scores_are_not_rounded() -> None:
    cfg = ModelConfig(arch="resnet10", spatial_dims=2, stem_stride=1, norm="batch", widen_factor=0.25)
    torch.manual_seed(0)
    assert classifier_head(build_model(dataclasses.replace(cfg, dropout=0.2))) == "fc.1"  # behind its dropout
    model = build_model(cfg).eval()
    assert classifier_head(model) == "fc"
    precision = resolve_precision(model, "bf16", CPU, (1, 12, 12), batch_size=4)
    assert "fc" in precision.fp32_layers
    x = torch.randn(64, 1, 12, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.float32
    assert logits.unique().numel() == 64  # bf16 logits would tie (8 bits of mantissa)
