"""Top-k people for probe embeddings, and the open-set decision: a person, or unknown.

Pure NumPy. A gallery is a set of vectors with a person label each. The score of a person
for a probe ``q`` is one of :data:`SCORES`:

    nearest:  s(q, p) = min over p's photos g of d(q, g)
    mean:     s(q, p) = d(q, m_p),  m_p = mean of p's photo embeddings (back on the unit sphere
              when the embeddings are unit vectors, as the run's threshold was set on those)

The probe is identified as ``p* = argmin_p s(q, p)`` when ``s(q, p*) <= threshold``
(the run's verification threshold), else it is **unknown**: open-set identification.

Distances are those of :mod:`facetrip.distances`. Exact search is one matrix product per
block of probes (:func:`facetrip.distances.distances_to`: ``||q - g||^2 = ||q||^2 + ||g||^2 -
2 q.g``), with the per-person minimum taken over the gallery sorted by person
(``np.minimum.reduceat``). Approximate search (:mod:`facetrip.identification.ann`) returns
the nearest photos, whose exact distances :func:`top_people_from_candidates` turns into people.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from facetrip.distances import PreparedRows, distance_matrix, distances_to, paired_distances, unit_rows

__all__ = ["DEFAULT_SCORE", "SCORES", "ExactSearch", "Matches", "are_unit_vectors", "candidate_distances", "decisions",
           "distance_matrix", "false_alarm_for_pair_far", "identify_embeddings", "pair_far_for_false_alarm",
           "person_means", "score_gallery", "top_people", "top_people_from_candidates", "unit_rows"]

SCORES = ("nearest", "mean")
# Measured on LFW with 3 photos a person (docs/identification.md): the mean scores higher
# (DIR at 1% false alarms 89.0% against 80.1%); on a one-photo gallery the two are the same.
DEFAULT_SCORE = "mean"
# Distances are computed for blocks of probes of at most this many (probe, gallery vector) pairs.
_BLOCK_PAIRS = 1 << 23
# Every row within this of norm 1 counts as a unit vector.
_UNIT_TOLERANCE = 1e-3


def are_unit_vectors(vectors: np.ndarray) -> bool:
    """Whether every row has norm 1 (within :data:`_UNIT_TOLERANCE`)."""
    return bool(len(vectors)) and bool(np.all(np.abs(np.linalg.norm(vectors, axis=1) - 1.0) <= _UNIT_TOLERANCE))


def person_means(embeddings: np.ndarray, labels: np.ndarray, num_people: int) -> np.ndarray:
    """(P, D) mean embedding of each person, re-normalised to unit length when the embeddings are unit vectors.

    The mean of unit vectors lies inside the sphere (norm < 1); the threshold was set on
    distances between unit vectors, so the mean is put back on the sphere first.
    """
    embeddings, labels = np.asarray(embeddings, np.float32), np.asarray(labels, np.int64)
    order = np.argsort(labels, kind="stable")  # each person's rows together: one reduceat sums them
    grouped_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, grouped_labels[1:] != grouped_labels[:-1]])
    sums = np.zeros((num_people, embeddings.shape[1]), np.float64)
    sums[grouped_labels[starts]] = np.add.reduceat(embeddings[order].astype(np.float64), starts, axis=0)  # (P, D)
    means = (sums / np.maximum(np.bincount(labels, minlength=num_people), 1)[:, None]).astype(np.float32)
    return unit_rows(means) if are_unit_vectors(embeddings) else means


def score_gallery(embeddings: np.ndarray, labels: np.ndarray, num_people: int, score: str) -> tuple[np.ndarray, np.ndarray]:
    """The vectors a score compares probes with, and their people.

    Returns:
        ``(vectors (M, D), labels (M,))``: the photos themselves for ``nearest``, one mean per
        person (labels ``0 .. P-1``) for ``mean``.
    """
    if score not in SCORES:
        raise ValueError(f"Unknown score {score!r}: choose {' or '.join(SCORES)}.")
    if score == "nearest":
        return np.asarray(embeddings, np.float32), np.asarray(labels, np.int64)
    return person_means(embeddings, labels, num_people), np.arange(num_people, dtype=np.int64)


@dataclasses.dataclass
class Matches:
    """The k best people of each probe, best first.

    Attributes:
        distances: (Q, k) float64 score of each person (inf where the gallery has fewer than k people).
        people: (Q, k) int64 person labels (-1 where the gallery has fewer than k people).
        rows: (Q, k) int64 the gallery vector that gave the score (-1 as above).
    """

    distances: np.ndarray
    people: np.ndarray
    rows: np.ndarray


class ExactSearch:
    """Exact top-k people of a gallery: ``s(q, p) = min over p's vectors of d(q, v)`` for every person.

    What every search needs (the gallery's norms, its rows grouped by person) is computed
    once here; :meth:`top_people` then costs one matrix product per block of probes.

    Args:
        vectors: (N, D) gallery vectors (photos, or one mean per person).
        labels: (N,) int person of each vector, every label in ``0 .. P-1`` present.
        metric: the run's metric.
    """

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, metric: str):
        labels = np.asarray(labels, np.int64)
        self.prepared = PreparedRows.of(np.asarray(vectors, np.float32), metric)  # float32: one BLAS product per block
        # distances come grouped by person when the gallery is; else they are reordered
        self.grouped_already = bool(np.all(labels[1:] >= labels[:-1]))
        self.order = np.arange(len(labels)) if self.grouped_already else np.argsort(labels, kind="stable")
        grouped_labels = labels[self.order]
        self.starts = np.flatnonzero(np.r_[True, grouped_labels[1:] != grouped_labels[:-1]])  # (P,)
        self.ends = np.r_[self.starts[1:], len(labels)]
        self.people_of_segment = grouped_labels[self.starts]  # (P,)

    def top_people(self, queries: np.ndarray, k: int) -> Matches:
        """The k best people of each probe ((Q, D) embeddings), as :class:`Matches`; at most P are kept."""
        queries = np.asarray(queries, np.float32).reshape(len(queries), -1)
        kept = min(k, len(self.starts))
        matches = _empty_matches(len(queries), k)
        block = max(1, _BLOCK_PAIRS // max(len(self.order), 1))
        for first in range(0, len(queries), block):
            distances = distances_to(queries[first:first + block], self.prepared)  # (B, N)
            if not self.grouped_already:
                distances = distances[:, self.order]
            per_person = np.minimum.reduceat(distances, self.starts, axis=1)  # (B, P)
            best = _k_smallest(per_person, kept)  # (B, kept) segment positions, best first
            for row, segments in enumerate(best):
                # the vector behind each kept person's score: the argmin within its segment
                offsets = [self.starts[s] + int(np.argmin(distances[row, self.starts[s]:self.ends[s]])) for s in segments]
                matches.distances[first + row, :kept] = per_person[row, segments]
                matches.people[first + row, :kept] = self.people_of_segment[segments]
                matches.rows[first + row, :kept] = self.order[offsets]
        return matches


def top_people(queries: np.ndarray, vectors: np.ndarray, labels: np.ndarray, metric: str, k: int) -> Matches:
    """Exact top-k people of probes in a gallery (:class:`ExactSearch`), in one call.

    Args:
        queries: (Q, D) probe embeddings.
        vectors: (N, D) gallery vectors (photos, or one mean per person).
        labels: (N,) int person of each vector, every label in ``0 .. P-1`` present.
        metric: the run's metric.
        k: how many people to keep (at most P are).

    Returns:
        :class:`Matches`.
    """
    return ExactSearch(vectors, labels, metric).top_people(queries, k)


def candidate_distances(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """Exact distances from each probe to its candidate gallery vectors (an approximate search's answer).

    Args:
        queries: (Q, D) probes.
        vectors: (N, D) gallery vectors.
        rows: (Q, m) int candidate rows of each probe, -1 for none.
        metric: the run's metric.

    Returns:
        (Q, m) float64 distances, inf where there is no candidate.
    """
    queries, rows = np.asarray(queries, np.float64), np.asarray(rows)
    valid = rows >= 0  # (Q, m)
    candidates = np.asarray(vectors)[np.where(valid, rows, 0)].astype(np.float64)  # (Q, m, D)
    repeated = np.broadcast_to(queries[:, None, :], candidates.shape)  # (Q, m, D)
    distances = paired_distances(repeated, candidates, metric)  # (Q, m)
    return np.where(valid, distances, np.inf)


def top_people_from_candidates(distances: np.ndarray, rows: np.ndarray, labels: np.ndarray, k: int) -> Matches:
    """Top-k people among candidate gallery vectors (what an approximate search returned).

    A person's score is the smallest distance among their candidates, so it is exact when
    the search found that person's nearest vector.

    Args:
        distances: (Q, m) exact distances to the candidates, any order (inf for no candidate).
        rows: (Q, m) int gallery vector of each candidate (-1 for none).
        labels: (N,) int person of each gallery vector.
        k: how many people to keep.

    Returns:
        :class:`Matches`.
    """
    matches = _empty_matches(len(rows), k)
    for query, (candidate_distances, candidate_rows) in enumerate(zip(distances, rows)):
        valid = candidate_rows >= 0
        candidate_distances, candidate_rows = candidate_distances[valid], candidate_rows[valid]
        ordered = np.argsort(candidate_distances, kind="stable")
        people = labels[candidate_rows[ordered]]
        _, first_seen = np.unique(people, return_index=True)  # each person's nearest candidate
        best = ordered[np.sort(first_seen)][:k]
        matches.distances[query, :len(best)] = candidate_distances[best]
        matches.people[query, :len(best)] = labels[candidate_rows[best]]
        matches.rows[query, :len(best)] = candidate_rows[best]
    return matches


def _empty_matches(num_queries: int, k: int) -> Matches:
    return Matches(np.full((num_queries, k), np.inf), np.full((num_queries, k), -1, np.int64),
                   np.full((num_queries, k), -1, np.int64))


def _k_smallest(values: np.ndarray, k: int) -> np.ndarray:
    """(B, k) column positions of the k smallest values of each row, smallest first."""
    if k < values.shape[1]:
        candidates = np.argpartition(values, k - 1, axis=1)[:, :k]  # (B, k), unordered
    else:
        candidates = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    ordering = np.argsort(np.take_along_axis(values, candidates, axis=1), axis=1, kind="stable")
    return np.take_along_axis(candidates, ordering, axis=1)


def pair_far_for_false_alarm(false_alarm: float, people: int) -> float:
    """The false accept rate per pair at which a stranger is taken for someone at rate ``false_alarm``.

    A stranger is taken for one of the gallery's ``P`` people when any of their scores is
    within the threshold: were the P scores independent, ``false alarm = 1 - (1 - FAR)^P``, so

        FAR = 1 - (1 - false_alarm)^(1 / P)      (about false_alarm / P)

    On LFW (1,670 people, docs/identification.md) the threshold this gives from the
    pretrained run's calibration pairs (0.285) is close to the one measured for 1% false
    alarms on LFW's strangers (0.296).
    """
    return float(-np.expm1(np.log1p(-false_alarm) / max(int(people), 1)))


def false_alarm_for_pair_far(pair_far: float, people: int) -> float:
    """``1 - (1 - FAR)^P``: the share of strangers taken for someone, were their P scores independent."""
    return float(-np.expm1(max(int(people), 1) * np.log1p(-min(pair_far, 1.0 - 1e-16))))


def decisions(best_distances: np.ndarray, threshold: float) -> np.ndarray:
    """(Q,) bool: the best person is accepted (``s <= threshold``); False means unknown."""
    return np.asarray(best_distances) <= threshold


def identify_embeddings(queries: np.ndarray, matches: Matches, names: list[str], threshold: float,
                        files: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Each probe's decision and top-k people, JSON-ready.

    Args:
        queries: (Q, D) probe embeddings (only their number is used).
        matches: their :class:`Matches`.
        names: person name of each label.
        threshold: accept the best person when its score is at most this.
        files: (N,) file of each gallery vector, to name the nearest photo (None for mean scores).

    Returns:
        One ``{"decision": "known" | "unknown", "person": name or None, "distance", "matches":
        [{"person", "distance", "file"}]}`` per probe.
    """
    accepted = decisions(matches.distances[:, 0], threshold)
    results = []
    for query in range(len(queries)):
        ranked = [
            {"person": names[person], "distance": float(distance),
             "file": None if files is None else str(files[row])}
            for person, distance, row in zip(matches.people[query], matches.distances[query], matches.rows[query])
            if person >= 0
        ]
        known = bool(accepted[query])
        results.append({
            "decision": "known" if known else "unknown",
            "person": ranked[0]["person"] if known else None,
            "distance": ranked[0]["distance"] if ranked else None,
            "matches": ranked,
        })
    return results
