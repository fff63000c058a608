"""Plain NumPy references with explicit loops over (anchor, positive, negative).

Slow on purpose and written to be obviously right: the TF implementations are checked
against these on random inputs, values and gradients.
"""

from __future__ import annotations

import numpy as np


def distance(x: np.ndarray, y: np.ndarray, metric: str) -> float:
    """d(x, y) for one pair of vectors."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if metric == "cosine":
        norm_x, norm_y = np.linalg.norm(x), np.linalg.norm(y)
        similarity = 0.0 if norm_x == 0 or norm_y == 0 else float(np.dot(x, y) / (norm_x * norm_y))
        return float(np.clip(1.0 - similarity, 0.0, 2.0))
    squared = float(np.sum((x - y) ** 2))
    return squared if metric == "squared" else float(np.sqrt(squared))


def pairwise(embeddings: np.ndarray, metric: str) -> np.ndarray:
    size = len(embeddings)
    result = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            if i != j:
                result[i, j] = distance(embeddings[i], embeddings[j], metric)
    return result


def is_valid_triplet(labels, a: int, p: int, n: int) -> bool:
    return a != p and a != n and p != n and labels[a] == labels[p] and labels[a] != labels[n]


def triplet_mask(labels) -> np.ndarray:
    size = len(labels)
    mask = np.zeros((size, size, size), bool)
    for a in range(size):
        for p in range(size):
            for n in range(size):
                mask[a, p, n] = is_valid_triplet(labels, a, p, n)
    return mask


def anchor_positive_mask(labels) -> np.ndarray:
    size = len(labels)
    return np.array([[a != p and labels[a] == labels[p] for p in range(size)] for a in range(size)])


def anchor_negative_mask(labels) -> np.ndarray:
    size = len(labels)
    return np.array([[labels[a] != labels[n] for n in range(size)] for a in range(size)])


def per_triplet(difference: float, margin) -> float:
    """Loss of one triplet from ``difference = d_ap - d_an``."""
    if margin == "soft":
        return float(np.logaddexp(0.0, difference))
    return max(difference + margin, 0.0)


def batch_all(labels, embeddings, margin, metric: str) -> tuple[float, float]:
    """(loss, fraction_positive_triplets) with the definitions of facetrip.losses."""
    labels = list(np.asarray(labels).reshape(-1))
    distances = pairwise(embeddings, metric)
    total, counted, valid = 0.0, 0, 0
    size = len(labels)
    for a in range(size):
        for p in range(size):
            for n in range(size):
                if not is_valid_triplet(labels, a, p, n):
                    continue
                valid += 1
                difference = distances[a, p] - distances[a, n]
                loss = per_triplet(difference, margin)
                if margin == "soft":
                    total += loss
                    counted += difference > 0
                elif loss > 0:
                    total += loss
                    counted += 1
    denominator = valid if margin == "soft" else counted
    loss = total / denominator if denominator else 0.0
    return loss, (counted / valid if valid else 0.0)


def hardest(labels, embeddings, metric: str):
    """Per anchor: (hardest positive, hardest negative) or None without positive/negative."""
    labels = list(np.asarray(labels).reshape(-1))
    distances = pairwise(embeddings, metric)
    size = len(labels)
    result = []
    for a in range(size):
        positives = [distances[a, p] for p in range(size) if p != a and labels[p] == labels[a]]
        negatives = [distances[a, n] for n in range(size) if labels[n] != labels[a]]
        result.append((max(positives), min(negatives)) if positives and negatives else None)
    return result


def batch_hard(labels, embeddings, margin, metric: str) -> float:
    terms = [per_triplet(hp - hn, margin) for hp, hn in filter(None, hardest(labels, embeddings, metric))]
    return float(np.mean(terms)) if terms else 0.0


def semi_hard(labels, embeddings, margin, metric: str) -> float:
    labels = list(np.asarray(labels).reshape(-1))
    distances = pairwise(embeddings, metric)
    size = len(labels)
    terms = []
    for a in range(size):
        negatives = [distances[a, n] for n in range(size) if labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(size):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [d for d in negatives if d > distances[a, p]]
            chosen = min(farther) if farther else max(negatives)
            terms.append(per_triplet(distances[a, p] - chosen, margin))
    return float(np.mean(terms)) if terms else 0.0


def explicit_triplets(anchor, positive, negative, margin, metric: str) -> float:
    terms = [
        per_triplet(distance(a, p, metric) - distance(a, n, metric), margin)
        for a, p, n in zip(anchor, positive, negative)
    ]
    return float(np.mean(terms)) if terms else 0.0


def numerical_gradient(function, embeddings: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """Central finite differences of a scalar function of the embeddings (float64)."""
    embeddings = np.asarray(embeddings, np.float64)
    gradient = np.zeros_like(embeddings)
    for index in np.ndindex(embeddings.shape):
        plus, minus = embeddings.copy(), embeddings.copy()
        plus[index] += step
        minus[index] -= step
        gradient[index] = (function(plus) - function(minus)) / (2 * step)
    return gradient
