"""Cross-batch memory (XBM, Wang et al., CVPR 2020): mine each batch against earlier embeddings too.

A memory holds M embeddings (and their labels) of earlier batches. The online-mining
losses of :mod:`facetrip.losses.triplet` take it as ``memory_embeddings`` /
``memory_labels``: the anchors stay the batch's B rows, and positives and negatives range
over the batch's rows and the memory's rows together. The losses then work on a
(B, B + M) distance matrix and masks, the batch's (B, B) block first and the
(B, M) anchor-to-memory block beside it, so time and memory stay O(B (B + M)); no
(B + M, B + M) matrix is built. Memory rows carry no gradient.

With an empty memory (M = 0) the (B, B + M) matrix is the batch's (B, B) matrix, and
every loss is exactly the batch-only loss.

:func:`memory_enqueue` and :func:`memory_contents` keep the memory as a fixed-size
first-in first-out ring buffer in plain tensors, so that a training step can hold it in
variables of a fixed shape.
"""

from __future__ import annotations

import tensorflow as tf

from facetrip.distances import SQUARED_NORM_FLOOR
from facetrip.losses.distances import as_compute_tensor, pairwise_distances, resolve_metric, safe_sqrt
from facetrip.losses.masks import anchor_negative_mask, anchor_positive_mask, label_vector

__all__ = ["cross_distances", "memory_contents", "memory_distances_and_masks", "memory_enqueue"]


def cross_distances(embeddings, other_embeddings, squared: bool = False, metric: str | None = None) -> tf.Tensor:
    """Distances from every row of ``embeddings`` to every row of ``other_embeddings``.

    The formulas of :func:`~facetrip.losses.pairwise_distances`, between two sets:
    ``D[i, j] = ||x_i||^2 - 2 <x_i, y_j> + ||y_j||^2`` (clipped at 0) for ``squared``, its
    safe square root for ``euclidean``, ``clip(1 - <u(x_i), u(y_j)>, 0, 2)`` for ``cosine``.
    No entry is treated as a diagonal: the two sets are different rows.

    Args:
        embeddings: (B, D) tensor of any float dtype.
        other_embeddings: (M, D) tensor, cast to the dtype ``embeddings`` is computed in.
        squared: classic flag, True for squared euclidean distances.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``; overrides ``squared``.

    Returns:
        (B, M) float32 tensor (float64 for float64 ``embeddings``).
    """
    metric = resolve_metric(metric, squared)
    rows = as_compute_tensor(embeddings)
    columns = tf.cast(as_compute_tensor(other_embeddings), rows.dtype)
    if metric == "cosine":
        similarity = tf.matmul(
            tf.math.l2_normalize(rows, axis=1, epsilon=SQUARED_NORM_FLOOR),
            tf.math.l2_normalize(columns, axis=1, epsilon=SQUARED_NORM_FLOOR),
            transpose_b=True,
        )  # (B, M)
        return tf.clip_by_value(1.0 - similarity, 0.0, 2.0)
    dot_product = tf.matmul(rows, columns, transpose_b=True)  # (B, M)
    row_norm = tf.reduce_sum(tf.square(rows), axis=1)  # (B,)
    column_norm = tf.reduce_sum(tf.square(columns), axis=1)  # (M,)
    squared_distances = tf.maximum(row_norm[:, tf.newaxis] - 2.0 * dot_product + column_norm[tf.newaxis, :], 0.0)
    if metric == "squared":
        return squared_distances  # (B, M)
    return safe_sqrt(squared_distances)  # (B, M)


