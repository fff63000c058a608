"""Offline triplet mining over a whole split: exact category counts and a uniform sample.

For a valid triplet (a, p, n) (``a != p``, ``label[a] == label[p]``, ``label[n] != label[a]``)
with distances ``d_ap``, ``d_an`` under the chosen metric and a margin ``m >= 0``:

- hard:       ``d_an < d_ap``
- semi_hard:  ``d_ap <= d_an < d_ap + m``
- easy:       ``d_an >= d_ap + m``

(FaceNet's three categories.) :func:`count_triplets` counts all valid triplets exactly;
:func:`mine_triplets` also draws up to ``max_triplets`` of the chosen categories,
uniformly at random without replacement.

Distances (the definitions of :mod:`facetrip.losses.distances`):

- ``euclidean``: ``||x_a - x_n||``; ``squared``: ``||x_a - x_n||^2``;
- ``cosine``: ``1 - cos(x_a, x_n)``, clipped to [0, 2] (a zero vector has cosine 0).

Keys, and what "exact" means
----------------------------
Each anchor a compares points through a *key* that decreases with the distance and
comes straight out of one matrix product: ``key_an = x_a . x_n - |x_n|^2 / 2``
(euclidean and squared, with ``d_an^2 = 2 max(|x_a|^2 / 2 - key_an, 0)``) or
``key_an = cos(x_a, x_n)`` (cosine, ``d_an = clip(1 - key_an, 0, 2)``), in float32
(float64 for float64 embeddings; float16 is widened). Categories are decided exactly
on these computed keys: hard is ``key_an > key_ap``; the bound ``d_ap + m`` is formed
in float64 and rounded down to the key's precision, so ``key_an > bound`` holds
exactly when ``d_an < d_ap + m``. All keys come from products of one fixed shape, so
a pair of points has one key wherever it is needed: equal distances compare equal and
ties fall on the boundaries as defined above. (Another ``chunk_size`` means another
product shape, whose keys may differ in the last bit: that can only move a triplet
lying within float rounding of a boundary.)

Algorithm: no N x N matrix, no N x N x N tensor
-----------------------------------------------
Points are reordered: identities contiguous, largest first, every identity of at
most ``_TILE_WIDTH`` (16384) images inside one column tile of about that many points.
For each chunk of ``chunk_size`` anchors and each tile, one matrix product gives the
(C, E) keys. An anchor with P positives has 2P thresholds (hard, and hard or
semi-hard); its hard triplets in a tile number ``sum_k #{n: key_an > hard_ak}``: one
vectorised compare-and-count pass per threshold, over slices of 16 rows x 16384 keys
(1 MiB, in L2; long rows matter: NumPy's per-row overhead of a broadcast compare is
large). Thresholds in a tail of the anchor's key distribution instead share one pass
that extracts the few keys beyond them; a cost model fed with a sample of keys decides
which (see :func:`_plan_passes`). Anchors with more than 24 bulk thresholds (large
identities) sort each row and binary-search. Points of the anchor's own identity are
counted like the others and subtracted afterwards. Chunks run on all cores (NumPy
releases the GIL; BLAS is held at one thread per worker). Cost: about 6 ns per
(anchor, point) pair and core, half of it the product, on a 2.1 GHz Xeon (Sapphire
Rapids); N = 100,000 takes about 40 s on 2 cores (``scripts/bench_mining.py``).
Memory: the points twice (with one extra column), the thresholds (2 per anchor-positive
pair), and three (C, E) key buffers per worker (8 MiB each at the defaults).

Sampling
--------
``mine_triplets`` returns a uniformly random subset of ``min(max_triplets, Q)`` of the
``Q`` qualifying triplets, exactly (every subset of that size is equally likely), in
random order: conceptually every qualifying triplet gets an independent uniform key
and the ``max_triplets`` smallest keys win. The keys are never drawn one per triplet.
Let ``tau`` be an upper bound on the final ``max_triplets``-th smallest key (1 at
first). In a (chunk, tile) with ``q`` qualifying triplets, the number of keys below
``tau`` is Binomial(q, tau); that many distinct qualifying triplets are drawn
uniformly (by rejection, or by listing them all when they are rare) and get keys
uniform on [0, tau) (at most ``max_triplets`` of them, with the law of the smallest
order statistics). ``tau`` shrinks to the ``max_triplets``-th smallest key drawn so
far: within a chunk after each tile, and globally between groups of 1, 1, 2, 4, ...
chunks. Everything random is seeded by (``seed``, chunk, tile), so the result depends
on the inputs, ``seed`` and ``chunk_size`` only, not on thread timing.
"""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

