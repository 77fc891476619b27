"""Data-parallel training on many GPUs (or CPU processes) with torch.distributed, launched by torchrun.

``torchrun --nproc_per_node=N -m pipeline run WORKFLOW`` (or ``--nnodes/--node_rank/--rdzv-*``
for several machines) starts N copies of the same command; each reads ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` from the environment that torchrun sets, once, into a
``DistContext`` that the run hands down. Every rank trains the same
DistributedDataParallel model on its shard of each batch; predictions are computed on disjoint
shards (no padding, so no duplicated rows) and gathered; rank 0 alone writes files.
Without torchrun, ``WORLD_SIZE`` is unset and everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # ranks on this machine (they share its CPUs for preprocessing)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group torchrun set up; a single process when WORLD_SIZE is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        # preprocessing before the first collective can take a while on large cohorts
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=2))
    return DistContext(rank=rank, world_size=world, local_rank=local, local_world_size=per_node)


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:<LOCAL_RANK>`` under torchrun on GPUs."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast(ctx: DistContext, value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(ctx: DistContext, items: list[Any]) -> list[Any]:
    """This rank's disjoint share of ``items`` (every ``world_size``-th item, no padding)."""
    return items[ctx.rank :: ctx.world_size] if ctx.enabled else items


def gather_sharded(ctx: DistContext, values: np.ndarray, total: int) -> np.ndarray:
    """Reassemble per-rank results of ``shard`` into the original order, on every rank."""
    # Not MONAI's DistributedSampler(even_divisible=False) + evenly_divisible_all_gather: the sampler
    # refuses fewer items than ranks (a small validation set on 8 GPUs) and the gather returns
    # rank-major order, which needs this same re-interleaving anyway.
    if not ctx.enabled:
        return values
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, np.asarray(values))
    out = np.empty(total, dtype=np.asarray(values).dtype)
    for rank, part in enumerate(parts):
        out[rank :: ctx.world_size] = part
    return out
