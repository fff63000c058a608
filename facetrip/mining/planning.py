"""Anchor chunks: their (anchor, positive) pairs, thresholds, and the plan of compare passes over a tile.

The plan (which thresholds get a compare pass of their own, which share a tail pass,
when to sort rows instead) comes from a cost model fed with a sample of keys; it
changes only the speed, never the counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from facetrip.mining.problem import Problem, key_thresholds

SLICE_BYTES = 1 << 20  # keys compared per pass: 16 rows x 16384 float32, fits in L2

# Pass planning (see _plan_passes), in units of one compare pass over the keys.
_TAIL_PASS_COST = 4.0
_EXTRACTED_KEY_COST = 250.0
_MAX_PLANNED_POSITIVES = 32
_MAX_BULK_PASSES = 24  # more bulk thresholds per chunk: sort each row and binary-search instead


@dataclass
class _Slice:
    """Rows [start, stop) of a chunk, counted together (32 rows x 8192 keys: 1 MiB, in L2)."""

    start: int
    stop: int
    passes: tuple  # (hard, hard_or_semi) bulk passes these rows need
    low_count: tuple  # (hard, hard_or_semi) low-tail thresholds of these rows
    has_low: bool
    has_high: bool


@dataclass
class Chunk:
    """The anchors of one chunk: thresholds, (anchor, positive) pairs, and the counting plan.

    Threshold tables are (C, P) with NaN where an anchor has fewer positives (NaN
    compares false both ways, so it never counts).
    """

    index: int
    hard: np.ndarray  # (C, P) key thresholds per (anchor, positive)
    hard_or_semi: np.ndarray  # (C, P)
    positive_index: np.ndarray  # (C, P) original index of the positive, -1 where none
    pair_index: np.ndarray  # (C, P) index of the (anchor, positive) pair, -1 where none
    pair_row: np.ndarray  # (pairs,) anchor row of each pair
    pair_column: np.ndarray  # (pairs,) its column in the (C, P) tables
    positives: np.ndarray  # (C,) positives of each anchor row
    identities: np.ndarray  # (C,) identity of each row (-1 on padding)
    identity_start: np.ndarray  # (C,)
    identity_end: np.ndarray  # (C,)
    bulk: tuple  # (hard (kh, C), hard_or_semi (ks, C)): one compare pass per row of these
    low_bound: np.ndarray  # (C,) largest low-tail threshold of each anchor (NaN: none)
    low: tuple  # (hard, hard_or_semi) low-tail thresholds, (C, *)
    high_bound: np.ndarray  # (C,) smallest high-tail threshold (NaN: none)
    high: tuple  # (hard, hard_or_semi) high-tail thresholds, (C, *)
    slices: list
    sort_rows: bool  # too many bulk passes: sort each row and binary-search instead

    @property
    def sum_positives(self) -> int:
        return int(self.positives.sum())


def anchor_pairs(problem: Problem, offset: int, positives: np.ndarray):
    """Every (anchor, positive) pair of the chunk at ``offset``: (row, positive position, column k)."""
    rows = np.arange(len(positives))
    group_size = positives + (positives > 0)  # the anchor's identity, anchor included
    pair_row = np.repeat(rows, group_size)
    step = np.arange(len(pair_row)) - np.repeat(np.cumsum(group_size) - group_size, group_size)
    pair_position = problem.identity_start[offset + pair_row] + step
    is_pair = pair_position != offset + pair_row
    pair_row, pair_position, step = pair_row[is_pair], pair_position[is_pair], step[is_pair]
    return pair_row, pair_position, step - (pair_position > offset + pair_row)  # skip the anchor's own column


def chunk_plan(problem: Problem, index: int, positives: np.ndarray, pair_row, pair_position, pair_column,
                positive_keys: np.ndarray, sample_keys: Optional[np.ndarray]) -> Chunk:
    """Thresholds and counting plan of the anchors of chunk ``index``."""
    size = problem.chunk_size
    offset = index * size
    anchor_norms = None if problem.half_square_norms is None else problem.half_square_norms[offset + pair_row]
    hard_values, semi_values = key_thresholds(problem, positive_keys, anchor_norms)
    width = int(positives.max())

    def table(values, fill, dtype):
        out = np.full((size, width), fill, dtype)
        out[pair_row, pair_column] = values
        return out

    hard = table(hard_values, np.nan, problem.dtype)
    hard_or_semi = table(semi_values, np.nan, problem.dtype)
    rows = slice(offset, offset + size)
    return Chunk(
        index=index, hard=hard, hard_or_semi=hard_or_semi,
        positive_index=table(problem.original_index[pair_position], -1, np.int64),
        pair_index=table(np.arange(len(pair_row)), -1, np.int64), pair_row=pair_row, pair_column=pair_column,
        positives=positives, identities=np.where(positives > 0, problem.identity[rows], -1),
        identity_start=problem.identity_start[rows], identity_end=problem.identity_end[rows],
        **_plan_passes(hard, hard_or_semi, sample_keys, problem.tile_width),
    )


def _plan_passes(hard: np.ndarray, hard_or_semi: np.ndarray, sample_keys: Optional[np.ndarray],
                 tile_width: int) -> dict:
    """Split each anchor's thresholds into a low tail, a bulk and a high tail.

    A bulk threshold costs one compare pass over the tile; all low-tail thresholds of
    a row share one pass that extracts the few keys at or below the largest of them
    (every other key exceeds them all), and likewise for the high tail. Per kind
    (hard, hard-or-semi) the number of bulk passes ``b`` is chosen to minimise
    ``b + tail passes x _TAIL_PASS_COST + extracted fraction x _EXTRACTED_KEY_COST``
    (in units of one pass), with each row's bulk the window of ``b`` of its thresholds
    (ordered by the fraction of sampled keys at or below them) that leaves the fewest
    keys to extract. The plan only affects speed: every split counts exactly.

    Args:
        hard, hard_or_semi: (C, P) thresholds, NaN-padded.
        sample_keys: (C, R) sorted keys of the anchors against a sample of points, or None.
        tile_width: keys per row of a tile.
    """
    thresholds = (hard, hard_or_semi)
    present = [~np.isnan(values) for values in thresholds]
    classes = []  # per kind: (C, P) int8, 0 low / 1 bulk / 2 high / -1 absent
    for values, exists in zip(thresholds, present):
        if sample_keys is None or values.shape[1] > _MAX_PLANNED_POSITIVES:
            classes.append(np.where(exists, 1, -1).astype(np.int8))
        else:
            classes.append(_split_tails(values, exists, sample_keys))
    low = [kind == 0 for kind in classes]
    bulk = [kind == 1 for kind in classes]
    high = [kind == 2 for kind in classes]
    bulk_tables = tuple(np.ascontiguousarray(_left_pack(values, keep).T) for values, keep in zip(thresholds, bulk))
    low_tables = tuple(_left_pack(values, keep) for values, keep in zip(thresholds, low))
    high_tables = tuple(_left_pack(values, keep) for values, keep in zip(thresholds, high))
    with np.errstate(invalid="ignore"):
        low_bound = np.fmax.reduce(np.concatenate(low_tables + (np.full((len(hard), 1), np.nan, hard.dtype),), 1), 1)
        high_bound = np.fmin.reduce(np.concatenate(high_tables + (np.full((len(hard), 1), np.nan, hard.dtype),), 1), 1)
    rows_per_slice = max(1, SLICE_BYTES // (tile_width * hard.dtype.itemsize))
    slices = []
    for start in range(0, len(hard), rows_per_slice):
        part = slice(start, start + rows_per_slice)
        slices.append(_Slice(
            start=start, stop=min(start + rows_per_slice, len(hard)),
            passes=tuple(int(keep[part].sum(axis=1).max()) for keep in bulk),
            low_count=tuple(int(keep[part].sum()) for keep in low),
            has_low=bool(np.any(~np.isnan(low_bound[part]))), has_high=bool(np.any(~np.isnan(high_bound[part]))),
        ))
    return {
        "bulk": bulk_tables, "low_bound": low_bound, "low": low_tables, "high_bound": high_bound,
        "high": high_tables, "slices": slices,
        "sort_rows": sum(len(table) for table in bulk_tables) > _MAX_BULK_PASSES,
    }


def _split_tails(values: np.ndarray, exists: np.ndarray, sample_keys: np.ndarray) -> np.ndarray:
    """Classes (C, P): 0 low tail, 1 bulk, 2 high tail, -1 no threshold (see :func:`_plan_passes`)."""
    rows, width = values.shape
    at_or_below = count_at_most(sample_keys, values) / sample_keys.shape[1]  # (C, P) fraction of keys <= threshold
    order = np.argsort(np.where(exists, at_or_below, np.inf), axis=1, kind="stable")  # present ones first
    ordered = np.take_along_axis(np.where(exists, at_or_below, 1.0), order, axis=1)  # (C, P)
    count = exists.sum(axis=1)  # (C,) thresholds per row
    # padded[:, i] = fraction at or below the i-th ordered threshold, 1-based; 0 before the first.
    padded = np.concatenate([np.zeros((rows, 1)), ordered, np.ones((rows, 1))], axis=1)  # (C, P + 2)
    starts = np.arange(width + 1)  # (S,) candidate first bulk threshold of a row
    passes = np.arange(width + 1)[:, None]  # (B, 1) candidate numbers of bulk passes
    ends = starts[None, :] + passes  # (B, S) one past the last bulk threshold
    below = padded[:, starts]  # (C, S) keys to extract for the low tail
    above = 1.0 - padded[:, np.minimum(ends + 1, width + 1)]  # (C, B, S) keys to extract for the high tail
    above = np.where(ends[None] < count[:, None, None], above, 0.0)
    extracted = np.where(starts[None, None, :] <= np.maximum(count[:, None, None] - passes[None], 0),
                         below[:, None, :] + above, np.inf)  # (C, B, S)
    start = extracted.argmin(axis=2)  # (C, B) best window start per row and pass count
    fraction = np.take_along_axis(extracted, start[..., None], axis=2)[..., 0]  # (C, B)
    has_low = (start > 0).any(axis=0)  # (B,)
    has_high = (start + passes[:, 0][None, :] < count[:, None]).any(axis=0)  # (B,)
    cost = passes[:, 0] + _TAIL_PASS_COST * (has_low + has_high) + _EXTRACTED_KEY_COST * fraction.mean(axis=0)
    best = int(np.argmin(cost))
    start = start[:, best]
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(width), (rows, width)), axis=1)  # (C, P)
    classes = np.where(rank < start[:, None], 0, np.where(rank < start[:, None] + best, 1, 2))
    return np.where(exists, classes, -1).astype(np.int8)


def _left_pack(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(C, K) array of each row's kept values first, NaN after; K = most kept in a row."""
    width = int(keep.sum(axis=1).max()) if keep.size else 0
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]  # kept columns first
    packed = np.take_along_axis(values, order, axis=1)  # (C, K)
    packed[~np.take_along_axis(keep, order, axis=1)] = np.nan
    return np.ascontiguousarray(packed)


def count_at_most(ordered: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(C, P) number of keys <= each threshold, by binary search in the sorted rows ``ordered`` (C, E)."""
    width = ordered.shape[1]
    low = np.zeros(thresholds.shape, np.int64)  # ends as the first index whose key is > threshold
    high = np.full(thresholds.shape, width, np.int64)
    for _ in range(int(np.ceil(np.log2(width + 1)))):
        middle = (low + high) // 2
        at_most = np.take_along_axis(ordered, np.minimum(middle, width - 1), axis=1) <= thresholds  # (C, P)
        active = low < high
        low = np.where(active & at_most, middle + 1, low)
        high = np.where(active & ~at_most, middle, high)
    return low
