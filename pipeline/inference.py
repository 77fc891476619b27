"""Batch prediction over prepared samples: eval mode, no autograd, optional bf16 autocast."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import DataLoader
from torch import nn

from pipeline.datasets import sample_dataset
from pipeline.distributed import SINGLE, DistContext, gather_sharded, shard


def predict_logits(
    model: nn.Module,
    items: list[dict[str, Any]],
    *,
    device: torch.device,
    bf16: bool = False,
    batch_size: int = 32,
    ctx: DistContext = SINGLE,
) -> np.ndarray:
    """Logits, shape (len(items),) float32, in the order of ``items``.

    Under torchrun each rank predicts a disjoint shard and the shards are gathered, so every
    image is predicted exactly once and every rank returns the full array.
    """
    if not items:
        return np.zeros(0, dtype=np.float32)
    mine = shard(ctx, items)
    if not mine:
        return gather_sharded(ctx, np.zeros(0, dtype=np.float32), len(items))
    loader = DataLoader(sample_dataset(mine), batch_size=batch_size, shuffle=False, num_workers=0)
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x).reshape(len(x), -1)[:, 0]
            out.append(logits.float().cpu().numpy())
    model.train(was_training)
    return gather_sharded(ctx, np.concatenate(out).astype(np.float32), len(items))


def predict_scores(model: nn.Module, items: list[dict[str, Any]], **kwargs: Any) -> np.ndarray:
    """Probability of the positive class, shape (len(items),) float64 in [0, 1]."""
    logits = predict_logits(model, items, **kwargs).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-logits))
