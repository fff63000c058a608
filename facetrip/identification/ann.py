"""Approximate nearest-neighbour search for large galleries: faiss's HNSW graph (the optional extra ``facetrip[ann]``).

Exact search (:func:`facetrip.identification.search.top_people`) is one matrix product and
is the default; above :data:`ANN_MIN_ENTRIES` gallery photos, `facetrip index` saves an
HNSW graph (Malkov and Yashunin 2018) with the index and `facetrip identify` searches it,
asking for :func:`candidates_for` nearest photos and re-scoring them exactly. The library
and the numbers below were chosen by measuring recall@1 against time
(``scripts/bench_identify.py --scale``, docs/identification.md).

Euclidean and squared distances search the L2 graph; cosine searches inner products of
unit vectors. faiss runs on as many threads as the machine offers.
"""

from __future__ import annotations

import numpy as np

LIBRARY = "faiss"
# Gallery photos from which `index` builds, and `identify` uses, the graph (exact search below).
ANN_MIN_ENTRIES = 200_000
# HNSW: neighbours per node, candidate lists while building and while searching.
GRAPH_NEIGHBOURS = 32
BUILD_CANDIDATES = 80
SEARCH_CANDIDATES = 128
# Nearest photos fetched per probe for k people: several photos of one person may come first.
CANDIDATES_PER_PERSON = 10
_INSTALL = "pip install 'facetrip[ann]' (faiss-cpu)"


class AnnUnavailable(RuntimeError):
    """Approximate search was asked for, and its library is not installed."""


def available() -> bool:
    """Whether faiss can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def require_library() -> None:
    """Raise :class:`AnnUnavailable` (what to install) unless faiss can be imported."""
    if not available():
        raise AnnUnavailable(f"Approximate search needs faiss: {_INSTALL}; exact search needs nothing more.")


def candidates_for(k: int, num_vectors: int) -> int:
    """How many nearest gallery vectors to fetch for ``k`` people: ``min(N, max(k * 10, 50))``."""
    return int(min(num_vectors, max(k * CANDIDATES_PER_PERSON, 50)))


def _searchable(vectors: np.ndarray, metric: str) -> np.ndarray:
    """The vectors as the graph stores them: unit rows for cosine, as they are otherwise; float32, C order."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    if metric == "cosine":
        vectors = np.ascontiguousarray(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
    return vectors


def build(vectors: np.ndarray, metric: str) -> bytes:
    """A serialised HNSW graph of (N, D) vectors; row i of ``vectors`` is id i."""
    import faiss

    vectors = _searchable(vectors, metric)
    space = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    graph = faiss.IndexHNSWFlat(vectors.shape[1], GRAPH_NEIGHBOURS, space)
    graph.hnsw.efConstruction = BUILD_CANDIDATES
    graph.add(vectors)
    return faiss.serialize_index(graph).tobytes()


def _load(graph_bytes: bytes):
    import faiss

    return faiss.deserialize_index(np.frombuffer(graph_bytes, np.uint8))


def extend(graph_bytes: bytes, new_vectors: np.ndarray, metric: str) -> bytes:
    """The graph with new vectors added (their ids follow on from the graph's)."""
    import faiss

    graph = _load(graph_bytes)
    if len(new_vectors):
        graph.add(_searchable(new_vectors, metric))
    return faiss.serialize_index(graph).tobytes()


def nearest_rows(graph_bytes: bytes, queries: np.ndarray, m: int, metric: str,
                 search_candidates: int = SEARCH_CANDIDATES) -> np.ndarray:
    """(Q, m) int64 ids of (approximately) the m nearest vectors of each query, nearest first; -1 where none."""
    graph = _load(graph_bytes)
    graph.hnsw.efSearch = max(search_candidates, m)
    _, rows = graph.search(_searchable(queries, metric), m)
    return rows.astype(np.int64)
