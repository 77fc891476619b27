"""MONAI integration: ``LoadScand`` (first transform of a chain) and ``CohortnetDicomReader``.

MONAI's ``LoadImage(reader="X")`` treats the reader as a preference and silently falls back to
another reader when X fails, and it keeps the raw path in ``filename_or_obj``. ``LoadScand``
calls our loader directly (NIfTI through a pinned ``NibabelReader``, DICOM through our series
reader), so there is no fallback, and it names the image by its id, never by its path.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, PathLike
from monai.data import ImageReader, MetaTensor
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys

from pipeline.errors import ScanError
from pipeline.io import sniff
from pipeline.io.geometry import plane_affine
from pipeline.io.loader import Scan, default_source, load_scan
from pipeline.schema import IMAGE_ID

_SCALAR_META = (
    "format",
    "modality",
    "orientation",
    "n_files",
    "n_volumes",
    "transfer_syntax",
    "photometric",
    "inverted",
    "nifti_transform",
    "nonfinite_replaced",
)


def collatable_meta(scan: Scan) -> dict[str, Any]:
    """Whitelisted meta as values that MONAI's ``list_data_collate`` can batch (no None, no lists)."""
    meta: dict[str, Any] = {k: scan.meta[k] for k in _SCALAR_META if scan.meta.get(k) is not None}
    meta["spacing"] = np.asarray(scan.meta["spacing"], np.float64)
    meta["warnings"] = ";".join(scan.meta.get("warnings", []))
    return meta


def monai_affine(scan: Scan) -> np.ndarray:
    """The affine MONAI's spatial transforms get: the RAS affine, for a 2-D image turned into the
    image's plane (``geometry.plane_affine``: a coronal or sagittal image has no 2-D RA block)."""
    channel_first = scan.meta.get("channel_dim") == 0
    spatial = scan.array.ndim - (1 if channel_first else 0)
    return plane_affine(scan.affine) if spatial == 2 else scan.affine.copy()


def to_metatensor(scan: Scan, name: str) -> MetaTensor:
    """Channel-first MetaTensor (C, X, Y[, Z]) float32 with non-identifying meta; ``affine`` is
    ``monai_affine``, ``original_affine`` the RAS affine of the source (also for 2-D)."""
    channel_first = scan.meta.get("channel_dim") == 0
    array = scan.array if channel_first else scan.array[None]
    affine = torch.as_tensor(monai_affine(scan), dtype=torch.float64)
    meta = collatable_meta(scan)
    meta.update(
        {
            ImageMetaKey.FILENAME_OR_OBJ: name,
            MetaKeys.ORIGINAL_AFFINE: torch.as_tensor(scan.affine, dtype=torch.float64),
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[1:]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: 0,
            MetaKeys.SPACE: SpaceKeys.RAS,
        }
    )
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array, np.float32)), affine=affine, meta=meta)


class LoadScand(MapTransform):
    """Load ``d[key]`` (a path) as a channel-first float32 MetaTensor (C, X, Y[, Z]), affine RAS.

    ``meta["filename_or_obj"]`` is ``d[id_key]`` (or a digest of the path), never the path.
    ``volumes`` is "refuse", "first" or "mean": keeping all volumes would make time points
    channels, which is what MONAI's EnsureChannelFirst does silently and we refuse to.
    ``spatial_dims`` (2 or 3, when given) refuses an image of the other kind: a single slice or
    radiograph is never repeated into a volume, and a volume is never read as one slice.
    Raises ``pipeline.errors.ScanError`` for unusable images.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image",),
        nonfinite: str = "refuse",
        id_key: str = IMAGE_ID,
        volumes: str = "refuse",
        allow_missing_keys: bool = False,
        spatial_dims: int | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if volumes == "all":
            raise ValueError("LoadScand keeps one volume: volumes must be 'refuse', 'first' or 'mean'")
        self.nonfinite = nonfinite
        self.id_key = id_key
        self.volumes = volumes
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            name = str(d[self.id_key]) if d.get(self.id_key) is not None else default_source(d[key])
            scan = load_scan(d[key], nonfinite=self.nonfinite, source=name, volumes=self.volumes)
            if self.spatial_dims is not None:
                check_dimensions(scan, self.spatial_dims, name)
            d[key] = to_metatensor(scan, name)
        return d


def check_dimensions(scan: Scan, spatial_dims: int, source: str) -> None:
    """Refuse a 2-D image (one slice, a radiograph) in a 3-D workflow and a volume in a 2-D one."""
    shape = scan.array.shape[1:] if scan.meta.get("channel_dim") == 0 else scan.array.shape
    extents = [n for n in shape if n > 1]
    if spatial_dims == 3 and len(extents) < 3:
        raise ScanError(
            "wrong_dimensions",
            f"a 2-D image (shape {tuple(shape)}) in a 3-D workflow; it would be repeated into identical slices",
            source,
        )
    if spatial_dims == 2 and len(extents) > 2:
        raise ScanError("wrong_dimensions", f"a 3-D volume (shape {tuple(shape)}) in a 2-D workflow", source)


class CohortnetDicomReader(ImageReader):
    """A MONAI ImageReader for DICOM series folders and files, over ``load_scan``.

    Use it pinned at call time, ``LoadImage()(path, reader=CohortnetDicomReader())``, so that
    MONAI never falls back to another reader. ``get_data`` returns (X, Y[, Z]) data with
    ``original_channel_dim`` "no_channel" (or 0 for colour) and the RAS affine.
    """

    def __init__(self, nonfinite: str = "refuse", volumes: str = "refuse") -> None:
        super().__init__()
        self.nonfinite = nonfinite
        self.volumes = volumes

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        if isinstance(filename, str | os.PathLike):
            path = Path(filename)
            return path.is_dir() or (path.is_file() and sniff.sniff(path) in (sniff.DICOM, sniff.DICOM_NO_META))
        return False

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Scan:
        if not isinstance(data, str | os.PathLike):  # LoadImage passes a 1-tuple
            if len(data) != 1:
                raise TypeError("CohortnetDicomReader reads one series folder or one file per call")
            data = data[0]
        path = Path(os.fspath(data))
        return load_scan(path, nonfinite=self.nonfinite, source=default_source(path), volumes=self.volumes)

    def get_data(self, img: Scan) -> tuple[np.ndarray, dict]:
        meta = collatable_meta(img)
        channel_first = img.meta.get("channel_dim") == 0
        meta.update(
            {
                MetaKeys.AFFINE: monai_affine(img),
                MetaKeys.ORIGINAL_AFFINE: img.affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(img.array.shape[1:] if channel_first else img.array.shape),
                MetaKeys.ORIGINAL_CHANNEL_DIM: 0 if channel_first else float("nan"),
                MetaKeys.SPACE: SpaceKeys.RAS,
            }
        )
        return img.array, meta
