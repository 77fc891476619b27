"""Batch prediction over prepared samples: eval mode, no autograd, optional bf16 autocast."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader
from torch import nn

from pipeline.datasets import sample_dataset
from pipeline.distributed import SINGLE, DistContext, gather_sharded, shard


def mirror_views(spatial_dims: int, tta: str) -> tuple[tuple[int, ...], ...]:
    """The tensor axes flipped in each view: only the image itself (``tta: none``), or every
    combination of flips over the spatial axes (``flips``; nnU-Net's mirroring, 2^d views), the
    unflipped view first."""
    if tta == "none":
        return ((),)
    axes = range(2, 2 + spatial_dims)
    return tuple(c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r))


def view_logits(model: nn.Module, x: torch.Tensor, views: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """Logits (len(x), len(views)) of ``x`` flipped as each view says."""
    return torch.stack([model(torch.flip(x, v) if v else x).reshape(len(x), -1)[:, 0] for v in views], dim=1)


def predict_logits(
    model: nn.Module,
    items: list[dict[str, Any]],
    *,
    device: torch.device,
    bf16: bool = False,
    batch_size: int = 32,
    ctx: DistContext = SINGLE,
    views: tuple[tuple[int, ...], ...] = ((),),
) -> np.ndarray:
    """Logits, shape (len(items),) float32 (one view) or (len(items), len(views)), in the order
    of ``items``.

    Under torchrun each rank predicts a disjoint shard and the shards are gathered, so every
    image is predicted exactly once and every rank returns the full array.
    """
    width = len(views)
    if not items:
        return np.zeros((0,) if width == 1 else (0, width), dtype=np.float32)
    mine = shard(ctx, items)
    local = np.zeros((0, width), dtype=np.float32)
    if mine:
        loader = DataLoader(sample_dataset(mine), batch_size=batch_size, shuffle=False, num_workers=0)
        was_training = model.training
        model.eval()
        out = []
        with torch.inference_mode():
            for batch in loader:
                x = batch["image"].to(device, non_blocking=True)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                    out.append(view_logits(model, x, views).float().cpu().numpy())
        model.train(was_training)
        local = np.concatenate(out).astype(np.float32)
    columns = [gather_sharded(ctx, local[:, j], len(items)) for j in range(width)]  # item order, per view
    return columns[0] if width == 1 else np.stack(columns, axis=1)


def predict_scores_tta(
    model: nn.Module, items: list[dict[str, Any]], *, spatial_dims: int, tta: str, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(score, single-view score), each (len(items),): with ``tta: flips`` the score is the mean
    probability over the mirrored views; without, both are the image's own probability."""
    views = mirror_views(spatial_dims, tta)
    probs = 1.0 / (1.0 + np.exp(-predict_logits(model, items, views=views, **kwargs).astype(np.float64)))
    if probs.ndim == 1:
        return probs, probs
    return probs.mean(axis=1), probs[:, 0]
