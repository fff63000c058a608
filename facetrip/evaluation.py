"""Verification metrics on embeddings: pairs, ROC, EER and the calibrated threshold.

A verification decision is ``distance(a, b) <= threshold`` means "same person". Scores
for scikit-learn's ROC are negated distances (larger = more alike).
"""

from __future__ import annotations

import numpy as np

# Above this many unordered pairs, a seeded random subset of pairs is used.
MAX_PAIRS = 2_000_000


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
    a, b = embeddings[first], embeddings[second]
    if metric == "cosine":
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        distances = 1.0 - np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
    else:
        distances = np.sum((a - b) ** 2, axis=1)
        if metric != "squared":
            distances = np.sqrt(distances)
    return distances, labels[first] == labels[second]


def verification_summary(distances: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """ROC summary of a verification set.

    Returns:
        ``auc``; ``eer`` (where false accept rate = false reject rate) and
        ``eer_threshold`` (a distance); ``tar_at_far_1pct`` (true accept rate at a false
        accept rate of at most 1%).

    Raises:
        ValueError: the pairs hold only one class (all same or all different).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    same = np.asarray(same, bool)
    if same.all() or not same.any():
        raise ValueError("Verification needs both same-identity and different-identity pairs.")
    scores = -np.asarray(distances, np.float64)
    false_accept, true_accept, thresholds = roc_curve(same, scores)
    false_reject = 1.0 - true_accept
    index = int(np.argmin(np.abs(false_accept - false_reject)))
    within = false_accept <= 0.01
    return {
        "auc": float(roc_auc_score(same, scores)),
        "eer": float((false_accept[index] + false_reject[index]) / 2),
        "eer_threshold": float(-thresholds[index]) if np.isfinite(thresholds[index]) else float(np.max(distances)),
        "tar_at_far_1pct": float(true_accept[within].max()) if within.any() else 0.0,
    }
