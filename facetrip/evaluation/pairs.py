"""Verification pairs and their distances.

:func:`verification_pairs` chooses the pairs of a set of labelled images: all unordered
pairs of a small set, or a seeded balanced sample of a large one, as :class:`Pairs`
(indices into the image list). :func:`distances_between`, :func:`distances_of_pairs` (a
chunk of pairs at a time) and :func:`pair_distances` give the distances of pairs of
embeddings (euclidean, squared or cosine, as :mod:`facetrip.distances` defines them).

Pure NumPy; no TensorFlow, no files.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from facetrip.distances import paired_distances

# Above this many unordered pairs, pair_distances uses a seeded random subset of pairs.
MAX_PAIRS = 2_000_000
# Pairs whose vectors distances_of_pairs holds at a time.
PAIRS_PER_CHUNK = 8192


# ----------------------------------------------------------------------------- distances


def distances_between(first: np.ndarray, second: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Row-wise distances ``d(first[m], second[m])`` in float64 (:func:`facetrip.distances.paired_distances`).

    Args:
        first, second: (M, D) arrays.
        metric: ``euclidean`` (||a - b||), ``squared`` (||a - b||^2) or ``cosine``
            (clip(1 - <u(a), u(b)>, 0, 2), ``u(x) = x / max(||x||, 1e-6)``; 1 for a zero vector).

    Returns:
        (M,) float64 distances.
    """
    return paired_distances(np.asarray(first, np.float64), np.asarray(second, np.float64), metric)


def distances_of_pairs(vectors_of: Callable[[np.ndarray], np.ndarray], first: np.ndarray, second: np.ndarray,
                       metric: str = "euclidean", pairs_per_chunk: int = PAIRS_PER_CHUNK) -> np.ndarray:
    """Distances ``d(v[first[m]], v[second[m]])`` of many pairs, a chunk of pairs at a time.

    The vectors of a chunk's images are looked up, or computed, by ``vectors_of``: the
    vectors of every image are never in memory at once. With ``vectors_of =
    embeddings.__getitem__`` a memory-mapped (N, D) array is read a chunk of rows at a time.
    Each distance is the one :func:`distances_between` gives for its row.

    Args:
        vectors_of: from (m,) int64 image indices to their (m, D) vectors.
        first, second: (M,) int image indices of the pairs.
        metric: euclidean | squared | cosine.
        pairs_per_chunk: pairs whose vectors are held at a time.

    Returns:
        (M,) float64 distances.
    """
    first, second = np.asarray(first, np.int64).reshape(-1), np.asarray(second, np.int64).reshape(-1)
    distances = np.empty(len(first), np.float64)  # (M,)
    for start in range(0, len(first), pairs_per_chunk):
        stop = start + pairs_per_chunk
        distances[start:stop] = distances_between(vectors_of(first[start:stop]), vectors_of(second[start:stop]), metric)
    return distances


def pair_distances(embeddings: np.ndarray, labels: np.ndarray, metric: str = "euclidean", seed: int = 0):
    """Distances and same-identity flags of all unordered pairs (i < j), or of a seeded subset.

    Args:
        embeddings: (N, D) array.
        labels: (N,) identity labels.
        metric: euclidean | squared | cosine.
        seed: for the subset when there are more than ``MAX_PAIRS`` pairs.

    Returns:
        ``(distances (M,), same (M,) bool)``.
    """
    embeddings = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels).reshape(-1)
    first, second = np.triu_indices(len(labels), k=1)  # (M,), (M,)
    if len(first) > MAX_PAIRS:
        chosen = np.random.default_rng(seed).choice(len(first), MAX_PAIRS, replace=False)
        first, second = first[chosen], second[chosen]
    return distances_between(embeddings[first], embeddings[second], metric), labels[first] == labels[second]


# ----------------------------------------------------------------------------- pairs


@dataclasses.dataclass
class Pairs:
    """Image pairs to verify, as indices into an image list.

    Attributes:
        first, second: (M,) int64 image indices, ``first != second``.
        same: (M,) bool, the two images show the same identity.
        folds: (M,) int64 fold of each pair (from an LFW pairs file), or None.
        how: one line saying how the pairs were chosen.
    """

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    folds: np.ndarray | None = None
    how: str = ""

    def __len__(self) -> int:
        return len(self.same)

    @property
    def num_same(self) -> int:
        return int(np.sum(self.same))

    @property
    def num_different(self) -> int:
        return len(self) - self.num_same


