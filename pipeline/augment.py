"""Training augmentation applied to a whole batch on the training device.

The same random transforms as the MONAI chain in ``transforms.augmentation_transforms`` (flips,
90-degree rotations, a small rotation and scaling, intensity scale and shift, Gaussian noise,
with the same probabilities and ranges), drawn independently for every sample of the batch but
computed with a handful of batched tensor operations: on a GPU, next to the model, and on a small
CPU without the per-sample cost of MONAI's dictionary transforms, which left a warm epoch at about
0.7 of the compute limit on the 2-core development machine (see README "Speed").

Written here because MONAI's random transforms work one sample at a time. The rotation and
scaling matrices come from MONAI (``create_rotate``, ``create_scale``); the resampling is
PyTorch's ``affine_grid``/``grid_sample``, checked against MONAI's ``Affine`` in the tests.
Random parameters are drawn on the CPU from a seeded generator, so a batch is augmented the same
way on every device and a resumed run repeats the interrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.transforms import Compose
from monai.transforms.utils import create_rotate, create_scale

from pipeline.config import AugmentConfig, DataConfig
from pipeline.transforms import (
    INTENSITY_RANGE,
    NOISE_STD,
    P_AFFINE,
    P_FLIP,
    P_NOISE,
    P_ROT90,
    P_SCALE,
    P_SHIFT,
    ROTATE_RANGE,
    SCALE_RANGE,
    augmentation_transforms,
)


def affine_theta(matrices: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """``affine_grid`` parameters for (N, d, d) matrices acting on voxel coordinates about the centre.

    ``affine_grid`` works in normalised coordinates in reversed axis order (x is the last
    dimension); a rotation there would be sheared on a non-cubic grid, so the matrix is
    conjugated by the voxel-to-normalised scaling (align_corners=False: u = p * 2 / size).
    """
    d = len(spatial_shape)
    rev = list(range(d - 1, -1, -1))
    m = matrices[:, rev][:, :, rev]
    half = torch.tensor([spatial_shape[i] / 2.0 for i in rev], dtype=m.dtype, device=m.device)
    m = m * half.view(1, 1, d) / half.view(1, d, 1)
    return torch.cat([m, torch.zeros(len(m), d, 1, dtype=m.dtype, device=m.device)], dim=2)


class BatchAugment:
    """Random augmentation of a (N, C, *spatial) float batch, independent per sample.

    ``set_random_state(seed)`` reseeds it (once per epoch, like MONAI's ``Randomizable``).
    """

    def __init__(self, cfg: AugmentConfig, spatial_dims: int, seed: int = 0) -> None:
        self.cfg = cfg
        self.spatial_dims = spatial_dims
        self.generator = torch.Generator().manual_seed(seed)

    def set_random_state(self, seed: int) -> BatchAugment:
        self.generator.manual_seed(seed)
        return self

    @property
    def active(self) -> bool:
        c = self.cfg
        return any((c.flip, c.rotate90, c.affine, c.intensity, c.noise))

    def _chance(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) < p

    def _uniform(self, shape: tuple[int, ...], half_width: float) -> torch.Tensor:
        return (torch.rand(shape, generator=self.generator, dtype=torch.float64) * 2 - 1) * half_width

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, dims = len(x), self.spatial_dims
        if n == 0 or not self.active:
            return x
        if x.dim() != dims + 2:
            raise ValueError(f"augmentation expects a (N, C, {dims} spatial) batch, got shape {tuple(x.shape)}")
        # the steps draw from self.generator in this fixed order, so a seed gives one augmentation
        steps = (
            (self.cfg.flip, self._flip),
            (self.cfg.rotate90, self._rotate90),
            (self.cfg.affine, self._affine),
            (self.cfg.intensity, self._intensity),
            (self.cfg.noise, self._noise),
        )
        for on, step in steps:
            if on:
                x = step(x)
        return x

    def _flip(self, x: torch.Tensor) -> torch.Tensor:
        """One flip per combination of axes (at most 2^dims groups), one copy of the batch in all."""
        n, dims = len(x), self.spatial_dims
        chosen = torch.stack([self._chance(n, P_FLIP) for _ in range(dims)], dim=1)
        code = (chosen.long() * (2 ** torch.arange(dims))).sum(dim=1)
        if not bool(code.any()):
            return x
        x = x.clone()
        for c in code.unique().tolist():
            if c:
                idx = (code == c).nonzero().flatten().to(x.device)
                x[idx] = x[idx].flip([a + 2 for a in range(dims) if c >> a & 1])
        return x

    def _rotate90(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        turns = torch.where(self._chance(n, P_ROT90), torch.randint(1, 4, (n,), generator=self.generator), 0)
        if not bool(turns.any()):
            return x
        if x.shape[2] != x.shape[3]:
            raise ValueError(f"rotate90 needs equal sizes in the first two axes, got {tuple(x.shape[2:])}")
        out = x.clone()
        for k in (1, 2, 3):
            idx = (turns == k).nonzero().flatten().to(x.device)
            if len(idx):
                out[idx] = torch.rot90(x[idx], k, dims=(2, 3))
        return out

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        n, dims = len(x), self.spatial_dims
        chosen = self._chance(n, P_AFFINE)
        angles = self._uniform((n, 1 if dims == 2 else 3), ROTATE_RANGE)
        scales = 1 + self._uniform((n, dims), SCALE_RANGE)
        idx = chosen.nonzero().flatten()
        if not len(idx):
            return x
        mats = torch.stack(
            [
                torch.as_tensor(create_rotate(dims, angles[i].tolist()))[:dims, :dims]
                @ torch.as_tensor(create_scale(dims, scales[i].tolist()))[:dims, :dims]
                for i in idx.tolist()
            ]
        )
        theta = affine_theta(mats, tuple(x.shape[2:])).to(device=x.device, dtype=torch.float32)
        sub = x[idx.to(x.device)].float()
        grid = F.affine_grid(theta, list(sub.shape), align_corners=False)
        warped = F.grid_sample(sub, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = x.clone()
        x[idx.to(x.device)] = warped.to(x.dtype)
        return x

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        n, view = len(x), (len(x),) + (1,) * (x.dim() - 1)
        factor = 1 + torch.where(self._chance(n, P_SCALE), self._uniform((n,), INTENSITY_RANGE), 0.0)
        offset = torch.where(self._chance(n, P_SHIFT), self._uniform((n,), INTENSITY_RANGE), 0.0)
        return torch.addcmul(offset.to(x.device, x.dtype).view(view), x, factor.to(x.device, x.dtype).view(view))

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        n, view = len(x), (len(x),) + (1,) * (x.dim() - 1)
        std = torch.where(self._chance(n, P_NOISE), torch.rand(n, generator=self.generator) * NOISE_STD, 0.0)
        noise_gen = torch.Generator(device=x.device).manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=self.generator))
        )
        noise = torch.randn(x.shape, generator=noise_gen, device=x.device, dtype=x.dtype)
        return x + noise * std.to(x.device, x.dtype).view(view)


def make_augmentation(data: DataConfig, spatial_dims: int) -> BatchAugment | Compose:
    """The workflow's training augmentation: batched on the device, or MONAI's per-sample chain."""
    if data.augment.backend == "monai":
        return augmentation_transforms(data, spatial_dims)
    return BatchAugment(data.augment, spatial_dims)


def split_augmentation(augment: BatchAugment | Compose) -> tuple[Compose | None, BatchAugment | None]:
    """(per-sample chain for the loader, batched augmentation for the training step): one is None."""
    return (None, augment) if isinstance(augment, BatchAugment) else (augment, None)
