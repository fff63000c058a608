"""Face chips of many photos computed in parallel, in spawned worker processes.

Above POOL_THRESHOLD uncached photos, :func:`compute_chip_pngs` spreads them over at most
MAX_POOL_WORKERS processes; whatever the pool does not deliver (it failed to start, a
worker died) is computed in the calling process. The processes are started for each call,
or once for every call inside :func:`workers_kept` (a gallery aligned a batch at a time).
Each worker imports this module to run its share: it and what it imports load only numpy,
PIL and dlib, never TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator

from facetrip.data.chip_cutting import chip_from_pixels
from facetrip.data.chip_png import encode_chip
from facetrip.data.images import ImageReadError, decode_bytes
from facetrip.data.photo_pixels import rgb_from_image

logger = logging.getLogger(__name__)

# Above this many uncached photos, chip_faces spreads them over worker processes: starting
# a worker (Python, numpy, PIL, dlib and its models) takes about a second, some 25-50 photos.
POOL_THRESHOLD = 64
MAX_POOL_WORKERS = 4

ChipJob = tuple[int, str, bytes]  # (index in the set, file name, encoded photo)


@dataclasses.dataclass
class _KeptWorkers:
    """The pool :func:`workers_kept` keeps: started at its first use, dropped when it fails."""

    pool: concurrent.futures.ProcessPoolExecutor | None = None
    failed: bool = False


_kept_workers: _KeptWorkers | None = None  # set inside workers_kept()


@contextlib.contextmanager
def workers_kept() -> Iterator[None]:
    """Inside this block, :func:`compute_chip_pngs` starts its worker processes once and keeps them for every call.

    Starting a worker takes about a second: a set aligned a batch at a time pays it once,
    not once a batch. The workers are shut down when the block ends; a pool that failed is
    not started again inside it (its photos are aligned in this process). Blocks nest: the
    outermost keeps the workers.
    """
    global _kept_workers
    if _kept_workers is not None:
        yield
        return
    _kept_workers = _KeptWorkers()
    try:
        yield
    finally:
        kept, _kept_workers = _kept_workers, None
        if kept.pool is not None:
            kept.pool.shutdown(wait=False, cancel_futures=True)


def compute_chip_pngs(
    jobs: list[ChipJob], pool_threshold: int, finished: Callable[[int, bytes], None]
) -> dict[int, bytes]:
    """PNG chips of the photos of ``jobs``, by index; ``finished(index, png)`` is told of each.

    In worker processes when there are more than ``pool_threshold`` of them; whatever the
    pool did not deliver (it failed to start, a worker died) is computed in this process.

    Raises:
        ImageReadError: a photo is not a readable image (named by its file name).
    """
    pngs: dict[int, bytes] = {}

    def keep(index: int, png: bytes) -> None:
        pngs[index] = png
        finished(index, png)

    workers = _pool_workers()
    # Inside a worker process (someone's pool, or a spawned child importing its parent's
    # script) pools are not nested: the photos are aligned right there.
    pool_usable = _kept_workers is None or not _kept_workers.failed
    if len(jobs) > pool_threshold and workers > 1 and multiprocessing.parent_process() is None and pool_usable:
        _chip_pngs_in_pool(jobs, workers, keep)
    for index, name, data in jobs:
        if index not in pngs:
            keep(index, _chip_png_of_photo(name, data))
    return pngs


def _pool_workers() -> int:
    """Worker processes for a pool: the CPUs this process may use, at most MAX_POOL_WORKERS."""
    # The affinity mask, not os.cpu_count(): a container may see more cores than it may run on.
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(usable, MAX_POOL_WORKERS)


def _chip_pngs_in_pool(jobs: list[ChipJob], workers: int, keep: Callable[[int, bytes], None]) -> None:
    """Chips computed by ``workers`` spawned processes, each handed to ``keep`` as it arrives.

    Spawned, not forked: the parent may hold TensorFlow's threads, which a fork would copy
    in whatever state they are. The pool :func:`workers_kept` keeps is used (started now if
    it is not yet); any other is shut down on return. A failing pool is logged and left to
    the caller to finish.
    """
    batch_size = max(1, min(32, math.ceil(len(jobs) / (workers * 8))))  # small batches: even load, steady progress
    batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    kept = _kept_workers
    pool, futures, failed = None, [], False
    try:
        pool = kept.pool if kept is not None and kept.pool is not None else (
            concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
        if kept is not None:
            kept.pool = pool
        futures = [pool.submit(_chip_pngs_of_photos, batch) for batch in batches]
        for future in concurrent.futures.as_completed(futures):
            for index, png in future.result():
                keep(index, png)
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001 - any pool failure falls back to this process
        failed = True
        logger.warning("Aligning faces in %d worker processes failed (%s: %s); aligning the rest here.",
                       workers, type(error).__name__, error)
    finally:
        for future in futures:
            future.cancel()  # what is still waiting, when this ends early
        if kept is not None and failed:
            kept.pool, kept.failed = None, True
        if pool is not None and (kept is None or kept.pool is not pool):
            pool.shutdown(wait=False, cancel_futures=True)


def _chip_pngs_of_photos(jobs: Iterable[ChipJob]) -> list[tuple[int, bytes]]:
    """``(index, PNG chip)`` of each photo: one worker task."""
    return [(index, _chip_png_of_photo(name, data)) for index, name, data in jobs]


def _chip_png_of_photo(name: str, data: bytes) -> bytes:
    """The PNG chip of one encoded photo, computed (no cache)."""
    return encode_chip(chip_from_pixels(rgb_from_image(decode_bytes(data, name)[0])))