def _pair_counts(labels: np.ndarray):
    """For images sorted by label: the sort order, and each sorted image's count of same and different partners after it.

    Returns:
        ``(order (N,), block_end (N,), same_after (N,), different_after (N,))``: in the sorted
        order, image ``i``'s identity occupies positions ``[start, block_end[i])``; it forms
        ``same_after[i] = block_end[i] - i - 1`` same pairs with later images of its identity
        and ``different_after[i] = N - block_end[i]`` different pairs with the images of
        later identities. Every unordered pair is counted once, at its smaller position.
    """
    order = np.argsort(labels, kind="stable")  # (N,)
    sorted_labels = labels[order]
    _, starts, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    block_end = np.repeat(starts + counts, counts)  # (N,)
    positions = np.arange(len(labels))
    return order, block_end, block_end - positions - 1, len(labels) - block_end


def _unrank(ranks: np.ndarray, partners_after: np.ndarray, first_partner: np.ndarray):
    """Pair positions from linear ranks: rank r -> (i, first_partner[i] + offset).

    Pairs are enumerated position by position: position ``i`` owns ranks
    ``[cumsum[i] - partners_after[i], cumsum[i])``, and its ``offset``-th pair is with
    position ``first_partner[i] + offset``.
    """
    cumulative = np.cumsum(partners_after)  # (N,)
    positions = np.searchsorted(cumulative, ranks, side="right")  # (S,)
    offsets = ranks - (cumulative[positions] - partners_after[positions])
    return positions, first_partner[positions] + offsets


def verification_pairs(labels, max_pairs_per_class: int = 50_000, seed: int = 0) -> Pairs:
    """All unordered pairs of a small set, or a seeded balanced sample of a large one.

    When both the same-identity and the different-identity pairs number at most
    ``max_pairs_per_class``, every unordered pair (i < j) is used. Otherwise
    ``n = min(max_pairs_per_class, same pairs, different pairs)`` pairs of each kind are
    drawn uniformly without replacement, so the sample is balanced (n same, n different).
    Pairs are ranked exactly (no N x N matrix, no rejection): with images sorted by
    identity, image ``i`` has ``block_end - i - 1`` same partners after it and
    ``N - block_end`` different ones, so a rank in ``[0, total)`` names one pair.

    Args:
        labels: (N,) identity labels.
        max_pairs_per_class: most same (and most different) pairs.
        seed: seed of the sample.

    Returns:
        :class:`Pairs` with ``first < second`` never equal, no pair twice, sorted by
        (first, second).
    """
    labels = np.asarray(labels).reshape(-1)
    order, block_end, same_after, different_after = _pair_counts(labels)
    total_same, total_different = int(same_after.sum()), int(different_after.sum())
    positions = np.arange(len(labels))
    if total_same <= max_pairs_per_class and total_different <= max_pairs_per_class:
        same_ranks, different_ranks = np.arange(total_same), np.arange(total_different)
        how = f"all {total_same + total_different:,} unordered pairs"
    else:
        per_class = min(max_pairs_per_class, total_same, total_different)
        rng = np.random.default_rng(seed)
        same_ranks = np.sort(rng.choice(total_same, per_class, replace=False))
        different_ranks = np.sort(rng.choice(total_different, per_class, replace=False))
        how = (f"seeded balanced sample (seed {seed}): {per_class:,} of {total_same:,} same and {per_class:,} of "
               f"{total_different:,} different pairs")
    same_i, same_j = _unrank(same_ranks, same_after, positions + 1)
    different_i, different_j = _unrank(different_ranks, different_after, block_end)
    first = order[np.concatenate([same_i, different_i])]
    second = order[np.concatenate([same_j, different_j])]
    first, second = np.minimum(first, second), np.maximum(first, second)
    same = np.concatenate([np.ones(len(same_i), bool), np.zeros(len(different_i), bool)])
    by_pair = np.lexsort((second, first))
    return Pairs(first[by_pair].astype(np.int64), second[by_pair].astype(np.int64), same[by_pair], None, how)