TRIPLET_CATEGORIES = ("easy", "semi_hard", "hard")
COUNT_KEYS = TRIPLET_CATEGORIES + ("total",)
METRICS = ("euclidean", "squared", "cosine")  # as facetrip.losses.distances.METRICS (no TensorFlow here)
DEFAULT_CATEGORIES = ("hard", "semi_hard")

DEFAULT_CHUNK_SIZE = 128  # anchors per chunk
FILE_FORMAT = "facetrip-triplets"
FILE_VERSION = 1

_TILE_WIDTH = 16384  # points per column tile: a (128, 16384) float32 key tile is 8 MiB
_SLICE_BYTES = 1 << 20  # keys compared per pass: 16 rows x 16384 float32, fits in L2
# Pass planning (see _plan_passes), in units of one compare pass over the keys.
_TAIL_SAMPLE_SIZE = 256
_TAIL_PASS_COST = 4.0
_EXTRACTED_KEY_COST = 250.0
_MAX_PLANNED_POSITIVES = 32
_MIN_KEYS_PER_ROW_TO_PLAN = 1 << 16  # shorter rows: planning (~1 ms a chunk) costs more than it saves
_MAX_BULK_PASSES = 24  # more bulk thresholds per chunk: sort each row and binary-search instead
_MIN_KEYS_PER_EXTRA_WORKER = 1 << 22  # smaller scans run on the calling thread (threads cost ~1 ms)
# Rough per-item costs (seconds) that choose between rejection sampling and listing.
_SECONDS_PER_REJECTION_DRAW = 1e-7
_SECONDS_PER_COMPARED_KEY = 4e-10
_SECONDS_PER_LISTED_TRIPLET = 1e-8

Labels = Union[np.ndarray, Sequence]


@dataclass(frozen=True)
class MiningResult:
    """What :func:`mine_triplets` found.

    Attributes:
        counts: exact numbers of ``easy``, ``semi_hard``, ``hard`` and ``total`` valid triplets.
        triplets: (M, 3) int64 (anchor, positive, negative) indices into the embeddings,
            M <= max_triplets, in random order.
        margin: the margin of the categories.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``.
        categories: the categories the triplets were drawn from.
        file_names: optional (N,) names of the embedded images (set by :func:`load_triplets`
            when the file holds them).
        source: optional name of the data source.
    """

    counts: dict
    triplets: np.ndarray = field(compare=False)
    margin: float
    metric: str
    categories: tuple = DEFAULT_CATEGORIES
    file_names: Optional[np.ndarray] = field(default=None, compare=False)
    source: Optional[str] = None


# ============================================================================ public API


def count_triplets(embeddings, labels: Labels, margin: float, metric: str = "euclidean",
                   chunk_size: Optional[int] = None) -> dict:
    """Exact numbers of easy, semi-hard and hard triplets among all valid triplets.

    A valid triplet (a, p, n) has ``a != p``, ``label[a] == label[p]``, ``label[n] != label[a]``;
    with ``d_ap``, ``d_an`` its distances it is hard if ``d_an < d_ap``, semi-hard if
    ``d_ap <= d_an < d_ap + margin``, easy if ``d_an >= d_ap + margin``. There are
    ``total = sum_a P_a (N - S_a)`` valid triplets (P_a positives of a, S_a images of
    its identity).

    Args:
        embeddings: (N, D) float array (float16 and other dtypes are computed in float32,
            float64 in float64).
        labels: (N,) or (N, 1) identity labels, integers or strings.
        margin: number >= 0.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``.
        chunk_size: anchors per chunk (keys are computed (chunk_size, ~16384) at a
            time); default 128.

    Returns:
        ``{"easy": int, "semi_hard": int, "hard": int, "total": int}``.

    Example:
        Points on a line; anchor 0 at 0 and its positive at 1, negatives at 0.5 and 3.
        From 0: 0.5 is hard (0.5 < 1), 3 is easy (3 >= 1 + 1.5). From 1: 0.5 is hard,
        3 is semi-hard (1 <= 2 < 2.5).

        >>> count_triplets([[0.0], [1.0], [0.5], [3.0]], [0, 0, 1, 2], margin=1.5)
        {'easy': 1, 'semi_hard': 1, 'hard': 2, 'total': 4}
    """
    problem = _Problem.create(embeddings, labels, margin, metric, chunk_size)
    return _scan(problem, sampling=None).counts


