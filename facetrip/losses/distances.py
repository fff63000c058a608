"""Pairwise and paired distances between embeddings in TensorFlow, NaN-free in value and gradient.

The definitions are those of :mod:`facetrip.distances` (metric names, formulas, the cosine
convention), here for the losses:

- ``euclidean``: ``||x_i - x_j||``
- ``squared``:   ``||x_i - x_j||^2``
- ``cosine``:    ``clip(1 - <u(x_i), u(x_j)>, 0, 2)``, ``u(x) = x / max(||x||, 1e-6)``, in ``[0, 2]``;
  a zero vector is at distance 1 from every other row

All distances are computed in float32 (float64 stays float64), whatever the embedding
dtype, so that float16 / bfloat16 embeddings from mixed-precision models do not lose
the small differences that triplet losses live on.
"""

from __future__ import annotations

import tensorflow as tf

from facetrip.distances import METRICS, SQUARED_NORM_FLOOR, resolve_metric

__all__ = ["METRICS", "as_compute_tensor", "compute_dtype", "paired_distances", "pairwise_distances",
           "resolve_metric", "safe_sqrt"]

# Squared distances at or below this are treated as exactly zero before the square root:
# d sqrt(x)/dx = 1 / (2 sqrt(x)) is infinite at 0 (the classic NaN in triplet losses),
# and below ~1e-12 a float32 squared distance computed as |a|^2 - 2ab + |b|^2 is
# rounding noise anyway. The value this discards is at most sqrt(1e-16) = 1e-8.
_SQRT_EPSILON = 1e-16


def compute_dtype(embeddings: tf.Tensor) -> tf.DType:
    """float64 for float64 input, float32 for everything else (float16, bfloat16, ...)."""
    return tf.float64 if embeddings.dtype == tf.float64 else tf.float32


def as_compute_tensor(embeddings) -> tf.Tensor:
    """Embeddings as a float32 (or float64) tensor; the cast keeps gradients flowing."""
    embeddings = tf.convert_to_tensor(embeddings)
    return tf.cast(embeddings, compute_dtype(embeddings))


def safe_sqrt(squared_distances: tf.Tensor) -> tf.Tensor:
    """``sqrt(x)`` with a finite gradient everywhere: values <= 1e-16 give 0 and gradient 0.

    The double ``tf.where`` keeps the square root's infinite derivative at 0 out of the
    backward pass (a single ``where`` would still multiply 0 by inf).
    """
    is_positive = squared_distances > _SQRT_EPSILON
    safe_input = tf.where(is_positive, squared_distances, tf.ones_like(squared_distances))
    return tf.where(is_positive, tf.sqrt(safe_input), tf.zeros_like(squared_distances))


def pairwise_distances(embeddings, squared: bool = False, metric: str | None = None) -> tf.Tensor:
    """Distance matrix between all rows of ``embeddings``.

    ``D[i, j] = ||e_i||^2 - 2 <e_i, e_j> + ||e_j||^2`` (clipped at 0) for ``squared``, its
    safe square root for ``euclidean``, and ``clip(1 - <u(e_i), u(e_j)>, 0, 2)`` for ``cosine``
    (:mod:`facetrip.distances`). The diagonal is exactly 0, no entry is negative, and
    gradients are finite everywhere, including for identical embeddings.

    Args:
        embeddings: (B, D) tensor of any float dtype.
        squared: classic flag, True for squared euclidean distances.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``; overrides ``squared``.

    Returns:
        (B, B) float32 tensor (float64 for float64 input).

    Example:
        >>> pairwise_distances([[0.0, 0.0], [3.0, 4.0]]).numpy()
        array([[0., 5.],
               [5., 0.]], dtype=float32)
    """
    metric = resolve_metric(metric, squared)
    embeddings = as_compute_tensor(embeddings)
    off_diagonal = 1.0 - tf.eye(tf.shape(embeddings)[0], dtype=embeddings.dtype)  # (B, B)

    if metric == "cosine":
        unit = tf.math.l2_normalize(embeddings, axis=1, epsilon=SQUARED_NORM_FLOOR)  # (B, D); zero rows stay zero
        cosine_similarity = tf.matmul(unit, unit, transpose_b=True)  # (B, B)
        distances = tf.clip_by_value(1.0 - cosine_similarity, 0.0, 2.0)
        return distances * off_diagonal

    dot_product = tf.matmul(embeddings, embeddings, transpose_b=True)  # (B, B)
    square_norm = tf.linalg.diag_part(dot_product)  # (B,)
    squared_distances = (
        tf.expand_dims(square_norm, 1) - 2.0 * dot_product + tf.expand_dims(square_norm, 0)
    )  # (B, B)
    squared_distances = tf.maximum(squared_distances, 0.0) * off_diagonal
    if metric == "squared":
        return squared_distances
    return safe_sqrt(squared_distances)


def paired_distances(x, y, squared: bool = False, metric: str | None = None) -> tf.Tensor:
    """Row-wise distances ``d(x_i, y_i)``, for explicit (anchor, positive, negative) triplets.

    ``squared``: ``||x_i - y_i||^2``; ``euclidean``: its safe square root; ``cosine``:
    ``clip(1 - <u(x_i), u(y_i)>, 0, 2)`` (:mod:`facetrip.distances`).

    Args:
        x: (N, D) tensor.
        y: (N, D) tensor.
        squared: classic flag, True for squared euclidean distances.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``; overrides ``squared``.

    Returns:
        (N,) float32 tensor (float64 if both inputs are float64).
    """
    metric = resolve_metric(metric, squared)
    x, y = as_compute_tensor(x), as_compute_tensor(y)
    if x.dtype != y.dtype:
        x, y = tf.cast(x, tf.float32), tf.cast(y, tf.float32)
    if metric == "cosine":
        cosine_similarity = tf.reduce_sum(
            tf.math.l2_normalize(x, axis=-1, epsilon=SQUARED_NORM_FLOOR)
            * tf.math.l2_normalize(y, axis=-1, epsilon=SQUARED_NORM_FLOOR),
            axis=-1,
        )  # (N,)
        return tf.clip_by_value(1.0 - cosine_similarity, 0.0, 2.0)
    squared_distances = tf.reduce_sum(tf.square(x - y), axis=-1)  # (N,)
    if metric == "squared":
        return squared_distances
    return safe_sqrt(squared_distances)
