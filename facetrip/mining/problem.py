"""The problem as the scan reads it: validated inputs, points packed into column tiles, keys and key thresholds.

A key decreases with the distance and comes out of one matrix product per (anchor
chunk, column tile); a triplet's category is decided by comparing ``key_an`` with the
thresholds of its (anchor, positive) pair (see :func:`key_thresholds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from facetrip.distances import cosine_distance_from_similarity, resolve_metric, unit_rows
from facetrip.mining.result import validated_margin

DEFAULT_CHUNK_SIZE = 128  # anchors per chunk
_CHUNK_VALUES = 1 << 22  # embedding values read at a time while packing (16 MiB of float32)
_TILE_WIDTH = 16384  # points per column tile: a (128, 16384) float32 key tile is 8 MiB


# ======================================================================= input checks


def non_negative_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


def _validated_embeddings(embeddings) -> np.ndarray:
    """(N, D) float32 array (float64 stays float64); raises on other shapes or non-finite values."""
    points = np.asarray(embeddings)
    if points.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (N, D) array, got shape {points.shape}.")
    if points.dtype.kind == "c":
        raise ValueError(f"embeddings must be real numbers, got dtype {points.dtype}.")
    if points.dtype.kind not in "fiub" and not np.issubdtype(points.dtype, np.floating):
        try:  # e.g. bfloat16 from ml_dtypes
            points = points.astype(np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"embeddings must be real numbers, got dtype {points.dtype}.") from None
    points = points.astype(np.float64 if points.dtype == np.float64 else np.float32, copy=False)
    for start, stop in _row_ranges(points):
        if not np.all(np.isfinite(points[start:stop])):
            raise ValueError("embeddings contain NaN or infinite values.")
    return points


def _row_ranges(points: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of row chunks of about ``_CHUNK_VALUES`` values: a memory-mapped array is read chunk by chunk."""
    rows = max(1, _CHUNK_VALUES // max(1, points.shape[1] if points.ndim == 2 else 1))
    return [(start, min(start + rows, len(points))) for start in range(0, len(points), rows)]


def _identities(labels, size: int) -> np.ndarray:
    """(N,) int64 identity index of every point from (N,) or (N, 1) labels."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,) or (N, 1), got {labels.shape}.")
    if len(labels) != size:
        raise ValueError(f"Got {len(labels)} labels for {size} embeddings.")
    try:
        _, identity = np.unique(labels, return_inverse=True)
    except TypeError:
        raise ValueError("labels must be mutually comparable (all numbers or all strings).") from None
    return identity.reshape(-1).astype(np.int64)


# ====================================================================== the data layout


@dataclass
class Problem:
    """Validated inputs in the layout the scan reads.

    Points are reordered into "positions": identities contiguous, largest first; an
    identity of at most ``tile_width`` images sits inside one column tile, a larger one
    fills whole tiles of its own. Padding positions hold no identity. Keys come from one
    matrix product per (anchor chunk, column tile): ``anchor_side[chunk] @ point_side[tile]``.
    """

    metric: str
    margin: float
    chunk_size: int  # anchors per chunk (C)
    tile_width: int  # points per column tile (E)
    num_chunks: int
    num_tiles: int
    num_points: int
    anchor_side: np.ndarray  # (num_chunks * C, D + 1): [x, 1] (cosine [u(x), 1]); [0, 1] on padding
    point_side: np.ndarray  # (num_tiles, D + 1, E): [x, -|x|^2 / 2] (cosine [u(x), 0]); [0, -inf] on padding
    half_square_norms: Optional[np.ndarray]  # (L,) |x|^2 / 2 as used in the keys; None for cosine
    original_index: np.ndarray  # (L,) int64 index into the embeddings, -1 on padding
    identity: np.ndarray  # (L,) int64, -1 on padding
    identity_start: np.ndarray  # (L,) first position of the point's identity
    identity_end: np.ndarray  # (L,) one past its last position
    positives: np.ndarray  # (L,) positives of the point as an anchor (0 on padding)
    tile_owner: np.ndarray  # (num_tiles,) identity filling the tile when larger than a tile, else -1
    real_per_tile: np.ndarray  # (num_tiles,) real points in each tile

    @classmethod
    def create(cls, embeddings, labels, margin, metric, chunk_size) -> "Problem":
        metric = resolve_metric(metric)
        margin = validated_margin(margin)
        points = _validated_embeddings(embeddings)
        num_points, dimension = points.shape
        identity = _identities(labels, num_points)
        identity_sizes = np.bincount(identity) if num_points else np.zeros(0, np.int64)  # (num_identities,)
        tile_width = _tile_width(num_points, identity_sizes)
        starts, num_positions = _pack_identities(identity_sizes, tile_width)
        if chunk_size is None:
            chunk = min(DEFAULT_CHUNK_SIZE, num_positions)
        else:
            chunk = non_negative_int(chunk_size, "chunk_size")
            if chunk == 0:
                raise ValueError("chunk_size must be >= 1.")
            chunk = min(chunk, num_positions)
        num_chunks = -(-num_positions // chunk)
        length = num_chunks * chunk  # every per-position array covers all chunk rows
        position = starts[identity] + _rank_within_groups(identity)  # (N,)

        def scatter(values, fill, dtype):
            out = np.full(length, fill, dtype)
            out[position] = values
            return out

        identity_start = scatter(starts[identity], 0, np.int64)
        identity_end = scatter(starts[identity] + identity_sizes[identity], 0, np.int64)
        num_tiles = num_positions // tile_width
        tile_owner = np.full(num_tiles, -1, np.int64)
        for big in np.flatnonzero(identity_sizes > tile_width):
            tile_owner[starts[big] // tile_width: -(-(starts[big] + identity_sizes[big]) // tile_width)] = big

        dtype = points.dtype
        anchor_side = np.zeros((length, dimension + 1), dtype)  # (L, D + 1)
        anchor_side[:, dimension] = 1.0
        point_side = np.zeros((dimension + 1, num_positions), dtype)  # (D + 1, positions)
        point_side[dimension] = -np.inf
        half = None if metric == "cosine" else np.empty(num_points, dtype)  # (N,) |x|^2 / 2
        for start, stop in _row_ranges(points):  # a chunk of rows at a time: the points may be memory-mapped
            block, block_positions = np.asarray(points[start:stop]), position[start:stop]  # (n, D), (n,)
            if metric == "cosine":
                block = unit_rows(block)  # (n, D) u(x) of facetrip.distances; zero rows stay zero
                point_side[dimension, block_positions] = 0.0
            else:
                half[start:stop] = np.einsum("nd,nd->n", block, block, dtype=np.float64) / 2  # (n,)
                point_side[dimension, block_positions] = -half[start:stop]
            anchor_side[block_positions, :dimension] = block
            point_side[:dimension, block_positions] = block.T
        half_square_norms = None if half is None else scatter(half, np.inf, dtype)
        point_side = np.ascontiguousarray(point_side.reshape(dimension + 1, num_tiles, tile_width).transpose(1, 0, 2))
        return cls(
            metric=metric, margin=margin, chunk_size=chunk, tile_width=tile_width, num_chunks=num_chunks,
            num_tiles=num_tiles, num_points=num_points, anchor_side=anchor_side, point_side=point_side,
            half_square_norms=half_square_norms, original_index=scatter(np.arange(num_points), -1, np.int64),
            identity=scatter(identity, -1, np.int64), identity_start=identity_start, identity_end=identity_end,
            positives=scatter(identity_sizes[identity] - 1, 0, np.int64), tile_owner=tile_owner,
            real_per_tile=np.bincount(position // tile_width, minlength=num_tiles),
        )

    @property
    def dtype(self):
        return self.point_side.dtype


def _tile_width(num_points: int, identity_sizes: np.ndarray) -> int:
    """Points per column tile: at most about ``_TILE_WIDTH``, with little padding.

    ``ceil(N / tiles)`` plus room for the largest identity that fits in a tile (so that
    packing whole identities rarely needs an extra tile); wide tiles are rounded up to
    a multiple of 16 so that rows of keys stay 64-byte aligned (faster BLAS stores).
    """
    if num_points <= _TILE_WIDTH:
        return max(1, num_points)
    num_tiles = -(-num_points // _TILE_WIDTH)
    width = -(-num_points // num_tiles)
    fitting = identity_sizes[identity_sizes <= width]
    width += int(fitting.max()) - 1 if len(fitting) else 0
    return -(-width // 16) * 16 if width >= 1024 else width


def _pack_identities(identity_sizes: np.ndarray, tile_width: int) -> tuple[np.ndarray, int]:
    """First position of every identity, and the padded number of positions.

    Identities go largest first; one that does not fit in what is left of the current
    tile starts the next tile, and one larger than a tile fills whole tiles alone.

    Returns:
        (starts (num_identities,) int64, num_positions), a multiple of ``tile_width``.
    """
    starts = np.zeros(len(identity_sizes), np.int64)
    order = np.lexsort((np.arange(len(identity_sizes)), -identity_sizes))
    cursor = 0
    for identity in order:
        size = int(identity_sizes[identity])
        used = cursor % tile_width
        if used and size > tile_width - used:
            cursor += tile_width - used
        starts[identity] = cursor
        cursor += size
        if size > tile_width and cursor % tile_width:
            cursor += tile_width - cursor % tile_width
    return starts, max(tile_width, -(-cursor // tile_width) * tile_width)


def _rank_within_groups(groups: np.ndarray) -> np.ndarray:
    """(N,) 0, 1, 2, ... within each group, in the original order of the points."""
    order = np.argsort(groups, kind="stable")  # (N,)
    sorted_groups = groups[order]
    first = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]] if len(groups) else np.zeros(0, bool)
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(groups)), 0))  # (N,)
    ranks = np.empty(len(groups), np.int64)
    ranks[order] = np.arange(len(groups)) - group_start
    return ranks


def key_tile(problem: Problem, chunk: int, tile: int, out: np.ndarray) -> np.ndarray:
    """(C, E) keys of the anchors of ``chunk`` against the points of ``tile``.

    Always the same product shape, so a key is a function of its two points only
    (BLAS computes an entry the same way wherever it sits): one pair, one key.
    """
    size = problem.chunk_size
    anchors = problem.anchor_side[chunk * size: (chunk + 1) * size]  # (C, D + 1)
    return np.matmul(anchors, problem.point_side[tile], out=out)  # (C, E)


# ====================================================================== thresholds


def _largest_at_most(values: np.ndarray, dtype) -> np.ndarray:
    """The largest ``dtype`` number <= each float64 value, so ``key > x  <=>  key > result``."""
    if np.dtype(dtype) == np.float64:
        return values
    with np.errstate(invalid="ignore", over="ignore"):
        rounded = values.astype(dtype)
        too_big = rounded.astype(np.float64) > values
    return np.where(too_big, np.nextafter(rounded, np.array(-np.inf, dtype)), rounded)


def key_thresholds(problem: Problem, positive_keys: np.ndarray, anchor_half_norms: Optional[np.ndarray]):
    """Key thresholds of (anchor, positive) pairs: ``hard`` and ``hard or semi-hard``.

    The triplet (a, p, n) is hard iff ``key_an > hard`` and hard or semi-hard iff
    ``key_an > hard_or_semi`` (so semi-hard iff in between, easy iff not above
    ``hard_or_semi``). With ``h = |x_a|^2 / 2`` and ``s = key_ap``:

    - euclidean / squared: ``hard = s`` (``+inf`` when ``d_ap = 0``: nothing is closer);
      ``hard_or_semi = h - T^2 / 2`` with ``T = d_ap + m`` (euclidean) or
      ``h - T / 2`` with ``T = d_ap^2 + m`` (squared);
    - cosine: ``hard = max(s, -1)`` (``+inf`` when ``s >= 1``); ``hard_or_semi = 1 - T``
      with ``T = clip(1 - s, 0, 2) + m`` (``-inf`` when ``T > 2``: every negative).

    The float64 bound is rounded down to the key precision; ``T <= 0`` gives ``+inf``.

    Args:
        problem: the problem (metric, margin, dtype).
        positive_keys: (M,) keys ``key_ap``.
        anchor_half_norms: (M,) ``|x_a|^2 / 2`` (None for cosine).

    Returns:
        (hard, hard_or_semi), two (M,) arrays of the key dtype.
    """
    s = positive_keys.astype(np.float64)
    margin = problem.margin
    with np.errstate(invalid="ignore", over="ignore"):
        if problem.metric == "cosine":
            hard = np.where(s >= 1.0, np.inf, np.maximum(s, -1.0))
            bound = cosine_distance_from_similarity(s) + margin  # d_ap + m
            hard_or_semi = np.where(bound > 2.0, -np.inf, 1.0 - bound)
        else:
            h = anchor_half_norms.astype(np.float64)
            half_square_distance = np.maximum(h - s, 0.0)  # d_ap^2 / 2
            hard = np.where(half_square_distance > 0, s, np.inf)
            if problem.metric == "euclidean":
                bound = np.sqrt(2.0 * half_square_distance) + margin  # d_ap + m
                hard_or_semi = h - bound * bound / 2.0
            else:
                bound = 2.0 * half_square_distance + margin  # d_ap^2 + m
                hard_or_semi = h - bound / 2.0
        hard_or_semi = np.where(bound > 0, hard_or_semi, np.inf)
    hard = _largest_at_most(hard, problem.dtype)
    hard_or_semi = _largest_at_most(hard_or_semi, problem.dtype)
    if margin == 0:
        return hard, hard.copy()
    return hard, np.minimum(hard_or_semi, hard)  # hard triplets are always among "hard or semi-hard"