def mine_triplets(embeddings, labels: Labels, margin: float, metric: str = "euclidean",
                  categories: Union[str, Sequence[str]] = DEFAULT_CATEGORIES, max_triplets: int = 100_000,
                  seed: int = 0, chunk_size: Optional[int] = None) -> MiningResult:
    """Count all triplets (as :func:`count_triplets`) and draw up to ``max_triplets`` of ``categories``.

    The triplets are a uniformly random subset of size ``min(max_triplets, Q)`` of the Q
    valid triplets whose category is in ``categories`` (exact sampling without
    replacement: every such subset is equally likely), returned in random order. The
    same inputs, ``seed`` and ``chunk_size`` give the same triplets.

    Args:
        embeddings: (N, D) float array.
        labels: (N,) or (N, 1) identity labels, integers or strings.
        margin: number >= 0.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``.
        categories: a subset of ``TRIPLET_CATEGORIES`` (or one name).
        max_triplets: most triplets to return (>= 0).
        seed: non-negative integer seed of the selection.
        chunk_size: anchors per chunk; default 128.

    Returns:
        :class:`MiningResult` with the exact counts and a (M, 3) int64 array of
        (anchor, positive, negative) indices into ``embeddings``.
    """
    problem = _Problem.create(embeddings, labels, margin, metric, chunk_size)
    categories = _resolve_categories(categories)
    max_triplets = _non_negative_int(max_triplets, "max_triplets")
    seed = _non_negative_int(seed, "seed")
    sampling = _Sampling(categories, max_triplets, seed) if max_triplets else None
    outcome = _scan(problem, sampling)
    return MiningResult(counts=outcome.counts, triplets=outcome.triplets, margin=problem.margin,
                        metric=problem.metric, categories=categories)


