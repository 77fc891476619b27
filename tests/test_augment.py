"""Batched training augmentation: the same transforms as MONAI's chain, drawn per sample."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from monai.transforms import Affine, Compose
from monai.transforms.utils import create_rotate, create_scale

from pipeline.augment import BatchAugment, affine_theta, make_augmentation
from pipeline.config import AugmentConfig, DataConfig

NONE = AugmentConfig(flip=False, rotate90=False, affine=False, intensity=False, noise=False)


def smooth_volume(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, *shape, generator=g)
    pool = F.avg_pool3d if len(shape) == 3 else F.avg_pool2d
    return pool(x, 3, 1, 1)


@pytest.mark.parametrize(
    ("angles", "scales"),
    [((0.2, -0.1, 0.15), (1.05, 0.95, 1.1)), ((0.0, 0.0, 0.25), (1.0, 1.0, 1.0)), ((0.0, 0.0, 0.0), (1.1, 1.0, 0.9))],
)
def test_affine_matches_monai_affine_on_a_non_cubic_grid(angles: tuple[float, ...], scales: tuple[float, ...]) -> None:
    x = smooth_volume(7, 8, 9)
    expected = Affine(rotate_params=angles, scale_params=scales, padding_mode="border", image_only=True)(x[0])
    m = torch.as_tensor(create_rotate(3, angles))[:3, :3] @ torch.as_tensor(create_scale(3, scales))[:3, :3]
    theta = affine_theta(m[None], (7, 8, 9)).float()
    grid = F.affine_grid(theta, [1, 1, 7, 8, 9], align_corners=False)
    ours = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(ours[0], torch.as_tensor(expected), atol=1e-5)


def test_affine_matches_monai_in_2d() -> None:
    x = smooth_volume(9, 12)
    expected = Affine(rotate_params=0.2, scale_params=(0.9, 1.1), padding_mode="border", image_only=True)(x[0])
    m = torch.as_tensor(create_rotate(2, 0.2))[:2, :2] @ torch.as_tensor(create_scale(2, (0.9, 1.1)))[:2, :2]
    grid = F.affine_grid(affine_theta(m[None], (9, 12)).float(), [1, 1, 9, 12], align_corners=False)
    ours = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(ours[0], torch.as_tensor(expected), atol=1e-5)


def test_flips_are_drawn_per_sample_and_cover_every_combination() -> None:
    x = smooth_volume(7, 8, 9).repeat(64, 1, 1, 1, 1)
    out = BatchAugment(AugmentConfig(flip=True, intensity=False), spatial_dims=3, seed=1)(x)
    variants = {
        axes: x[0].flip([a + 1 for a in axes]) for r in range(4) for axes in itertools.combinations(range(3), r)
    }
    seen = set()
    for sample in out:
        matches = [axes for axes, v in variants.items() if torch.equal(sample, v)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(variants)


def test_intensity_is_a_bounded_scale_and_shift_per_sample() -> None:
    x = smooth_volume(7, 8, 9).repeat(32, 1, 1, 1, 1) + 0.5
    out = BatchAugment(AugmentConfig(flip=False, intensity=True), spatial_dims=3, seed=2)(x)
    unchanged = 0
    for sample in out:
        # sample = a * x + b exactly: recover a and b from two voxels, check the rest
        flat_x, flat_s = x[0].flatten().double(), sample.flatten().double()
        a = (flat_s[1] - flat_s[0]) / (flat_x[1] - flat_x[0])
        b = flat_s[0] - a * flat_x[0]
        assert torch.allclose(flat_s, a * flat_x + b, atol=1e-5)
        assert 0.9 - 1e-6 <= a <= 1.1 + 1e-6
        assert -0.1 - 1e-6 <= b <= 0.1 + 1e-6
        unchanged += bool(torch.equal(sample, x[0]))
    assert 0 < unchanged < 32  # each part applies with probability 0.5


def test_affine_changes_some_samples_and_keeps_shape_dtype_and_range() -> None:
    x = smooth_volume(7, 8, 9).repeat(16, 1, 1, 1, 1)
    out = BatchAugment(AugmentConfig(flip=False, affine=True, intensity=False), spatial_dims=3, seed=3)(x)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    changed = [not torch.equal(s, x[0]) for s in out]
    assert 0 < sum(changed) < 16
    # bilinear interpolation with border padding never leaves the input's range
    assert out.min() >= x.min() - 1e-6
    assert out.max() <= x.max() + 1e-6


def test_noise_has_the_configured_spread() -> None:
    x = torch.zeros(200, 1, 8, 8, 8)
    out = BatchAugment(replace(NONE, noise=True), spatial_dims=3, seed=4)(x)
    stds = out.flatten(1).std(dim=1)
    assert (stds == 0).float().mean().item() == pytest.approx(0.7, abs=0.12)  # noise with probability 0.3
    assert stds.max() <= 0.05 * 1.2


def test_rotate90_turns_in_the_first_two_axes() -> None:
    x = smooth_volume(8, 8, 5).repeat(32, 1, 1, 1, 1)
    out = BatchAugment(replace(NONE, rotate90=True), spatial_dims=3, seed=5)(x)
    turns = [next(k for k in range(4) if torch.equal(s, torch.rot90(x[0], k, dims=(1, 2)))) for s in out]
    assert set(turns) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="equal sizes"):
        BatchAugment(replace(NONE, rotate90=True), spatial_dims=3, seed=5)(smooth_volume(7, 8, 9).repeat(8, 1, 1, 1, 1))


def test_seeded_draws_repeat_and_differ_between_seeds() -> None:
    cfg = AugmentConfig(flip=True, affine=True, intensity=True, noise=True)
    x = smooth_volume(7, 8, 9).repeat(8, 1, 1, 1, 1)
    aug = BatchAugment(cfg, spatial_dims=3)
    first = aug.set_random_state(7)(x)
    assert torch.equal(aug.set_random_state(7)(x), first)
    assert not torch.equal(aug.set_random_state(8)(x), first)


def test_2d_batches_and_disabled_augmentation() -> None:
    x = smooth_volume(9, 12).repeat(8, 3, 1, 1)
    out = BatchAugment(AugmentConfig(flip=True, affine=True, noise=True), spatial_dims=2, seed=0)(x)
    assert out.shape == (8, 3, 9, 12)
    assert BatchAugment(NONE, spatial_dims=2)(x) is x
    with pytest.raises(ValueError, match="spatial"):
        BatchAugment(AugmentConfig(), spatial_dims=3)(x)


def test_backend_chooses_batched_or_monai_per_sample() -> None:
    assert isinstance(make_augmentation(DataConfig(), 3), BatchAugment)
    monai_chain = make_augmentation(DataConfig(augment=AugmentConfig(backend="monai")), 3)
    assert isinstance(monai_chain, Compose)
