"""Offline triplet mining over a whole split: exact category counts and a uniform sample.

For a valid triplet (a, p, n) (``a != p``, ``label[a] == label[p]``, ``label[n] != label[a]``)
with distances ``d_ap``, ``d_an`` under the chosen metric and a margin ``m >= 0``:

- hard:       ``d_an < d_ap``
- semi_hard:  ``d_ap <= d_an < d_ap + m``
- easy:       ``d_an >= d_ap + m``

(FaceNet's three categories.) :func:`count_triplets` counts all valid triplets exactly;
:func:`mine_triplets` also draws up to ``max_triplets`` of the chosen categories,
uniformly at random without replacement.

Distances (the definitions of :mod:`facetrip.distances`):

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
which (see :func:`planning._plan_passes`). Anchors with more than 24 bulk thresholds (large
identities) sort each row and binary-search. Points of the anchor's own identity are
counted like the others and subtracted afterwards. Chunks run on all cores (NumPy
releases the GIL; BLAS is held at one thread per worker). Cost: about 6 ns per
(anchor, point) pair and core, half of it the product, on a 2.1 GHz Xeon (Sapphire
Rapids); N = 100,000 takes about 40 s on 2 cores (``scripts/bench_mining.py``).
Memory: the points twice (with one extra column), the thresholds (2 per anchor-positive
pair), and three (C, E) key buffers per worker (8 MiB each at the defaults). The
embeddings themselves may be memory-mapped (``facetrip mine`` embeds a split into a
scratch ``.npy``): they are read a chunk of rows at a time into the two packed layouts,
which are the only copies in memory.

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

The parts
---------
- :mod:`~facetrip.mining.result`: :class:`MiningResult`, the category and metric names, checks of its fields;
- :mod:`~facetrip.mining.triplet_files`: :func:`save_triplets` / :func:`load_triplets` (the ``.npz`` format);
- :mod:`~facetrip.mining.problem`: validated inputs packed into column tiles, key tiles, key thresholds;
- :mod:`~facetrip.mining.planning`: anchor chunks and their compare-pass plan (the cost model);
- :mod:`~facetrip.mining.counting`: exact counts of one (chunk, tile);
- :mod:`~facetrip.mining.sampling`: drawing or listing the qualifying triplets of one (chunk, tile);
- :mod:`~facetrip.mining.scan`: every (chunk, tile) once, on all cores, merged into counts and the sample.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from facetrip.distances import METRICS
from facetrip.mining.problem import DEFAULT_CHUNK_SIZE, Problem, non_negative_int
from facetrip.mining.result import (
    COUNT_KEYS,
    DEFAULT_CATEGORIES,
    TRIPLET_CATEGORIES,
    MiningResult,
    resolve_categories,
)
from facetrip.mining.sampling import Sampling
from facetrip.mining.scan import scan_problem
from facetrip.mining.triplet_files import FILE_FORMAT, FILE_VERSION, load_triplets, save_triplets

Labels = Union[np.ndarray, Sequence]

__all__ = [
    "COUNT_KEYS",
    "DEFAULT_CATEGORIES",
    "DEFAULT_CHUNK_SIZE",
    "FILE_FORMAT",
    "FILE_VERSION",
    "METRICS",
    "TRIPLET_CATEGORIES",
    "Labels",
    "MiningResult",
    "count_triplets",
    "load_triplets",
    "mine_triplets",
    "save_triplets",
]


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
    problem = Problem.create(embeddings, labels, margin, metric, chunk_size)
    return scan_problem(problem, sampling=None).counts


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
    problem = Problem.create(embeddings, labels, margin, metric, chunk_size)
    categories = resolve_categories(categories)
    max_triplets = non_negative_int(max_triplets, "max_triplets")
    seed = non_negative_int(seed, "seed")
    sampling = Sampling(categories, max_triplets, seed) if max_triplets else None
    outcome = scan_problem(problem, sampling)
    return MiningResult(counts=outcome.counts, triplets=outcome.triplets, margin=problem.margin,
                        metric=problem.metric, categories=categories)
