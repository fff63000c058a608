"""Exact counts of one (anchor chunk, tile): keys above each threshold, less those of the anchors' own identity."""

from __future__ import annotations

import numpy as np

from facetrip.mining.planning import Chunk, count_at_most
from facetrip.mining.problem import Problem


def count_tile(keys: np.ndarray, chunk: Chunk, mask: np.ndarray) -> tuple[int, int]:
    """``(sum #{key > hard}, sum #{key > hard_or_semi})`` over all anchors and all points of a tile.

    Points of the anchor's own identity are included here and removed by
    :func:`same_identity_counts`; padding keys are -inf and never count.

    Args:
        keys: (C, E) keys of the chunk against one tile.
        chunk: thresholds and plan of the anchors.
        mask: bool scratch buffer with at least (rows per slice, E) room.
    """
    if chunk.sort_rows:
        return _count_tile_sorted(keys, chunk)
    width = keys.shape[1]
    counts = [0, 0]
    for part in chunk.slices:
        block = keys[part.start: part.stop]  # (S, E)
        hits_mask = mask[: part.stop - part.start]
        for kind in range(2):
            for thresholds in chunk.bulk[kind][: part.passes[kind], part.start: part.stop]:
                np.greater(block, thresholds[:, None], out=hits_mask)
                counts[kind] += np.count_nonzero(hits_mask)
        if part.has_low:  # keys at or below the largest low threshold are few; all others exceed every low one
            np.less_equal(block, chunk.low_bound[part.start: part.stop, None], out=hits_mask)
            hits = np.flatnonzero(hits_mask)
            rows, values = hits // width + part.start, block.reshape(-1)[hits][:, None]  # (F,), (F, 1)
            for kind in range(2):
                counts[kind] += part.low_count[kind] * width - np.count_nonzero(values <= chunk.low[kind][rows])
        if part.has_high:  # keys above the smallest high threshold are few; all others exceed none
            np.greater(block, chunk.high_bound[part.start: part.stop, None], out=hits_mask)
            hits = np.flatnonzero(hits_mask)
            rows, values = hits // width + part.start, block.reshape(-1)[hits][:, None]
            for kind in range(2):
                counts[kind] += np.count_nonzero(values > chunk.high[kind][rows])
    return counts[0], counts[1]


def _count_tile_sorted(keys: np.ndarray, chunk: Chunk) -> tuple[int, int]:
    """:func:`count_tile` for anchors with many thresholds: sort each row, binary-search them."""
    ordered = np.sort(keys, axis=1)  # (C, E)
    width = ordered.shape[1]
    counts = []
    for thresholds in (chunk.hard, chunk.hard_or_semi):
        above = width - count_at_most(ordered, thresholds)  # (C, P)
        counts.append(int(np.where(np.isnan(thresholds), 0, above).sum()))
    return counts[0], counts[1]


def same_identity_pairs(problem: Problem, chunk: Chunk, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) in the tile of points of each anchor's own identity (itself included)."""
    first = tile * problem.tile_width
    lo = np.maximum(chunk.identity_start, first)
    hi = np.minimum(chunk.identity_end, first + problem.tile_width)
    lengths = np.where(chunk.positives > 0, np.maximum(hi - lo, 0), 0)  # (C,)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    step = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, lo[rows] + step - first


def same_identity_counts(keys: np.ndarray, chunk: Chunk, rows: np.ndarray, columns: np.ndarray) -> tuple[int, int]:
    """What :func:`count_tile` counted for the points of the anchors' own identities."""
    if not len(rows):
        return 0, 0
    values = keys[rows, columns][:, None]  # (S, 1)
    return int(np.count_nonzero(values > chunk.hard[rows])), int(np.count_nonzero(values > chunk.hard_or_semi[rows]))