def memory_distances_and_masks(labels, embeddings, memory_labels, memory_embeddings, squared: bool = False,
                               metric: str | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The batch's anchors against the batch's rows and the memory's rows: distances and masks.

    Column j < B is batch row j, column B + k is memory row k. A column is a positive of
    anchor a when it has a's label and is not a itself (memory rows never are), a
    negative when its label differs. ``D[a, B + k] = d(e_a, stop_gradient(m_k))``.

    Args:
        labels: (B,) or (B, 1) the batch's identity labels.
        embeddings: (B, D) the batch's embeddings.
        memory_labels: (M,) or (M, 1) the memory's labels, comparable with ``labels``.
        memory_embeddings: (M, D) the memory's embeddings; no gradient flows into them.
        squared: classic flag, True for squared euclidean distances.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``; overrides ``squared``.

    Returns:
        ``(distances, positive_mask, negative_mask)``: (B, B + M) float, bool, bool.
    """
    embeddings = as_compute_tensor(embeddings)
    memory_embeddings = tf.stop_gradient(tf.cast(as_compute_tensor(memory_embeddings), embeddings.dtype))
    labels = label_vector(labels)  # (B,)
    memory_labels = label_vector(memory_labels)  # (M,)
    if memory_labels.dtype != labels.dtype:
        memory_labels = tf.cast(memory_labels, labels.dtype)

    distances = tf.concat(
        [
            pairwise_distances(embeddings, squared=squared, metric=metric),  # (B, B)
            cross_distances(embeddings, memory_embeddings, squared=squared, metric=metric),  # (B, M)
        ],
        axis=1,
    )  # (B, B + M)
    same_as_memory = tf.equal(labels[:, tf.newaxis], memory_labels[tf.newaxis, :])  # (B, M)
    positive = tf.concat([anchor_positive_mask(labels), same_as_memory], axis=1)  # (B, B + M)
    negative = tf.concat([anchor_negative_mask(labels), tf.logical_not(same_as_memory)], axis=1)  # (B, B + M)
    return distances, positive, negative


# ------------------------------------------------------------------------- the FIFO queue


def memory_enqueue(memory_embeddings, memory_labels, count, new_embeddings, new_labels):
    """Push a batch into a fixed-size first-in first-out memory, overwriting the oldest rows.

    The memory is a ring buffer of capacity C: the i-th row ever pushed (from 0) lives in
    slot ``i mod C``. ``count`` is the number of rows pushed so far; new row j goes to slot
    ``(count + j) mod C``. A batch larger than C keeps only its last C rows, as pushing
    its rows one by one would.

    Args:
        memory_embeddings: (C, D) the buffer.
        memory_labels: (C,) the buffer's labels.
        count: scalar int, rows pushed so far (any number >= 0, not capped at C).
        new_embeddings: (b, D) rows to push; their gradient is stopped.
        new_labels: (b,) or (b, 1) their labels.

    Returns:
        ``(memory_embeddings, memory_labels, count + b)``, the buffers with the same shapes
        and dtypes.
    """
    memory_embeddings = tf.convert_to_tensor(memory_embeddings)
    memory_labels = tf.convert_to_tensor(memory_labels)
    count = tf.convert_to_tensor(count)
    new_embeddings = tf.stop_gradient(tf.cast(new_embeddings, memory_embeddings.dtype))  # (b, D)
    new_labels = tf.cast(label_vector(new_labels), memory_labels.dtype)  # (b,)
    capacity = tf.shape(memory_embeddings, out_type=count.dtype)[0]
    num_new = tf.shape(new_embeddings, out_type=count.dtype)[0]
    num_kept = tf.minimum(num_new, capacity)  # a scatter with repeated slots has no defined winner
    kept_embeddings, kept_labels = new_embeddings[num_new - num_kept :], new_labels[num_new - num_kept :]  # (k, ...)
    first = count + num_new - num_kept
    slots = tf.math.floormod(first + tf.range(num_kept, dtype=count.dtype), tf.maximum(capacity, 1))[:, tf.newaxis]
    return (
        tf.tensor_scatter_nd_update(memory_embeddings, slots, kept_embeddings),  # (C, D)
        tf.tensor_scatter_nd_update(memory_labels, slots, kept_labels),  # (C,)
        count + num_new,
    )


def memory_contents(memory_embeddings, memory_labels, count):
    """The rows a ring buffer holds, oldest first: what to pass to a loss as the memory.

    Args:
        memory_embeddings: (C, D) the buffer of :func:`memory_enqueue`.
        memory_labels: (C,) its labels.
        count: scalar int, rows pushed so far.

    Returns:
        ``(embeddings, labels)``: (min(count, C), D) and (min(count, C),), in push order.
    """
    memory_embeddings = tf.convert_to_tensor(memory_embeddings)
    memory_labels = tf.convert_to_tensor(memory_labels)
    count = tf.convert_to_tensor(count)
    capacity = tf.shape(memory_embeddings, out_type=count.dtype)[0]
    num_held = tf.minimum(count, capacity)
    oldest = count - num_held  # the push index of the oldest row held
    slots = tf.math.floormod(oldest + tf.range(num_held, dtype=count.dtype), tf.maximum(capacity, 1))  # (H,)
    return tf.gather(memory_embeddings, slots), tf.gather(memory_labels, slots)
