"""Approximate nearest-neighbour search for large galleries: faiss's inverted lists (the optional extra ``facetrip[ann]``).

Exact search (:func:`facetrip.identification.search.top_people`) is one matrix product and
is the default; above :data:`ANN_MIN_ENTRIES` gallery photos, `facetrip index` saves an
IVF-Flat index with the gallery and `facetrip identify` searches it, asking for
:func:`candidates_for` nearest photos and re-scoring them exactly.

IVF-Flat (an inverted file over k-means cells): k-means splits the gallery into
``L = min(4 sqrt(N), N / 39)`` lists around centroids; a probe is compared with the
vectors of its :data:`LISTS_SEARCHED` nearest lists only. Chosen over HNSW graphs (faiss,
hnswlib, USearch) by measuring recall@1 against time (docs/identification.md): at 10^5
vectors it built 4 times faster than faiss's HNSW in two thirds of the memory, for the
same recall of probes near a gallery photo; HNSW answered 0.14 ms sooner, which the
seconds `identify` spends loading its model hide. At 10^6, 128 lists searched found the
right photo for 99.8% of such probes in 1.9 ms.

Euclidean and squared distances search L2 lists; cosine searches inner products of unit vectors.
"""

from __future__ import annotations

import math

import numpy as np

from facetrip.distances import unit_rows

LIBRARY = "faiss IVF-Flat"
# Gallery photos from which `index` builds, and `identify` uses, the ANN index (exact search below).
ANN_MIN_ENTRIES = 200_000
# Lists compared with each probe (faiss's nprobe), and k-means training points per list.
LISTS_SEARCHED = 128
TRAINING_POINTS_PER_LIST = 39
# Nearest photos fetched per probe for k people: several photos of one person may come first.
CANDIDATES_PER_PERSON = 10
_INSTALL = "pip install 'facetrip[ann]' (faiss-cpu)"
_SEED = 0


class AnnUnavailable(RuntimeError):
    """Approximate search was asked for, and its library is not installed."""


class AnnFileError(ValueError):
    """A saved approximate-search index that faiss cannot read: one line saying so."""


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
    """How many nearest gallery vectors to fetch for ``k`` people: ``min(N, max(10 k, 50))``."""
    return int(min(num_vectors, max(k * CANDIDATES_PER_PERSON, 50)))


def list_count(num_vectors: int) -> int:
    """``L = min(4 sqrt(N), N / 39)``, at least 1: faiss's rule of thumb, with enough training points per list."""
    return int(max(1, min(round(4 * math.sqrt(num_vectors)), num_vectors // TRAINING_POINTS_PER_LIST)))


def _searchable(vectors: np.ndarray, metric: str) -> np.ndarray:
    """The vectors as the index stores them: unit rows for cosine, as they are otherwise; float32, C order."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    if metric == "cosine":
        vectors = np.ascontiguousarray(unit_rows(vectors))  # (N, D) as facetrip.distances defines them
    return vectors


def build(vectors: np.ndarray, metric: str) -> bytes:
    """A serialised IVF-Flat index of (N, D) vectors, trained on a seeded sample of them; row i is id i."""
    import faiss

    vectors = _searchable(vectors, metric)
    dim, lists = vectors.shape[1], list_count(len(vectors))
    cosine = metric == "cosine"
    quantizer = faiss.IndexFlatIP(dim) if cosine else faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT if cosine else faiss.METRIC_L2)
    training = min(len(vectors), lists * TRAINING_POINTS_PER_LIST)
    index.train(vectors[np.random.default_rng(_SEED).choice(len(vectors), training, replace=False)])
    index.add(vectors)
    return faiss.serialize_index(index).tobytes()


def load(index_bytes: bytes, source: str = "the approximate-search index"):
    """The faiss index of serialised bytes (search it with :func:`nearest_rows`).

    Args:
        index_bytes: what :func:`build` or :func:`extend` returned, read back from a file.
        source: the file, for the message.

    Raises:
        AnnFileError: faiss cannot read the bytes (cut short, or not a faiss index).
    """
    import faiss

    rebuild = "build the index again with facetrip index RUN GALLERY -o DIR --overwrite"
    try:
        index = faiss.deserialize_index(np.frombuffer(index_bytes, np.uint8))
    except (RuntimeError, ValueError, MemoryError) as error:  # faiss reports a damaged file as RuntimeError
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[-1][:160]
        raise AnnFileError(f"{source} is corrupt, faiss cannot read it ({first_line}): {rebuild}.") from None
    if not isinstance(index, faiss.IndexIVFFlat):  # what build() writes; another kind lacks its lists
        raise AnnFileError(f"{source} is a faiss {type(index).__name__}, not the inverted-list index facetrip "
                           f"writes: {rebuild}.")
    return index


def size(index) -> int:
    """How many vectors a loaded index holds."""
    return int(index.ntotal)


def extend(index_bytes: bytes, new_vectors: np.ndarray, metric: str) -> bytes:
    """The index with new vectors added to its lists (their ids follow on from the index's)."""
    import faiss

    index = load(index_bytes)
    if len(new_vectors):
        index.add(_searchable(new_vectors, metric))
    return faiss.serialize_index(index).tobytes()


def nearest_rows(index, queries: np.ndarray, m: int, metric: str, lists_searched: int = LISTS_SEARCHED) -> np.ndarray:
    """(Q, m) int64 ids of (approximately) the m nearest vectors of each query, nearest first; -1 where none.

    Args:
        index: a loaded index (:func:`load`).
        queries: (Q, D) probes.
        m: neighbours per probe.
        metric: the gallery's metric.
        lists_searched: lists compared with each probe (more: slower, higher recall).
    """
    index.nprobe = int(min(lists_searched, index.nlist))
    _, rows = index.search(_searchable(queries, metric), m)
    return rows.astype(np.int64)
