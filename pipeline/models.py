"""ResNet factory over ``monai.networks.nets`` (depths 10 to 200, 2D and 3D, any input channels).

The classifier has one output logit: ``sigmoid(logit)`` is the probability of the positive class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from monai.networks import nets
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import CohortnetError
from pipeline.options import ARCHS

log = logging.getLogger(__name__)


_NORMS: dict[str, tuple[str, dict[str, object]]] = {
    "batch": ("batch", {}),
    "instance": ("instance", {"affine": True}),
    "group": ("group", {"num_groups": 16}),
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """A MONAI ResNet with a single-logit head: input (B, C, *spatial) -> logits (B, 1)."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown arch {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
    factory = getattr(nets, cfg.arch)
    model: nn.Module = factory(
        spatial_dims=cfg.spatial_dims,
        n_input_channels=cfg.in_channels,
        num_classes=1,
        conv1_t_size=cfg.stem_kernel,
        conv1_t_stride=cfg.stem_stride,
        no_max_pool=not cfg.stem_max_pool,
        widen_factor=cfg.widen_factor,
        feed_forward=True,
        norm=_NORMS[cfg.norm],
    )
    if cfg.dropout > 0:
        head = model.fc
        assert isinstance(head, nn.Module)
        model.fc = nn.Sequential(nn.Dropout(cfg.dropout), head)
    if cfg.pretrained:
        load_pretrained(model, Path(cfg.pretrained))
    return model


def load_pretrained(model: nn.Module, path: Path) -> None:
    """Load a local state_dict (never code: ``weights_only=True``); the classifier head may differ.

    Accepts a plain state_dict or a dict with ``state_dict``/``model`` (MedicalNet style, with an
    optional ``module.`` prefix). Tensors whose shape differs (e.g. the head) are skipped and listed.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unreadable or unsafe file is a user error, not a crash
        raise CohortnetError(f"model.pretrained {path.name}: cannot load weights ({type(exc).__name__})") from None
    state = raw.get("state_dict", raw.get("model", raw)) if isinstance(raw, dict) else raw
    if not isinstance(state, dict):
        raise CohortnetError(f"model.pretrained {path.name}: expected a state_dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k not in usable)
    if not usable:
        raise CohortnetError(f"model.pretrained {path.name}: no tensor matches the model (wrong arch or dims?)")
    model.load_state_dict(usable, strict=False)
    log.info(
        "pretrained weights %s: %d tensors loaded, %d skipped %s",
        path.name,
        len(usable),
        len(skipped),
        skipped[:5],
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