def save_triplets(path, result: MiningResult, file_names: Optional[Sequence[str]] = None,
                  source: Optional[str] = None) -> Path:
    """Write ``result`` to an ``.npz`` file (atomically), optionally with the image names.

    Args:
        path: target file; ``.npz`` is the usual suffix.
        result: a :class:`MiningResult`.
        file_names: optional (N,) names of the embedded images, so that indices can be
            read back as files (default ``result.file_names``).
        source: optional name of the data source (default ``result.source``).

    Returns:
        The path written.
    """
    from facetrip.runs import atomic_write_bytes

    path = Path(path)
    triplets = _validated_triplets(np.asarray(result.triplets), "result.triplets")
    counts = _validated_counts({key: result.counts[key] for key in COUNT_KEYS}, "result.counts")
    file_names = result.file_names if file_names is None else file_names
    source = result.source if source is None else source
    arrays = {
        "format": np.array(FILE_FORMAT),
        "version": np.array(FILE_VERSION),
        "triplets": triplets,
        "count_names": np.array(COUNT_KEYS),
        "count_values": np.array([counts[key] for key in COUNT_KEYS], np.int64),
        "margin": np.array(float(result.margin)),
        "metric": np.array(_resolve_metric(result.metric)),
        "categories": np.array(_resolve_categories(result.categories)),
    }
    if file_names is not None:
        arrays["file_names"] = np.asarray([str(name) for name in file_names])
        if len(triplets) and triplets.max() >= len(arrays["file_names"]):
            raise ValueError(f"file_names has {len(arrays['file_names'])} entries but the triplets index "
                             f"up to {triplets.max()}: pass the names of all embedded images.")
    if source is not None:
        arrays["source"] = np.array(str(source))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_triplets(path) -> MiningResult:
    """Read a file written by :func:`save_triplets`.

    Args:
        path: the ``.npz`` file.

    Returns:
        The :class:`MiningResult` (with ``file_names`` and ``source`` when saved).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a readable, consistent facetrip triplets file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No triplets file at {path}.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:  # zipfile, pickle and format errors all mean "not ours"
        raise ValueError(f"{path} is not a readable triplets file (.npz written by save_triplets): "
                         f"{type(error).__name__}: {error}".replace("\n", " ")) from error
    try:
        return _result_from_arrays(arrays)
    except (KeyError, TypeError, ValueError) as error:
        detail = f"missing entry {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{path} is not a valid facetrip triplets file: {detail}".replace("\n", " ")) from error


# ======================================================================= input checks


def _resolve_metric(metric: str) -> str:
    name = str(metric).lower()
    if name not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}: choose one of {', '.join(METRICS)}.")
    return name


def _resolve_categories(categories) -> tuple:
    """The chosen categories in ``TRIPLET_CATEGORIES`` order, e.g. ``("semi_hard", "hard")``."""
    chosen = (categories,) if isinstance(categories, str) else tuple(categories)
    unknown = [name for name in chosen if name not in TRIPLET_CATEGORIES]
    if unknown or not chosen:
        raise ValueError(f"categories must be a non-empty subset of {TRIPLET_CATEGORIES}, got {categories!r}.")
    return tuple(name for name in TRIPLET_CATEGORIES if name in chosen)


def _non_negative_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


def _validated_margin(margin) -> float:
    try:
        value = float(margin)
    except (TypeError, ValueError):
        raise ValueError(f"margin must be a number >= 0, got {margin!r}.") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}.")
    return value


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
    if not np.all(np.isfinite(points)):
        raise ValueError("embeddings contain NaN or infinite values.")
    return points


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
class _Problem:
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
    anchor_side: np.ndarray  # (num_chunks * C, D + 1): [x, 1] (cosine [x / |x|, 1]); [0, 1] on padding
    point_side: np.ndarray  # (num_tiles, D + 1, E): [x, -|x|^2 / 2] (cosine [x / |x|, 0]); [0, -inf] on padding
    half_square_norms: Optional[np.ndarray]  # (L,) |x|^2 / 2 as used in the keys; None for cosine
    original_index: np.ndarray  # (L,) int64 index into the embeddings, -1 on padding
    identity: np.ndarray  # (L,) int64, -1 on padding
    identity_start: np.ndarray  # (L,) first position of the point's identity
    identity_end: np.ndarray  # (L,) one past its last position
    positives: np.ndarray  # (L,) positives of the point as an anchor (0 on padding)
    tile_owner: np.ndarray  # (num_tiles,) identity filling the tile when larger than a tile, else -1
    real_per_tile: np.ndarray  # (num_tiles,) real points in each tile

    @classmethod
    def create(cls, embeddings, labels, margin, metric, chunk_size) -> "_Problem":
        metric = _resolve_metric(metric)
        margin = _validated_margin(margin)
        points = _validated_embeddings(embeddings)
        num_points, dimension = points.shape
        identity = _identities(labels, num_points)
        identity_sizes = np.bincount(identity) if num_points else np.zeros(0, np.int64)  # (num_identities,)
        tile_width = _tile_width(num_points, identity_sizes)
        starts, num_positions = _pack_identities(identity_sizes, tile_width)
        if chunk_size is None:
            chunk = min(DEFAULT_CHUNK_SIZE, num_positions)
        else:
            chunk = _non_negative_int(chunk_size, "chunk_size")
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
        if metric == "cosine":
            norms = np.sqrt(np.einsum("nd,nd->n", points, points, dtype=np.float64))  # (N,)
            unit = (points / np.where(norms > 0, norms, 1.0)[:, None]).astype(dtype)  # zero rows stay zero
            anchor_side[position, :dimension] = unit
            point_side[:dimension, position] = unit.T
            point_side[dimension, position] = 0.0
            half_square_norms = None
        else:
            half = (np.einsum("nd,nd->n", points, points, dtype=np.float64) / 2).astype(dtype)  # (N,)
            anchor_side[position, :dimension] = points
            point_side[:dimension, position] = points.T
            point_side[dimension, position] = -half
            half_square_norms = scatter(half, np.inf, dtype)
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


def _key_tile(problem: _Problem, chunk: int, tile: int, out: np.ndarray) -> np.ndarray:
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


def _key_thresholds(problem: _Problem, positive_keys: np.ndarray, anchor_half_norms: Optional[np.ndarray]):
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
            bound = np.clip(1.0 - s, 0.0, 2.0) + margin  # d_ap + m
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


# ======================================================================= anchor chunks


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
class _Chunk:
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


def _anchor_pairs(problem: _Problem, offset: int, positives: np.ndarray):
    """Every (anchor, positive) pair of the chunk at ``offset``: (row, positive position, column k)."""
    rows = np.arange(len(positives))
    group_size = positives + (positives > 0)  # the anchor's identity, anchor included
    pair_row = np.repeat(rows, group_size)
    step = np.arange(len(pair_row)) - np.repeat(np.cumsum(group_size) - group_size, group_size)
    pair_position = problem.identity_start[offset + pair_row] + step
    is_pair = pair_position != offset + pair_row
    pair_row, pair_position, step = pair_row[is_pair], pair_position[is_pair], step[is_pair]
    return pair_row, pair_position, step - (pair_position > offset + pair_row)  # skip the anchor's own column


def _chunk_plan(problem: _Problem, index: int, positives: np.ndarray, pair_row, pair_position, pair_column,
                positive_keys: np.ndarray, sample_keys: Optional[np.ndarray]) -> _Chunk:
    """Thresholds and counting plan of the anchors of chunk ``index``."""
    size = problem.chunk_size
    offset = index * size
    anchor_norms = None if problem.half_square_norms is None else problem.half_square_norms[offset + pair_row]
    hard_values, semi_values = _key_thresholds(problem, positive_keys, anchor_norms)
    width = int(positives.max())

    def table(values, fill, dtype):
        out = np.full((size, width), fill, dtype)
        out[pair_row, pair_column] = values
        return out

    hard = table(hard_values, np.nan, problem.dtype)
    hard_or_semi = table(semi_values, np.nan, problem.dtype)
    rows = slice(offset, offset + size)
    return _Chunk(
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
    rows_per_slice = max(1, _SLICE_BYTES // (tile_width * hard.dtype.itemsize))
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
    at_or_below = _count_at_most(sample_keys, values) / sample_keys.shape[1]  # (C, P) fraction of keys <= threshold
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


# ============================================================================ counting


def _count_tile(keys: np.ndarray, chunk: _Chunk, mask: np.ndarray) -> tuple[int, int]:
    """``(sum #{key > hard}, sum #{key > hard_or_semi})`` over all anchors and all points of a tile.

    Points of the anchor's own identity are included here and removed by
    :func:`_same_identity_counts`; padding keys are -inf and never count.

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


def _count_tile_sorted(keys: np.ndarray, chunk: _Chunk) -> tuple[int, int]:
    """:func:`_count_tile` for anchors with many thresholds: sort each row, binary-search them."""
    ordered = np.sort(keys, axis=1)  # (C, E)
    width = ordered.shape[1]
    counts = []
    for thresholds in (chunk.hard, chunk.hard_or_semi):
        above = width - _count_at_most(ordered, thresholds)  # (C, P)
        counts.append(int(np.where(np.isnan(thresholds), 0, above).sum()))
    return counts[0], counts[1]


def _count_at_most(ordered: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
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


def _same_identity_pairs(problem: _Problem, chunk: _Chunk, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) in the tile of points of each anchor's own identity (itself included)."""
    first = tile * problem.tile_width
    lo = np.maximum(chunk.identity_start, first)
    hi = np.minimum(chunk.identity_end, first + problem.tile_width)
    lengths = np.where(chunk.positives > 0, np.maximum(hi - lo, 0), 0)  # (C,)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    step = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, lo[rows] + step - first


def _same_identity_counts(keys: np.ndarray, chunk: _Chunk, rows: np.ndarray, columns: np.ndarray) -> tuple[int, int]:
    """What :func:`_count_tile` counted for the points of the anchors' own identities."""
    if not len(rows):
        return 0, 0
    values = keys[rows, columns][:, None]  # (S, 1)
    return int(np.count_nonzero(values > chunk.hard[rows])), int(np.count_nonzero(values > chunk.hard_or_semi[rows]))


# ============================================================================ sampling


@dataclass(frozen=True)
class _Sampling:
    categories: tuple
    max_triplets: int
    seed: int


@dataclass
class _Segment:
    """One chunk of anchors against one tile of points, and what the scan found there."""

    chunk: int
    tile: int
    hard: int = 0
    hard_or_semi: int = 0
    candidates: int = 0  # valid triplets
    drawn: Optional[tuple] = None  # (keys (k,), triplets (k, 3)) for the sample


def _qualifying(segment: _Segment, categories: tuple) -> int:
    per_category = {"hard": segment.hard, "semi_hard": segment.hard_or_semi - segment.hard,
                    "easy": segment.candidates - segment.hard_or_semi}
    return sum(per_category[name] for name in categories)


def _categories_of(values: np.ndarray, hard: np.ndarray, hard_or_semi: np.ndarray, categories: tuple) -> np.ndarray:
    """True where key ``values`` fall in one of ``categories`` (thresholds as in :func:`_key_thresholds`)."""
    is_hard = values > hard
    is_hard_or_semi = values > hard_or_semi
    chosen = np.zeros(np.broadcast(values, hard).shape, bool)
    if "hard" in categories:
        chosen |= is_hard
    if "semi_hard" in categories:
        chosen |= is_hard_or_semi & ~is_hard
    if "easy" in categories:
        chosen |= ~is_hard_or_semi
    return chosen


def _draw_from_segment(problem: _Problem, segment: _Segment, keys: np.ndarray, chunk: _Chunk,
                       sampling: _Sampling, tau: float, qualifying: int) -> tuple:
    """The segment's part of the sample: its qualifying triplets whose uniform key is below ``tau``.

    ``Binomial(qualifying, tau)`` of them are; they are a uniform random subset, with
    independent keys uniform on [0, tau). Only the ``max_triplets`` smallest can ever
    be kept, so at most that many are drawn (with the joint law of the smallest order
    statistics).

    Returns:
        (keys (k,) float64, triplets (k, 3) int64 original indices).
    """
    rng = np.random.default_rng([sampling.seed, segment.chunk, segment.tile])
    below_tau = int(rng.binomial(qualifying, tau)) if qualifying else 0
    count = min(below_tau, sampling.max_triplets)
    if count == 0:
        return np.zeros(0), np.zeros((0, 3), np.int64)
    if below_tau > count:  # the `count` smallest of `below_tau` uniform keys on [0, tau)
        largest = tau * rng.beta(count, below_tau - count + 1)
        sample_keys = np.append(rng.uniform(0.0, largest, count - 1), largest)
    else:
        sample_keys = rng.uniform(0.0, tau, count)
    width = keys.shape[1]
    acceptance = qualifying / (chunk.sum_positives * width)
    listing_cost = (2 * chunk.hard.shape[1] * keys.size * _SECONDS_PER_COMPARED_KEY
                    + qualifying * _SECONDS_PER_LISTED_TRIPLET)
    rejection_cost = 1.3 * count / acceptance * _SECONDS_PER_REJECTION_DRAW
    if count * 2 > qualifying or _prefer_listing(listing_cost, rejection_cost):
        codes = _list_qualifying(problem, segment, keys, chunk, sampling.categories)
        if len(codes) != qualifying:
            raise AssertionError(f"internal error: listed {len(codes)} triplets, counted {qualifying}")
        codes = codes[rng.choice(len(codes), count, replace=False)]
    else:
        codes = _draw_qualifying(problem, segment, keys, chunk, sampling.categories, count, acceptance, rng)
    pair, column = np.divmod(codes, width)
    row, positive_column = chunk.pair_row[pair], chunk.pair_column[pair]
    triplets = np.stack([problem.original_index[segment.chunk * problem.chunk_size + row],
                         chunk.positive_index[row, positive_column],
                         problem.original_index[segment.tile * width + column]], axis=1)  # (k, 3)
    return sample_keys, triplets


def _prefer_listing(listing_cost: float, rejection_cost: float) -> bool:
    """Whether listing every qualifying triplet of a segment is cheaper than rejection sampling."""
    return listing_cost < rejection_cost


def _is_negative(problem: _Problem, segment: _Segment, chunk: _Chunk, rows: np.ndarray, columns: np.ndarray):
    """True where the point in tile column ``columns`` is a real point of another identity than anchor ``rows``."""
    identity = problem.identity[segment.tile * problem.tile_width + columns]
    return (identity >= 0) & (identity != chunk.identities[rows])


def _draw_qualifying(problem, segment, keys, chunk, categories, count, acceptance, rng) -> np.ndarray:
    """``count`` distinct qualifying triplets, uniformly, by rejection: (pair, column) codes.

    Uniform (pair, column) draws, kept when the column holds a negative of the pair's
    anchor and the triplet's category is chosen; the first ``count`` distinct ones are
    a uniform random subset of the qualifying triplets.
    """
    width = keys.shape[1]
    found = np.zeros(0, np.int64)
    while len(found) < count:
        draws = min(int(1.3 * (count - len(found)) / acceptance) + 64, 1 << 22)
        pair = rng.integers(0, chunk.sum_positives, draws)
        column = rng.integers(0, width, draws)
        row, positive_column = chunk.pair_row[pair], chunk.pair_column[pair]
        keep = _is_negative(problem, segment, chunk, row, column)
        keep &= _categories_of(keys[row, column], chunk.hard[row, positive_column],
                               chunk.hard_or_semi[row, positive_column], categories)
        found = np.concatenate([found, pair[keep] * width + column[keep]])
        _, first = np.unique(found, return_index=True)
        found = found[np.sort(first)]  # distinct, in the order drawn
    return found[:count]


def _list_qualifying(problem, segment, keys, chunk, categories) -> np.ndarray:
    """Every qualifying triplet of the segment as a sorted (pair, column) code."""
    width = keys.shape[1]
    codes = []
    for positive_column in range(chunk.hard.shape[1]):
        chosen = _categories_of(keys, chunk.hard[:, positive_column, None], chunk.hard_or_semi[:, positive_column, None],
                                categories)  # (C, E)
        rows, columns = np.nonzero(chosen)
        pair = chunk.pair_index[rows, positive_column]
        keep = (pair >= 0) & _is_negative(problem, segment, chunk, rows, columns)
        codes.append(pair[keep] * width + columns[keep])
    return np.sort(np.concatenate(codes))


# ============================================================================ the scan


@dataclass
class _Outcome:
    counts: dict
    triplets: np.ndarray


class _Scratch(threading.local):
    """Per-thread buffers: a (C, E) key tile, two cached tiles, and a bool mask."""

    def buffers(self, problem: _Problem) -> tuple:
        shape = (problem.chunk_size, problem.tile_width)
        if getattr(self, "shape", None) != (shape, problem.dtype):
            self.shape = (shape, problem.dtype)
            self.tiles = [np.empty(shape, problem.dtype) for _ in range(3)]
            rows = min(problem.chunk_size, max(1, _SLICE_BYTES // (problem.tile_width * problem.dtype.itemsize)))
            self.mask = np.empty((rows, problem.tile_width), bool)
        return self.tiles, self.mask


def _scan_chunk(problem: _Problem, index: int, sampling: Optional[_Sampling], tau: float,
                scratch: _Scratch) -> list:
    """Count (and sample) the anchors of chunk ``index`` against every tile; returns the segments."""
    offset = index * problem.chunk_size
    positives = problem.positives[offset: offset + problem.chunk_size]  # (C,)
    if not positives.any():
        return []
    tiles, mask = scratch.buffers(problem)
    pair_row, pair_position, pair_column = _anchor_pairs(problem, offset, positives)
    # The anchors' own tiles first: they give the keys key_ap, hence the thresholds.
    pair_tile = pair_position // problem.tile_width
    own_tiles = np.unique(pair_tile)
    cached = {}
    positive_keys = np.empty(len(pair_row), problem.dtype)
    for tile in own_tiles:
        buffer = tiles[1 + len(cached)] if len(cached) < 2 else tiles[0]
        keys = _key_tile(problem, index, tile, buffer)  # (C, E)
        chosen = pair_tile == tile
        positive_keys[chosen] = keys[pair_row[chosen], pair_position[chosen] - tile * problem.tile_width]
        if buffer is not tiles[0]:
            cached[tile] = keys
    sample = None
    if cached and problem.num_tiles * problem.tile_width >= _MIN_KEYS_PER_ROW_TO_PLAN:
        first = next(iter(cached.values()))
        sample = np.sort(first[:, :: max(1, problem.tile_width // _TAIL_SAMPLE_SIZE)], axis=1)  # (C, R) sorted
    chunk = _chunk_plan(problem, index, positives, pair_row, pair_position, pair_column, positive_keys, sample)
    anchor_identities = np.unique(chunk.identities[positives > 0])
    segments = []
    drawn_keys = np.zeros(0)  # this chunk's draws so far: the final threshold is at most their max_triplets-th key
    for tile in range(problem.num_tiles):
        if len(anchor_identities) == 1 and problem.tile_owner[tile] == anchor_identities[0]:
            continue  # a tile of the anchors' own (large) identity: no negatives
        keys = cached[tile] if tile in cached else _key_tile(problem, index, tile, tiles[0])  # (C, E)
        segment = _Segment(index, tile)
        segment.hard, segment.hard_or_semi = _count_tile(keys, chunk, mask)
        own_rows, own_columns = _same_identity_pairs(problem, chunk, tile)
        own_hard, own_hard_or_semi = _same_identity_counts(keys, chunk, own_rows, own_columns)
        segment.hard -= own_hard
        segment.hard_or_semi -= own_hard_or_semi
        segment.candidates = (chunk.sum_positives * int(problem.real_per_tile[tile])
                              - int(positives[own_rows].sum()))
        if sampling is not None:
            qualifying = _qualifying(segment, sampling.categories)
            segment.drawn = _draw_from_segment(problem, segment, keys, chunk, sampling, tau, qualifying)
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


def _scan(problem: _Problem, sampling: Optional[_Sampling]) -> _Outcome:
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


def _total_triplets(problem: _Problem) -> int:
    """``sum_a P_a (N - S_a)``: every valid (anchor, positive, negative) triplet."""
    positives = problem.positives
    return int(np.sum(positives * (problem.num_points - positives - 1)))


# ============================================================================ file checks


def _validated_triplets(triplets: np.ndarray, what: str) -> np.ndarray:
    if triplets.ndim != 2 or triplets.shape[1] != 3 or triplets.dtype.kind not in "iu":
        raise ValueError(f"{what} must be an (M, 3) integer array, got {triplets.dtype} {triplets.shape}.")
    if len(triplets) and triplets.min() < 0:
        raise ValueError(f"{what} holds negative indices.")
    return triplets.astype(np.int64)


def _validated_counts(counts: dict, what: str) -> dict:
    counts = {key: int(value) for key, value in counts.items()}
    if any(value < 0 for value in counts.values()):
        raise ValueError(f"{what} holds negative counts.")
    if counts["easy"] + counts["semi_hard"] + counts["hard"] != counts["total"]:
        raise ValueError(f"{what}: easy + semi_hard + hard != total.")
    return counts


def _result_from_arrays(arrays: dict) -> MiningResult:
    if str(arrays["format"]) != FILE_FORMAT:
        raise ValueError(f"format is {str(arrays['format'])!r}, not {FILE_FORMAT!r}")
    if int(arrays["version"]) != FILE_VERSION:
        raise ValueError(f"file version {int(arrays['version'])}, this facetrip reads version {FILE_VERSION}")
    names = [str(name) for name in arrays["count_names"]]
    values = arrays["count_values"]
    if sorted(names) != sorted(COUNT_KEYS) or values.shape != (len(names),) or values.dtype.kind not in "iu":
        raise ValueError(f"counts must name {', '.join(COUNT_KEYS)} once each")
    counts = _validated_counts(dict(zip(names, values.tolist())), "counts")
    triplets = _validated_triplets(arrays["triplets"], "triplets")
    if len(set(map(tuple, triplets.tolist()))) != len(triplets):
        raise ValueError("triplets holds duplicates")
    categories = _resolve_categories([str(name) for name in np.atleast_1d(arrays["categories"])])
    file_names = arrays.get("file_names")
    if file_names is not None and len(triplets) and triplets.max() >= len(file_names):
        raise ValueError(f"triplets index up to {triplets.max()} but only {len(file_names)} file names are stored")
    source = str(arrays["source"]) if "source" in arrays else None
    return MiningResult(counts={key: counts[key] for key in COUNT_KEYS}, triplets=triplets,
                        margin=_validated_margin(arrays["margin"]), metric=_resolve_metric(str(arrays["metric"])),
                        categories=categories, file_names=file_names, source=source)
