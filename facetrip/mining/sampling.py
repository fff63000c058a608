"""One (anchor chunk, tile)'s part of the uniform sample: its qualifying triplets, drawn by rejection or listed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from facetrip.mining.planning import Chunk
from facetrip.mining.problem import Problem

# Rough per-item costs (seconds) that choose between rejection sampling and listing.
_SECONDS_PER_REJECTION_DRAW = 1e-7
_SECONDS_PER_COMPARED_KEY = 4e-10
_SECONDS_PER_LISTED_TRIPLET = 1e-8


@dataclass(frozen=True)
class Sampling:
    categories: tuple
    max_triplets: int
    seed: int


@dataclass
class Segment:
    """One chunk of anchors against one tile of points, and what the scan found there."""

    chunk: int
    tile: int
    hard: int = 0
    hard_or_semi: int = 0
    candidates: int = 0  # valid triplets
    drawn: Optional[tuple] = None  # (keys (k,), triplets (k, 3)) for the sample


def count_qualifying(segment: Segment, categories: tuple) -> int:
    per_category = {"hard": segment.hard, "semi_hard": segment.hard_or_semi - segment.hard,
                    "easy": segment.candidates - segment.hard_or_semi}
    return sum(per_category[name] for name in categories)


def _categories_of(values: np.ndarray, hard: np.ndarray, hard_or_semi: np.ndarray, categories: tuple) -> np.ndarray:
    """True where key ``values`` fall in one of ``categories``.

    Thresholds as in :func:`facetrip.mining.problem.key_thresholds`.
    """
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


def draw_from_segment(problem: Problem, segment: Segment, keys: np.ndarray, chunk: Chunk,
                       sampling: Sampling, tau: float, qualifying: int) -> tuple:
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


def _is_negative(problem: Problem, segment: Segment, chunk: Chunk, rows: np.ndarray, columns: np.ndarray):
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
