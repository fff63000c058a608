"""The scan: every (anchor chunk, tile) once, on all cores, merged into exact counts and the sample.

Chunks run on a thread pool (NumPy releases the GIL) with BLAS held at one thread per
worker; random draws are seeded per (seed, chunk, tile) and merged in a fixed order.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from facetrip.mining.counting import count_tile, same_identity_counts, same_identity_pairs
from facetrip.mining.planning import SLICE_BYTES, anchor_pairs, chunk_plan
from facetrip.mining.problem import Problem, key_tile
from facetrip.mining.sampling import Sampling, Segment, count_qualifying, draw_from_segment

# The sample of keys the pass planner reads (facetrip.mining.planning), and when to take it.
_TAIL_SAMPLE_SIZE = 256
_MIN_KEYS_PER_ROW_TO_PLAN = 1 << 16  # shorter rows: planning (~1 ms a chunk) costs more than it saves

_MIN_KEYS_PER_EXTRA_WORKER = 1 << 22  # smaller scans run on the calling thread (threads cost ~1 ms)


@dataclass
class _Outcome:
    counts: dict
    triplets: np.ndarray


class _Scratch(threading.local):
    """Per-thread buffers: a (C, E) key tile, two cached tiles, and a bool mask."""

    def buffers(self, problem: Problem) -> tuple:
        shape = (problem.chunk_size, problem.tile_width)
        if getattr(self, "shape", None) != (shape, problem.dtype):
            self.shape = (shape, problem.dtype)
            self.tiles = [np.empty(shape, problem.dtype) for _ in range(3)]
            rows = min(problem.chunk_size, max(1, SLICE_BYTES // (problem.tile_width * problem.dtype.itemsize)))
            self.mask = np.empty((rows, problem.tile_width), bool)
        return self.tiles, self.mask


def _scan_chunk(problem: Problem, index: int, sampling: Optional[Sampling], tau: float,
                scratch: _Scratch) -> list:
    """Count (and sample) the anchors of chunk ``index`` against every tile; returns the segments."""
    offset = index * problem.chunk_size
    positives = problem.positives[offset: offset + problem.chunk_size]  # (C,)
    if not positives.any():
        return []
    tiles, mask = scratch.buffers(problem)
    pair_row, pair_position, pair_column = anchor_pairs(problem, offset, positives)
    # The anchors' own tiles first: they give the keys key_ap, hence the thresholds.
    pair_tile = pair_position // problem.tile_width
    own_tiles = np.unique(pair_tile)
    cached = {}
    positive_keys = np.empty(len(pair_row), problem.dtype)
    for tile in own_tiles:
        buffer = tiles[1 + len(cached)] if len(cached) < 2 else tiles[0]
        keys = key_tile(problem, index, tile, buffer)  # (C, E)
        chosen = pair_tile == tile
        positive_keys[chosen] = keys[pair_row[chosen], pair_position[chosen] - tile * problem.tile_width]
        if buffer is not tiles[0]:
            cached[tile] = keys
    sample = None
    if cached and problem.num_tiles * problem.tile_width >= _MIN_KEYS_PER_ROW_TO_PLAN:
        first = next(iter(cached.values()))
        sample = np.sort(first[:, :: max(1, problem.tile_width // _TAIL_SAMPLE_SIZE)], axis=1)  # (C, R) sorted
    chunk = chunk_plan(problem, index, positives, pair_row, pair_position, pair_column, positive_keys, sample)
    anchor_identities = np.unique(chunk.identities[positives > 0])
    segments = []
    drawn_keys = np.zeros(0)  # this chunk's draws so far: the final threshold is at most their max_triplets-th key
    for tile in range(problem.num_tiles):
        if len(anchor_identities) == 1 and problem.tile_owner[tile] == anchor_identities[0]:
            continue  # a tile of the anchors' own (large) identity: no negatives
        keys = cached[tile] if tile in cached else key_tile(problem, index, tile, tiles[0])  # (C, E)
        segment = Segment(index, tile)
        segment.hard, segment.hard_or_semi = count_tile(keys, chunk, mask)
        own_rows, own_columns = same_identity_pairs(problem, chunk, tile)
        own_hard, own_hard_or_semi = same_identity_counts(keys, chunk, own_rows, own_columns)
        segment.hard -= own_hard
        segment.hard_or_semi -= own_hard_or_semi
        segment.candidates = (chunk.sum_positives * int(problem.real_per_tile[tile])
                              - int(positives[own_rows].sum()))
        if sampling is not None:
            qualifying = count_qualifying(segment, sampling.categories)
            segment.drawn = draw_from_segment(problem, segment, keys, chunk, sampling, tau, qualifying)
            drawn_keys = np.concatenate([drawn_keys, segment.drawn[0]])
            if len(drawn_keys) >= sampling.max_triplets:
                drawn_keys = np.partition(drawn_keys, sampling.max_triplets - 1)[: sampling.max_triplets]
                tau = min(tau, float(drawn_keys.max()))
        segments.append(segment)
    return segments


def _doubling_groups(items: Sequence) -> Iterator[Sequence]:
    """Consecutive groups of 1, 1, 2, 4, 8, ... items."""
    start, size = 0, 1
    while start < len(items):
        yield items[start: start + size]
        start += size
        size = max(1, start)


_BLAS_CONTROLLER = []  # the threadpoolctl controller, found once (it scans the loaded libraries)


@contextmanager
def _single_threaded_blas():
    """BLAS on one thread per worker: the workers already use every core."""
    if not _BLAS_CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            _BLAS_CONTROLLER.append(None)
        else:
            _BLAS_CONTROLLER.append(ThreadpoolController())
    if _BLAS_CONTROLLER[0] is None:  # pragma: no cover
        yield
        return
    with _BLAS_CONTROLLER[0].limit(limits=1, user_api="blas"):
        yield


def _worker_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def scan_problem(problem: Problem, sampling: Optional[Sampling]) -> _Outcome:
    """Every (anchor chunk, tile) once: exact counts, and the sample when ``sampling`` is given."""
    total = _total_triplets(problem)
    if total == 0:
        return _Outcome({"easy": 0, "semi_hard": 0, "hard": 0, "total": 0}, np.zeros((0, 3), np.int64))
    scratch = _Scratch()
    chunks = [index for index in range(problem.num_chunks)
              if problem.positives[index * problem.chunk_size: (index + 1) * problem.chunk_size].any()]
    keys_to_compute = len(chunks) * problem.chunk_size * problem.num_tiles * problem.tile_width
    workers = min(_worker_count(), len(chunks)) if keys_to_compute >= _MIN_KEYS_PER_EXTRA_WORKER else 1
    hard = hard_or_semi = 0
    sample_keys, sample = np.zeros(0), np.zeros((0, 3), np.int64)
    tau = 1.0
    with _single_threaded_blas() if workers > 1 else nullcontext(), \
            ThreadPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        run = pool.map if pool is not None else map
        for group in _doubling_groups(chunks) if sampling is not None else [chunks]:
            drawn_keys, drawn = [sample_keys], [sample]
            for segments in run(lambda index, tau=tau: _scan_chunk(problem, index, sampling, tau, scratch), group):
                for segment in segments:
                    hard += segment.hard
                    hard_or_semi += segment.hard_or_semi
                    if segment.drawn is not None:
                        drawn_keys.append(segment.drawn[0])
                        drawn.append(segment.drawn[1])
            if sampling is not None:  # keep the max_triplets smallest keys seen so far
                sample_keys, sample = np.concatenate(drawn_keys), np.concatenate(drawn)
                order = np.argsort(sample_keys, kind="stable")[: sampling.max_triplets]
                sample_keys, sample = sample_keys[order], sample[order]
                if len(sample_keys) == sampling.max_triplets:
                    tau = float(sample_keys[-1])
    counts = {"easy": total - hard_or_semi, "semi_hard": hard_or_semi - hard, "hard": hard, "total": total}
    return _Outcome({key: int(value) for key, value in counts.items()}, sample)


def _total_triplets(problem: Problem) -> int:
    """``sum_a P_a (N - S_a)``: every valid (anchor, positive, negative) triplet."""
    positives = problem.positives
    return int(np.sum(positives * (problem.num_points - positives - 1)))
