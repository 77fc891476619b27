"""ResNet factory: every depth, 2D and 3D, any input channels, stem options, safe pretrained loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import ARCHS, ModelConfig
from pipeline.errors import CohortnetError
from pipeline.models import build_model, count_parameters


@pytest.mark.parametrize("arch", ARCHS)
def test_every_depth_builds_in_2d(arch: str) -> None:
    model = build_model(ModelConfig(arch=arch, spatial_dims=2, in_channels=3, stem_stride=2)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 36))
    assert out.shape == (2, 1)


@pytest.mark.parametrize(("dims", "shape"), [(2, (2, 1, 17, 23)), (3, (2, 1, 9, 12, 14))])
def test_odd_shapes_and_stem_options(dims: int, shape: tuple[int, ...]) -> None:
    for stride, pool in [(1, True), (2, False)]:
        cfg = ModelConfig(arch="resnet10", spatial_dims=dims, stem_stride=stride, stem_max_pool=pool)  # type: ignore[arg-type]
        with torch.no_grad():
            assert build_model(cfg).eval()(torch.randn(*shape)).shape == (2, 1)


def test_stride_two_stem_is_cheaper_than_monai_default() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    flops = []
    for stride in (1, 2):
        model = build_model(ModelConfig(arch="resnet10", spatial_dims=3, stem_stride=stride)).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.randn(1, 1, 32, 32, 32))
        flops.append(counter.get_total_flops())
    assert flops[0] / flops[1] > 5  # about 8x in 3D


def test_dropout_head_and_parameter_count() -> None:
    plain = build_model(ModelConfig(arch="resnet18", spatial_dims=3))
    dropped = build_model(ModelConfig(arch="resnet18", spatial_dims=3, dropout=0.3))
    assert isinstance(dropped.fc, torch.nn.Sequential)
    assert count_parameters(plain) == count_parameters(dropped)
    assert 30e6 < count_parameters(plain) < 36e6  # MONAI/MedicalNet 3D ResNet-18: 33.2M


def test_pretrained_weights_load_safely_and_skip_the_head(tmp_path: Path) -> None:
    donor = build_model(ModelConfig(arch="resnet10", spatial_dims=3))
    state = {f"module.{k}": v for k, v in donor.state_dict().items()}
    state["fc.weight"] = torch.zeros(7, 512)  # a different head, as in MedicalNet checkpoints
    path = tmp_path / "w.pt"
    torch.save({"state_dict": state}, path)
    model = build_model(ModelConfig(arch="resnet10", spatial_dims=3, pretrained=str(path)))
    assert torch.equal(model.conv1.weight, donor.conv1.weight)
    assert model.fc.weight.shape == (1, 512)  # the mismatched head was skipped, not forced in
    assert torch.equal(model.fc.bias, donor.fc.bias)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(CohortnetError, match="cannot load weights"):
        build_model(ModelConfig(arch="resnet10", spatial_dims=3, pretrained=str(path)))
