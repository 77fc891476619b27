"""Run the deterministic transform chain once per image, guarded, and cache the result.

Each image is loaded and preprocessed once per study (not once per fold or epoch); a scan that
fails is recorded with its reason code and skipped, and the rest of the cohort goes on.
The cache lives on the GPU or in host memory when the cohort fits, otherwise on disk as one ``.pt`` file per image
holding only the tensor (no path, no header text), named by a hash of the preprocessing
fingerprint and the image file's content hash, so a change of either invalidates it. Cached files
are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import Dataset
from monai.transforms import Compose, MapTransform
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.config import WorkflowConfig
from pipeline.errors import ScanError
from pipeline.reporting import artifacts
from pipeline.schema import IMAGE, IMAGE_ID, PATIENT_ID, TARGET
from pipeline.transforms import deterministic_transforms, preprocessing_fingerprint

log = logging.getLogger(__name__)

KEY = IMAGE
MEMORY_FRACTION = 0.25  # "auto" caches in memory when the cohort needs less than this share of RAM


@dataclass
class PreparedCohort:
    """Preprocessed samples by image id, and the images that could not be used.

    ``samples[image_id]`` is ``{"image": tensor (C, *spatial) float32 or a cache file path,
    "image_id": str, TARGET: float}``. ``failures`` has columns image_id, patient_id, reason, message.
    """

    samples: dict[str, dict[str, Any]]
    failures: pd.DataFrame
    cache: str
    cache_dir: Path | None = None
    stats: dict[str, float] = field(default_factory=dict)

    def items(self, image_ids: Sequence[str]) -> list[dict[str, Any]]:
        return [self.samples[i] for i in image_ids if i in self.samples]


def _failure_reason(exc: BaseException) -> tuple[str, str]:
    """Find our ScanError in the exception chain (MONAI wraps transform errors in RuntimeError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ScanError):
            return seen.reason, seen.detail
        seen = seen.__cause__ or seen.__context__
    # Third-party messages can carry file paths, so only the exception type is reported.
    return "preprocessing_error", f"{type(exc).__name__} while preprocessing"


def choose_cache(policy: str, n_images: int, bytes_per_image: int, device: torch.device | None = None) -> str:
    """``auto`` -> ``device`` (on a GPU) or ``memory`` when the cohort takes under MEMORY_FRACTION
    of that memory, else ``disk``. ``device`` without a GPU means ``memory``."""
    need = n_images * bytes_per_image
    on_gpu = device is not None and device.type == "cuda"
    if policy == "device" and not on_gpu:
        return "memory"
    if policy != "auto":
        return policy
    if on_gpu and need < MEMORY_FRACTION * torch.cuda.get_device_properties(device).total_memory:
        return "device"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return "memory" if need < MEMORY_FRACTION * total else "disk"


def prepare_for_workflow(
    cfg: WorkflowConfig,
    table: pd.DataFrame,
    content_hashes: dict[str, str],
    *,
    device: torch.device | None,
    progress: bool = True,
    ranks_per_node: int = 1,
) -> PreparedCohort:
    """``prepare_cohort`` with the workflow's deterministic chain, cache policy, cache folder and
    worker count."""
    dims = cfg.model.spatial_dims
    prep = Preprocessing(
        deterministic_transforms(cfg.data, dims),
        fingerprint=preprocessing_fingerprint(cfg.data, dims),
        cache=cfg.data.cache,
        cache_dir=cfg.output_dir / ".cache" / "preprocessed",
        bytes_per_image=4 * cfg.model.in_channels * math.prod(cfg.data.spatial_size),
        device=device,
        workers=preprocess_workers(cfg.data.workers, ranks_per_node),
    )
    return prepare_cohort(table, prep, content_hashes, progress=progress)


def preprocess_workers(requested: int | None, ranks_per_node: int = 1) -> int:
    """Worker processes for preprocessing: as requested, else one per usable CPU (up to 8)
    shared among the ranks on this node; 0 when that leaves one (the main process does it)."""
    if requested is not None:
        return max(0, requested)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = min(8, cpus) // max(1, ranks_per_node)
    return n if n > 1 else 0


