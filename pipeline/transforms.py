"""MONAI dictionary-transform chains for 2D and 3D, split into a deterministic and a random part.

The deterministic part (load, orientation to RAS, resampling, resizing, intensity normalisation)
gives the same tensor every epoch, so it runs once per image and is cached; the random part
(augmentation) runs on training samples only, every epoch, on the cached tensors.
Samples are dicts: ``{"image": path or tensor (C, X, Y[, Z]) float32, "image_id": str, ...}``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from monai.transforms import (
    Compose,
    EnsureTyped,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)

from pipeline.config import DataConfig
from pipeline.io import LoadScand
from pipeline.provenance import package_versions

KEY = "image"
# Augmentation ranges and probabilities, shared by this MONAI chain and the batched form (augment.py).
ROTATE_RANGE = 0.26  # radians, about 15 degrees either way
SCALE_RANGE = 0.1  # scaling factors in [0.9, 1.1]
P_FLIP, P_ROT90, P_AFFINE, P_SCALE, P_SHIFT, P_NOISE = 0.5, 0.5, 0.5, 0.5, 0.5, 0.3
INTENSITY_RANGE = 0.1  # multiply by 1 + U(-0.1, 0.1); add U(-0.1, 0.1)
NOISE_STD = 0.05  # noise std drawn from U(0, 0.05) per sample, as MONAI's RandGaussianNoise
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def deterministic_transforms(data: DataConfig, spatial_dims: int) -> Compose:
    """Path -> (C, *spatial_size) float32 tensor, RAS-oriented, intensity-normalised."""
    chain: list[Any] = [
        LoadScand(keys=(KEY,), nonfinite=data.nonfinite, spatial_dims=spatial_dims),
        Orientationd(keys=KEY, axcodes="RAS"[:spatial_dims], labels=_RAS_LABELS),
    ]
    if data.spacing is not None:
        chain.append(Spacingd(keys=KEY, pixdim=data.spacing, mode="bilinear"))
    if data.resize == "pad_crop":
        chain.append(ResizeWithPadOrCropd(keys=KEY, spatial_size=data.spatial_size, mode="constant"))
    else:
        # anti-aliasing smooths before shrinking, so a small finding is averaged, not skipped
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        chain.append(Resized(keys=KEY, spatial_size=data.spatial_size, mode=mode, anti_aliasing=True))
    intensity = data.intensity.mode
    if intensity == "ct_window":
        lo, hi = data.intensity.window
        chain.append(ScaleIntensityRanged(keys=KEY, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    elif intensity == "zscore":
        chain.append(NormalizeIntensityd(keys=KEY, channel_wise=True))
    elif intensity == "minmax":
        chain.append(ScaleIntensityd(keys=KEY, minv=0.0, maxv=1.0, channel_wise=True))
    chain.append(EnsureTyped(keys=KEY, dtype="float32", track_meta=False))
    return Compose(chain)


def augmentation_transforms(data: DataConfig, spatial_dims: int) -> Compose:
    """Random augmentation for training samples; input and output (C, *spatial_size) float32."""
    aug = data.augment
    chain: list[Any] = []
    if aug.flip:
        chain += [RandFlipd(keys=KEY, prob=P_FLIP, spatial_axis=axis) for axis in range(spatial_dims)]
    if aug.rotate90:
        chain.append(RandRotate90d(keys=KEY, prob=P_ROT90, max_k=3, spatial_axes=(0, 1)))
    if aug.affine:
        chain.append(
            RandAffined(
                keys=KEY,
                prob=P_AFFINE,
                rotate_range=(ROTATE_RANGE,) * (1 if spatial_dims == 2 else 3),
                scale_range=(SCALE_RANGE,) * spatial_dims,
                padding_mode="border",
                mode="bilinear",
            )
        )
    if aug.intensity:
        chain += [
            RandScaleIntensityd(keys=KEY, factors=INTENSITY_RANGE, prob=P_SCALE),
            RandShiftIntensityd(keys=KEY, offsets=INTENSITY_RANGE, prob=P_SHIFT),
        ]
    if aug.noise:
        chain.append(RandGaussianNoised(keys=KEY, prob=P_NOISE, std=NOISE_STD))
    chain.append(EnsureTyped(keys=KEY, dtype="float32", track_meta=False))
    return Compose(chain)


def preprocessing_fingerprint(data: DataConfig, spatial_dims: int) -> str:
    """Text that changes whenever the deterministic chain would produce different tensors (cache key)."""
    spec = {
        "spatial_dims": spatial_dims,
        "spatial_size": list(data.spatial_size),
        "spacing": list(data.spacing) if data.spacing else None,
        "resize": data.resize,
        "intensity": {"mode": data.intensity.mode, "window": list(data.intensity.window)},
        "nonfinite": data.nonfinite,
        "chain": [type(t).__name__ for t in deterministic_transforms(data, spatial_dims).transforms],
        "code": preprocessing_code(),
    }
    return json.dumps(spec, sort_keys=True)


@functools.cache
def preprocessing_code() -> dict[str, Any]:
    """What else makes the tensors: the readers' and this chain's source (a fix to either must not
    reuse tensors cached before it) and the libraries that load and resample."""
    root = Path(__file__).parent
    files = sorted([*root.joinpath("io").glob("*.py"), root / "transforms.py"])
    source = hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()[:16]
    return {"source": source, **package_versions(("monai", "torch", "numpy", "nibabel", "pydicom", "scipy"))}
