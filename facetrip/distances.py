"""Distances between embeddings: the one set of definitions, and their NumPy forms.

Three metrics, chosen by name (:data:`METRICS`):

- ``euclidean``: ``d(x, y) = ||x - y||``, in ``[0, inf)``
- ``squared``:   ``d(x, y) = ||x - y||^2``, in ``[0, inf)``
- ``cosine``:    ``d(x, y) = clip(1 - <u(x), u(y)>, 0, 2)`` with ``u(x) = x / max(||x||, 1e-6)``,
  in ``[0, 2]``

The cosine convention: every vector is divided by its norm floored at 1e-6 (its squared
norm floored at :data:`SQUARED_NORM_FLOOR` = 1e-12, as ``tf.math.l2_normalize`` does), so
for any vector of norm at least 1e-6 the distance is exactly ``1 - cos(x, y)``. A zero
vector stays the zero vector: its cosine similarity with every vector is 0, so it is at
distance 1 from every vector, another zero vector included (the one exception is the
diagonal of :func:`facetrip.losses.distances.pairwise_distances`, a row's distance to
itself, which is exactly 0). Vectors shorter than 1e-6 are rounding noise of a zero
vector and are only scaled by 1e6, so their similarity lies between 0 and their cosine.
The clip keeps rounding from giving a distance below 0 or above 2.

Distances are computed in float32, whatever the input dtype (float64 stays float64).
The TensorFlow forms of these definitions, with gradients that stay finite at zero
distance, are :mod:`facetrip.losses.distances`; this module is NumPy only, so that
evaluation, identification, mining and verification load without TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np

METRICS = ("euclidean", "squared", "cosine")

# Cosine distance: a vector's squared norm is floored at this before dividing by its root
# (the epsilon of tf.math.l2_normalize), so a zero vector maps to the zero vector.
SQUARED_NORM_FLOOR = 1e-12


def resolve_metric(metric: str | None = None, squared: bool = False) -> str:
    """The metric name that ``metric`` and the classic ``squared`` flag ask for.

    Args:
        metric: ``"euclidean"``, ``"squared"``, ``"cosine"`` (any case), or None.
        squared: the classic flag; True means ``"squared"`` when ``metric`` is None.

    Returns:
        One of :data:`METRICS`.

    Raises:
        ValueError: on an unknown metric, or ``squared=True`` with another metric.
    """
    if metric is None:
        return "squared" if squared else "euclidean"
    name = str(metric).lower()
    if name not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}: choose one of {', '.join(METRICS)}.")
    if squared and name != "squared":
        raise ValueError(f"squared=True contradicts metric={metric!r}: pass one or the other.")
    return name


def as_compute_array(vectors) -> np.ndarray:
    """``vectors`` as a float32 array (float64 stays float64; no copy when already so)."""
    vectors = np.asarray(vectors)
    return vectors.astype(np.float64 if vectors.dtype == np.float64 else np.float32, copy=False)


def unit_rows(vectors) -> np.ndarray:
    """``u(x) = x / max(||x||, 1e-6)`` along the last axis: unit vectors, zero vectors stay zero.

    Args:
        vectors: (..., D) array.

    Returns:
        (..., D) float32 array (float64 for float64 input).
    """
    vectors = as_compute_array(vectors)
    squared_norms = np.einsum("...d,...d->...", vectors, vectors, dtype=np.float64)  # (...,)
    norms = np.sqrt(np.maximum(squared_norms, SQUARED_NORM_FLOOR)).astype(vectors.dtype)  # (...,)
    return vectors / norms[..., None]  # (..., D)


def cosine_distance_from_similarity(similarity):
    """``clip(1 - s, 0, 2)``: the cosine distance of a similarity ``s = <u(x), u(y)>``, same shape."""
    return np.clip(1.0 - similarity, 0.0, 2.0)


def paired_distances(first, second, metric: str = "euclidean") -> np.ndarray:
    """Row-wise distances ``d(first[m], second[m])``.

    ``euclidean`` and ``squared`` come from the differences ``first[m] - second[m]``, so
    they are exact to rounding even for nearly identical rows; ``cosine`` is
    ``clip(1 - <u(first[m]), u(second[m])>, 0, 2)``.

    Args:
        first: (M, D) array (any leading shape, with ``second`` of the same shape).
        second: (M, D) array.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``.

    Returns:
        (M,) float32 distances (float64 when both inputs are float64).

    Example:
        >>> paired_distances([[0.0, 0.0], [1.0, 0.0]], [[3.0, 4.0], [0.0, 2.0]], "cosine")
        array([1., 1.])
    """
    metric = resolve_metric(metric)
    first, second = as_compute_array(first), as_compute_array(second)
    if first.dtype != second.dtype:
        first, second = first.astype(np.float32), second.astype(np.float32)
    if metric == "cosine":
        similarity = np.einsum("...d,...d->...", unit_rows(first), unit_rows(second))  # (M,)
        return cosine_distance_from_similarity(similarity)
    squared_distances = np.sum((first - second) ** 2, axis=-1)  # (M,)
    return squared_distances if metric == "squared" else np.sqrt(squared_distances)


@dataclasses.dataclass
class PreparedRows:
    """The right-hand rows of a distance matrix, with what every block of left-hand rows needs computed once.

    Attributes:
        vectors: (N, D) float32 (float64 stays float64): ``u(x)`` rows for cosine, the vectors otherwise.
        squared_norms: (N,) ``||x||^2`` in the vectors' dtype (None for cosine).
        metric: one of :data:`METRICS`.
    """

    vectors: np.ndarray
    squared_norms: np.ndarray | None
    metric: str

    @classmethod
    def of(cls, vectors, metric: str) -> PreparedRows:
        """Prepare (N, D) ``vectors`` for :func:`distances_to` under ``metric``."""
        metric = resolve_metric(metric)
        vectors = as_compute_array(vectors)
        if metric == "cosine":
            return cls(unit_rows(vectors), None, metric)
        return cls(vectors, np.einsum("nd,nd->n", vectors, vectors), metric)


def distances_to(queries, prepared: PreparedRows) -> np.ndarray:
    """All distances from ``queries`` to prepared rows, as one matrix product.

    ``squared``: ``max(||q||^2 + ||x||^2 - 2 <q, x>, 0)`` (fast, but for nearly identical
    rows it is rounding noise of order ``1e-7 ||q||^2`` in float32, so ``euclidean`` near 0 is
    only good to about ``3e-4 ||q||``; :func:`paired_distances` is exact there);
    ``euclidean``: its square root; ``cosine``: ``clip(1 - <u(q), u(x)>, 0, 2)``.

    Args:
        queries: (Q, D) array.
        prepared: the (N, D) rows, from :meth:`PreparedRows.of`.

    Returns:
        (Q, N) distances in the dtype of the prepared rows.
    """
    queries = np.asarray(queries, prepared.vectors.dtype)
    if prepared.metric == "cosine":
        return cosine_distance_from_similarity(unit_rows(queries) @ prepared.vectors.T)  # (Q, N)
    products = prepared.vectors @ queries.T  # (N, Q)
    squared = np.sum(queries**2, axis=1)[:, None] + prepared.squared_norms[None, :] - 2.0 * products.T  # (Q, N)
    np.maximum(squared, 0.0, out=squared)
    return squared if prepared.metric == "squared" else np.sqrt(squared, out=squared)


def distance_matrix(first, second, metric: str = "euclidean") -> np.ndarray:
    """All distances ``D[i, j] = d(first[i], second[j])``, as one matrix product (:func:`distances_to`).

    Args:
        first: (Q, D) array.
        second: (N, D) array.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``.

    Returns:
        (Q, N) float32 distances (float64 when both inputs are float64).
    """
    first, second = as_compute_array(first), as_compute_array(second)
    if first.dtype != second.dtype:
        first, second = first.astype(np.float32), second.astype(np.float32)
    return distances_to(first, PreparedRows.of(second, metric))
