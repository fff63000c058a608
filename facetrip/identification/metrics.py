"""How well identification and clustering did, against true identities. Pure NumPy and scikit-learn.

Open-set identification (Grother and Phillips' terms). Known probes are of people in the
gallery, unknown probes of people who are not. For a threshold ``t``:

    DIR(t)         = #{known probes: rank-1 person correct and s <= t} / #known   (detection and identification rate)
    false alarm(t) = #{unknown probes: s <= t} / #unknown                         (accepted as someone)

DIR at a false-alarm rate ``f`` uses the threshold whose false-alarm rate on the unknown
probes is at most ``f`` (the same rule as a verification threshold at a FAR:
:func:`facetrip.evaluation.calibration.empirical_threshold`).

Clustering, with ``n_ij`` photos of identity ``j`` in cluster ``i``:

    pairwise precision = sum_ij C(n_ij, 2) / sum_i C(a_i, 2)     (pairs put together that belong together)
    pairwise recall    = sum_ij C(n_ij, 2) / sum_j C(b_j, 2)     (pairs that belong together, put together)
    BCubed precision   = mean over photos x of |cluster(x) & identity(x)| / |cluster(x)|
    BCubed recall      = mean over photos x of |cluster(x) & identity(x)| / |identity(x)|

each F the harmonic mean of its precision and recall; NMI is scikit-learn's (arithmetic normalisation).
"""

from __future__ import annotations

import numpy as np


def rank1_accuracy(best_people: np.ndarray, true_people: np.ndarray) -> float:
    """Share of probes whose best-scoring person is their own."""
    return float(np.mean(np.asarray(best_people) == np.asarray(true_people)))


def open_set_rates(known_distances, known_correct, unknown_distances, threshold: float) -> dict[str, float]:
    """DIR and false-alarm rate at one threshold.

    Args:
        known_distances: (K,) best score of each known probe.
        known_correct: (K,) bool, its best person is the right one.
        unknown_distances: (U,) best score of each unknown probe.
        threshold: accept when the score is at most this.

    Returns:
        ``{"threshold", "dir", "false_alarm"}``.
    """
    known_distances, unknown_distances = np.asarray(known_distances), np.asarray(unknown_distances)
    return {
        "threshold": float(threshold),
        "dir": float(np.mean(np.asarray(known_correct, bool) & (known_distances <= threshold))),
        "false_alarm": float(np.mean(unknown_distances <= threshold)),
    }


def dir_at_false_alarm(known_distances, known_correct, unknown_distances, false_alarm: float = 0.01) -> dict[str, float]:
    """DIR at the threshold whose false-alarm rate on the unknown probes is at most ``false_alarm``.

    Returns:
        :func:`open_set_rates` at that threshold.
    """
    from facetrip.evaluation.calibration import empirical_threshold

    threshold = empirical_threshold(np.sort(np.asarray(unknown_distances, np.float64)), false_alarm)
    return open_set_rates(known_distances, known_correct, unknown_distances, threshold)


def _contingency(true_labels, predicted_labels):
    from sklearn.metrics.cluster import contingency_matrix

    return contingency_matrix(true_labels, predicted_labels, sparse=True).tocsr()  # (identities, clusters)


def _pairs(counts: np.ndarray) -> float:
    counts = np.asarray(counts, np.float64)
    return float(np.sum(counts * (counts - 1) / 2))


def _f(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def pairwise_scores(true_labels, predicted_labels) -> dict[str, float]:
    """Pairwise precision, recall and F-measure of a clustering (1 where there are no pairs to get wrong)."""
    table = _contingency(true_labels, predicted_labels)
    together = _pairs(table.data)
    predicted_pairs = _pairs(np.asarray(table.sum(axis=0)).ravel())
    true_pairs = _pairs(np.asarray(table.sum(axis=1)).ravel())
    precision = together / predicted_pairs if predicted_pairs else 1.0
    recall = together / true_pairs if true_pairs else 1.0
    return {"precision": precision, "recall": recall, "f": _f(precision, recall)}


def bcubed_scores(true_labels, predicted_labels) -> dict[str, float]:
    """BCubed precision, recall and F-measure (Bagga and Baldwin 1998) of a clustering."""
    table = _contingency(true_labels, predicted_labels).tocoo()
    cluster_sizes = np.asarray(table.sum(axis=0)).ravel()
    identity_sizes = np.asarray(table.sum(axis=1)).ravel()
    overlap = table.data.astype(np.float64)  # n_ij photos, each with the same overlap n_ij
    total = overlap.sum()
    precision = float(np.sum(overlap * overlap / cluster_sizes[table.col]) / total)
    recall = float(np.sum(overlap * overlap / identity_sizes[table.row]) / total)
    return {"precision": precision, "recall": recall, "f": _f(precision, recall)}


def clustering_scores(true_labels, predicted_labels) -> dict[str, float]:
    """Pairwise and BCubed precision / recall / F, NMI, and the number of clusters (of any size) and identities."""
    from sklearn.metrics import normalized_mutual_info_score

    pairwise, bcubed = pairwise_scores(true_labels, predicted_labels), bcubed_scores(true_labels, predicted_labels)
    return {
        **{f"pairwise_{name}": value for name, value in pairwise.items()},
        **{f"bcubed_{name}": value for name, value in bcubed.items()},
        "nmi": float(normalized_mutual_info_score(true_labels, predicted_labels)),
        "clusters": int(len(np.unique(predicted_labels))),
        "identities": int(len(np.unique(true_labels))),
    }
