"""Run per-file work in worker processes so that a crashing native decoder costs one verdict, not the run.

pydicom's JPEG/JPEG 2000 plugins are C code; a hostile file can kill the process that decodes it.
``map_isolated`` maps a function over jobs in spawned processes, in order. When a worker dies, the
remaining jobs go through a single worker, one at a time, so the job that kills it again is
identified, reported as ``WORKER_CRASH`` and skipped, and every other job still gets its result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, TypeVar

J = TypeVar("J")

WORKER_CRASH = "worker_crash"  # yielded in place of the result of a job whose process died
PARALLEL_MIN_JOBS = 256


def default_workers(n_jobs: int) -> int:
    """1 for small inputs (starting processes costs about a second), else up to 8 CPUs."""
    return 1 if n_jobs < PARALLEL_MIN_JOBS else min(os.cpu_count() or 1, 8)


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn: the parent may hold threads (torch) that a fork would copy in the middle of a lock
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"))


def map_isolated(fn: Callable[[J], Any], jobs: Sequence[J], workers: int) -> Iterator[Any]:
    """``fn(job)`` for each job, in order; ``workers`` <= 1 runs in this process (no isolation).

    ``fn`` must be importable (module level) and must return, not raise, its own errors.
    """
    if workers <= 1:
        yield from map(fn, jobs)
        return
    done = 0
    try:
        with _pool(workers) as pool:
            for result in pool.map(fn, jobs, chunksize=max(1, min(64, len(jobs) // (4 * workers)))):
                yield result
                done += 1
        return
    except BrokenProcessPool:
        pass
    while done < len(jobs):
        try:
            with _pool(1) as pool:
                for result in pool.map(fn, jobs[done:]):
                    yield result
                    done += 1
        except BrokenProcessPool:
            yield WORKER_CRASH
            done += 1