def _save_tensor(tensor: torch.Tensor, path: Path) -> None:
    artifacts.write_with(path, lambda fh: torch.save(tensor, fh))


def _single_threaded(_: int) -> None:
    torch.set_num_threads(1)  # the workers share the CPUs; one thread each avoids oversubscription


class _Preprocess(torch.utils.data.Dataset):
    """The deterministic chain on one image, guarded: (tensor, None) or (None, (reason, message))."""

    def __init__(self, todo: Sequence[tuple[str, str, str, dict[str, Any]]], transform: Compose) -> None:
        self.todo = todo
        self.transform = transform

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, tuple[str, str] | None]:
        image_id, _, path, _ = self.todo[index]
        try:
            out = self.transform({KEY: path, IMAGE_ID: image_id})
            tensor = torch.as_tensor(out[KEY]).float().contiguous()
            if not torch.isfinite(tensor).all():
                raise ScanError("nonfinite_after_preprocessing", "non-finite values after preprocessing", image_id)
        except Exception as exc:  # one bad scan must not abort the cohort
            return None, _failure_reason(exc)
        # a plain tensor (no MONAI metadata, which could carry header text) crosses the process boundary
        return tensor.as_subclass(torch.Tensor), None


def cache_key(fingerprint: str, content_hash: str) -> str:
    return hashlib.sha256(f"{fingerprint}\n{content_hash}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Preprocessing:
    """How a cohort is preprocessed: the deterministic chain and its fingerprint (part of every
    cache key), the cache policy and folder, the size of one tensor (for the memory-or-disk
    choice), the device of the ``device`` cache, and the worker processes (None: one per CPU, up
    to 8; 0: in this process)."""

    transform: Compose
    fingerprint: str
    cache: str
    cache_dir: Path | None
    bytes_per_image: int
    device: torch.device | None = None
    workers: int | None = None

    def cached_path(self, content_hash: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"{cache_key(self.fingerprint, content_hash)}.pt"


def prepare_cohort(
    table: pd.DataFrame, prep: Preprocessing, content_hashes: dict[str, str], *, progress: bool = True
) -> PreparedCohort:
    """Preprocess every image of ``table`` (columns image_id, patient_id, path, target).

    With the ``device`` cache the tensors are moved to ``prep.device`` (a GPU), where augmentation
    and training then read them without any host-to-device copy. A disk cache reuses the tensors
    whose key (chain fingerprint and image content hash) it already holds.
    """
    mode = choose_cache(prep.cache, len(table), prep.bytes_per_image, prep.device)
    if mode == "disk":
        if prep.cache_dir is None:
            raise ValueError("a disk cache needs a cache directory")
        prep.cache_dir.mkdir(parents=True, exist_ok=True)
    samples: dict[str, dict[str, Any]] = {}
    todo = []
    for image_id, patient_id, path, target in table[[IMAGE_ID, PATIENT_ID, "path", TARGET]].itertuples(index=False):
        sample: dict[str, Any] = {IMAGE_ID: image_id, TARGET: float(target)}
        cached = prep.cached_path(content_hashes[image_id]) if mode == "disk" else None
        if cached is not None and cached.is_file():
            samples[image_id] = {**sample, KEY: str(cached)}
        else:
            todo.append((image_id, patient_id, path, sample))
    hits = len(samples)
    failures = _run_chain(todo, prep, mode, content_hashes, samples, progress)
    fail_df = pd.DataFrame(failures, columns=[IMAGE_ID, PATIENT_ID, "reason", "message"])
    return PreparedCohort(samples, fail_df, mode, prep.cache_dir if mode == "disk" else None, {"cache_hits": hits})


WORKER_BATCH = 16  # images a worker prepares and sends together


def guarded_chain(
    todo: Sequence[tuple[str, str, str, dict[str, Any]]],
    transform: Compose,
    workers: int | None,
    lookahead: int = 0,
    pin: bool = False,
) -> Iterator[tuple[Any, Any]]:
    """(tensor, None) or (None, (reason, message)) for each (image_id, patient_id, path, sample) of
    ``todo``, in order; torch's DataLoader runs the chain in worker processes (None: one per CPU,
    up to 8; 0: in this process). ``lookahead``: images the workers may prepare ahead of the
    consumer (so that they keep working while it scores a chunk); ``pin``: page-locked tensors
    for fast copies to a GPU. The tensors are views into a batch's storage: clone one before
    saving it alone."""
    n_workers = min(preprocess_workers(workers), len(todo) // 2)
    loader = DataLoader(
        _Preprocess(todo, transform),
        batch_size=WORKER_BATCH,
        collate_fn=_stack_by_shape,
        num_workers=n_workers,
        worker_init_fn=_single_threaded if n_workers else None,
        pin_memory=pin,
        prefetch_factor=max(2, -(-lookahead // (n_workers * WORKER_BATCH))) if n_workers else None,
    )
    for n, stacks, failures in loader:
        out: list[Any] = [None] * n
        for stacked, positions in stacks:
            for k, j in enumerate(positions):
                out[j] = (stacked[k], None)
        for j, failure in failures:
            out[j] = (None, failure)
        yield from out


def _stack_by_shape(
    batch: list[tuple[torch.Tensor | None, tuple[str, str] | None]],
) -> tuple[int, list[Any], list[Any]]:
    """Worker side: the batch's tensors stacked per shape, so that one shared-memory handle crosses
    the process boundary per batch instead of one per image (a handle costs milliseconds)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    failures = []
    for j, (tensor, failure) in enumerate(batch):
        if tensor is None:
            failures.append((j, failure))
        else:
            groups.setdefault(tuple(tensor.shape), []).append(j)
    stacks = [(torch.stack([batch[j][0] for j in idx]), idx) for idx in groups.values()]  # type: ignore[misc]
    return len(batch), stacks, failures


def _run_chain(
    todo: list[tuple[str, str, str, dict[str, Any]]],
    prep: Preprocessing,
    mode: str,
    content_hashes: dict[str, str],
    samples: dict[str, dict[str, Any]],
    progress: bool,
) -> list[tuple[str, ...]]:
    """The chain on every image of ``todo``; the tensors go into ``samples`` (saved to the disk
    cache first in ``disk`` mode), and the failures are returned as (image, patient, reason, message)."""
    loader = guarded_chain(todo, prep.transform, prep.workers)
    failures = []
    for (image_id, patient_id, _, sample), (tensor, failure) in zip(
        todo,
        tqdm(loader, total=len(todo), desc="preprocess", unit="img", disable=not progress, leave=False),
        strict=True,
    ):
        if failure is not None:
            failures.append((image_id, patient_id, *failure))
            log.warning("%s: skipped (%s): %s", image_id, *failure)
        elif mode == "disk":
            cached = prep.cached_path(content_hashes[image_id])
            _save_tensor(tensor.clone(), cached)  # alone, not the batch storage it is a view of
            samples[image_id] = {**sample, KEY: str(cached)}
        else:
            on_device = mode == "device" and prep.device is not None
            samples[image_id] = {**sample, KEY: tensor.to(prep.device) if on_device else tensor}
    return failures


class LoadCachedd(MapTransform):
    """Load a tensor saved by the disk cache (``weights_only=True``: a cache file never runs code)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], str):
                d[key] = torch.load(d[key], map_location="cpu", weights_only=True)
        return d


def sample_dataset(items: list[dict[str, Any]], augment: Callable[..., Any] | None = None) -> Dataset:
    """A MONAI Dataset over prepared samples, applying ``augment`` (training) after the cache."""
    chain: list[Any] = [LoadCachedd(keys=KEY)]
    if augment is not None:
        chain.append(augment)
    return Dataset(data=items, transform=Compose(chain))


def targets(items: list[dict[str, Any]]) -> np.ndarray:
    return np.array([it[TARGET] for it in items], dtype=np.float32)
