"""Grouping unlabelled embeddings by person, with the run's verification threshold.

Every algorithm turns the threshold ``t`` into clusters; which one is the default was
measured on LFW (docs/identification.md):

- ``chinese_whispers``: dlib's Chinese whispers (Biemann 2006) over the threshold graph,
  an edge wherever ``d(i, j) <= t`` (what dlib's ``chinese_whispers_clustering`` does with
  its 0.6). Each photo takes the label most common among its neighbours, in random order,
  for a fixed number of rounds.
- ``connected``: the connected components of the threshold graph (single linkage cut at ``t``).
- ``average``, ``complete``: scikit-learn's agglomerative clustering, merging two clusters
  while their average (or largest) pairwise distance is below ``t``.
- ``hdbscan``: scikit-learn's HDBSCAN (at least 2 photos a cluster) on the distance matrix.
  It follows density and ignores ``t``: with ``t`` as its ``cluster_selection_epsilon``
  it merged all but 22 of 6,711 LFW photos into one cluster.

Pure NumPy / SciPy / scikit-learn, and dlib for Chinese whispers; no TensorFlow.
"""

from __future__ import annotations

import numpy as np

from facetrip.identification.search import distance_matrix

ALGORITHMS = ("chinese_whispers", "connected", "average", "complete", "hdbscan")
DEFAULT_ALGORITHM = "average"
# The algorithms that need the whole (N, N) distance matrix in memory (8 N^2 bytes).
_MATRIX_ALGORITHMS = ("average", "complete", "hdbscan")
MAX_MATRIX_PHOTOS = 30_000
# Label of a photo that is alone in its cluster (or not clustered), after :func:`numbered_clusters`.
ALONE = -1
_BLOCK_PAIRS = 1 << 23


class ClusteringError(ValueError):
    """Clustering that cannot run as asked: one line saying why and what to do."""


def threshold_edges(embeddings: np.ndarray, metric: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``i < j`` with ``d(i, j) <= threshold``, computed a block of rows at a time.

    Returns:
        ``(first (E,), second (E,))`` int64.
    """
    embeddings = np.asarray(embeddings, np.float32)
    block = max(1, _BLOCK_PAIRS // max(len(embeddings), 1))
    firsts, seconds = [], []
    for start in range(0, len(embeddings), block):
        distances = distance_matrix(embeddings[start:start + block], embeddings, metric)  # (B, N)
        rows, columns = np.nonzero(distances <= threshold)
        rows = rows + start
        upper = columns > rows
        firsts.append(rows[upper])
        seconds.append(columns[upper])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)


def chinese_whispers(num_nodes: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """dlib's Chinese whispers on an unweighted graph: (num_nodes,) int64 labels.

    dlib seeds its own random order, so the same graph gives the same labels.
    """
    from facetrip.data.alignment import import_dlib, on_dlib_thread

    dlib, _ = import_dlib("Chinese whispers clustering needs")
    # dlib reads the vertices from the edges: a self-loop on every photo (as dlib's own
    # chinese_whispers_clustering has) keeps a photo with no neighbour as its own cluster.
    edges = [(node, node) for node in range(num_nodes)] + list(zip(first.tolist(), second.tolist()))
    return np.asarray(on_dlib_thread(dlib.chinese_whispers, edges), np.int64)


def connected_clusters(num_nodes: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(num_nodes,) int64 connected-component labels of the graph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(first), np.int8), (first, second)), shape=(num_nodes, num_nodes))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def matrix_clusters(embeddings: np.ndarray, metric: str, threshold: float, algorithm: str) -> np.ndarray:
    """Agglomerative (average / complete linkage) or HDBSCAN labels on the full distance matrix."""
    distances = distance_matrix(embeddings, embeddings, metric).astype(np.float64)  # (N, N)
    np.fill_diagonal(distances, 0.0)
    distances = np.maximum(distances, distances.T)  # exactly symmetric, as the algorithms expect
    if algorithm == "hdbscan":
        from sklearn.cluster import HDBSCAN

        labels = HDBSCAN(min_cluster_size=2, metric="precomputed", copy=False).fit_predict(distances)
        noise = labels < 0  # HDBSCAN's noise: each its own cluster
        labels[noise] = labels.max(initial=-1) + 1 + np.arange(int(noise.sum()))
        return labels.astype(np.int64)
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=None, distance_threshold=float(threshold), metric="precomputed",
                                   linkage=algorithm).fit_predict(distances).astype(np.int64)


def cluster_embeddings(embeddings: np.ndarray, metric: str, threshold: float, algorithm: str = DEFAULT_ALGORITHM) -> np.ndarray:
    """Cluster labels of embeddings, photos within ``threshold`` of each other going together.

    Args:
        embeddings: (N, D).
        metric: the run's metric.
        threshold: the run's verification threshold (a distance under ``metric``).
        algorithm: one of :data:`ALGORITHMS`.

    Returns:
        (N,) int64 labels (arbitrary numbers; :func:`numbered_clusters` orders them).

    Raises:
        ClusteringError: an unknown algorithm, or too many photos for one that needs the distance matrix.
    """
    if algorithm not in ALGORITHMS:
        raise ClusteringError(f"Unknown clustering algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}.")
    embeddings = np.asarray(embeddings, np.float32)
    if len(embeddings) < 2:
        return np.arange(len(embeddings), dtype=np.int64)
    if algorithm in _MATRIX_ALGORITHMS:
        if len(embeddings) > MAX_MATRIX_PHOTOS:
            raise ClusteringError(
                f"{algorithm} needs all {len(embeddings):,} x {len(embeddings):,} distances in memory "
                f"(at most {MAX_MATRIX_PHOTOS:,} photos): use --algorithm chinese_whispers."
            )
        return matrix_clusters(embeddings, metric, threshold, algorithm)
    first, second = threshold_edges(embeddings, metric, threshold)
    if algorithm == "chinese_whispers":
        return chinese_whispers(len(embeddings), first, second)
    return connected_clusters(len(embeddings), first, second)


def numbered_clusters(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0, 1, ... by cluster size (largest first, ties by first photo); :data:`ALONE` for clusters of one."""
    labels = np.asarray(labels, np.int64)
    values, first_seen, inverse, counts = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.lexsort((first_seen, -counts))  # by size descending, then by first photo
    number = np.full(len(values), ALONE, np.int64)
    grouped = order[counts[order] >= 2]
    number[grouped] = np.arange(len(grouped))
    return number[inverse]
