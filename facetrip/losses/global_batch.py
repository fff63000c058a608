"""Online mining over a global batch split across replicas: each replica's anchors against every row.

Under a ``tf.distribute`` strategy a global batch of B rows is split into R local
batches; replica r holds rows ``offset_r .. offset_r + b_r - 1``. Mining each local batch
alone sees only a part of the identities and their negatives, and gives another loss.
Here replica r mines its own b_r anchors against all B rows (gathered from every
replica), so the rows of the (b_r, B) distance matrix it builds are exactly the rows
``offset_r ..`` of the single-device (B, B) matrix, and every mining choice (hardest
positive, hardest negative, semi-hard negative, active triplets) is the same.

Each replica returns a local loss sum and the count that normalises it. With the counts
summed over replicas (an all-reduce) the global loss is

    loss = sum_r loss_sum_r / sum_r count_r

and a replica contributing ``loss_sum_r / sum_r count_r`` makes the sum of the replicas'
gradients (what an optimizer under a strategy applies) the gradient of the single-device
loss on the concatenated batch. The counts are the anchors with a positive and a
negative (batch_hard), the valid (anchor, positive) pairs (semi_hard), the triplets with
a positive hinge loss (batch_all) or all valid triplets (batch_all with the soft margin).

These functions are pure TensorFlow on tensors: no strategy is needed to call them.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from facetrip.losses.distances import as_compute_tensor, resolve_metric, safe_sqrt
from facetrip.losses.masks import label_vector
from facetrip.losses.triplet import (
    Margin,
    _soft_batch_all_sums,
    _triplet_terms,
    count_valid_triplets,
    hardest_distances,
    hinge_batch_all_sums,
    is_soft_margin,
    positives_per_anchor,
    resolve_strategy,
    semi_hard_negative_distances,
    sort_negatives,
)


class TripletSums(NamedTuple):
    """One replica's share of a global-batch triplet loss: ``loss = sum of loss_sum / sum of count``."""

    loss_sum: tf.Tensor  # scalar, differentiable
    count: tf.Tensor  # scalar float, no gradient


def own_rows_mask(num_local: tf.Tensor, num_global: tf.Tensor, offset) -> tf.Tensor:
    """(b, B) bool, True where global column j is local row i itself (``j == offset + i``)."""
    rows = tf.range(num_local)[:, tf.newaxis] + tf.cast(offset, tf.int32)  # (b, 1)
    return tf.equal(rows, tf.range(num_global)[tf.newaxis, :])  # (b, B)


def global_batch_distances(local_embeddings, global_embeddings, offset, metric: str = "euclidean") -> tf.Tensor:
    """Distances from a replica's rows to every row of the global batch: rows of the (B, B) matrix.

    ``D[i, j] = ||l_i||^2 - 2 <l_i, g_j> + ||g_j||^2`` (clipped at 0) for ``squared``, its
    safe square root for ``euclidean``, ``1 - cos(l_i, g_j)`` for ``cosine``; exactly 0
    where ``j = offset + i`` (the row itself), as on the diagonal of
    :func:`~facetrip.losses.pairwise_distances`.

    Args:
        local_embeddings: (b, D) this replica's embeddings.
        global_embeddings: (B, D) the whole global batch, this replica's rows included.
        offset: index of this replica's first row in the global batch.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``.

    Returns:
        (b, B) float32 tensor (float64 for float64 input).
    """
    metric = resolve_metric(metric)
    local = as_compute_tensor(local_embeddings)
    global_ = tf.cast(as_compute_tensor(global_embeddings), local.dtype)
    not_self = tf.cast(
        tf.logical_not(own_rows_mask(tf.shape(local)[0], tf.shape(global_)[0], offset)), local.dtype
    )  # (b, B)
    if metric == "cosine":
        similarity = tf.matmul(tf.math.l2_normalize(local, axis=1), tf.math.l2_normalize(global_, axis=1),
                               transpose_b=True)  # (b, B)
        return tf.clip_by_value(1.0 - similarity, 0.0, 2.0) * not_self
    dot_product = tf.matmul(local, global_, transpose_b=True)  # (b, B)
    local_norm = tf.reduce_sum(tf.square(local), axis=1)  # (b,)
    global_norm = tf.reduce_sum(tf.square(global_), axis=1)  # (B,)
    squared_distances = local_norm[:, tf.newaxis] - 2.0 * dot_product + global_norm[tf.newaxis, :]  # (b, B)
    squared_distances = tf.maximum(squared_distances, 0.0) * not_self
    if metric == "squared":
        return squared_distances
    return safe_sqrt(squared_distances)


def global_batch_masks(local_labels, global_labels, offset) -> tuple[tf.Tensor, tf.Tensor]:
    """Valid (anchor, positive) and (anchor, negative) pairs of a replica's anchors in the global batch.

    Args:
        local_labels: (b,) or (b, 1) this replica's labels.
        global_labels: (B,) or (B, 1) the global batch's labels.
        offset: index of this replica's first row in the global batch.

    Returns:
        ``(positive, negative)``, two (b, B) bool tensors: same label and not the row
        itself; different label.
    """
    local, global_ = label_vector(local_labels), label_vector(global_labels)
    same = tf.equal(local[:, tf.newaxis], global_[tf.newaxis, :])  # (b, B)
    own = own_rows_mask(tf.shape(local)[0], tf.shape(global_)[0], offset)
    return tf.logical_and(same, tf.logical_not(own)), tf.logical_not(same)


def _masked_sum_and_count(values: tf.Tensor, mask: tf.Tensor) -> TripletSums:
    total = tf.reduce_sum(tf.where(mask, values, tf.zeros_like(values)))
    return TripletSums(total, tf.reduce_sum(tf.cast(mask, values.dtype)))


def global_batch_triplet_sums(
    local_labels, local_embeddings, global_labels, global_embeddings, offset,
    strategy: str = "batch_hard", margin: Margin = 0.2, metric: str = "euclidean",
) -> TripletSums:
    """A replica's loss sum and count for an online strategy mined over the global batch.

    With ``S_r, N_r`` the sums of replica r, ``sum_r S_r / sum_r N_r`` equals the
    single-device loss of :func:`~facetrip.losses.online_triplet_loss` on the
    concatenated batch, in value and gradient:

    - ``batch_hard``: ``S = sum over valid local anchors of l(max_p d_ap - min_n d_an)``,
      ``N`` = local anchors with a positive and a negative in the global batch;
    - ``semi_hard``: ``S`` = sum over valid local (anchor, positive) pairs of
      ``l(d_ap - d_an*)`` with the semi-hard negative ``n*``, ``N`` = those pairs;
    - ``batch_all``: ``S`` = sum of ``l(d_ap - d_an)`` over the local anchors' valid
      triplets, ``N`` = those with a positive hinge loss (all of them for the soft margin);

    with ``l(x) = max(x + margin, 0)`` or ``softplus(x)`` (``margin="soft"``).

    Args:
        local_labels: (b,) or (b, 1) this replica's labels.
        local_embeddings: (b, D) this replica's embeddings.
        global_labels: (B,) or (B, 1) every replica's labels, in replica order.
        global_embeddings: (B, D) every replica's embeddings, likewise.
        offset: index of this replica's first row in the global batch.
        strategy: ``batch_all``, ``batch_hard`` or ``semi_hard``.
        margin: number >= 0, or ``"soft"``.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``.

    Returns:
        :class:`TripletSums`; both 0 for a replica without anchors or valid triplets.
    """
    strategy = resolve_strategy(strategy)
    is_soft_margin(margin)  # refuses a bad margin here, not inside a branch
    local_embeddings = as_compute_tensor(local_embeddings)
    global_embeddings = tf.cast(as_compute_tensor(global_embeddings), local_embeddings.dtype)

    def mined() -> TripletSums:
        return _triplet_sums(local_labels, local_embeddings, global_labels, global_embeddings, offset, strategy,
                             margin, metric)

    def nothing() -> TripletSums:  # a replica left without rows by an uneven split; searchsorted refuses 0 rows
        zero = 0.0 * tf.reduce_sum(global_embeddings)  # keeps the gradient defined (zero) for the gather
        return TripletSums(zero, tf.zeros([], local_embeddings.dtype))

    return TripletSums(*tf.cond(tf.shape(local_embeddings)[0] > 0, mined, nothing))


def _triplet_sums(local_labels, local_embeddings, global_labels, global_embeddings, offset, strategy, margin,
                  metric) -> TripletSums:
    """:func:`global_batch_triplet_sums` of a replica with at least one row."""
    distances = global_batch_distances(local_embeddings, global_embeddings, offset, metric)  # (b, B)
    positive, negative = global_batch_masks(local_labels, global_labels, offset)  # (b, B) each
    if strategy == "batch_hard":
        hardest = hardest_distances(distances, positive, negative)
        anchor_loss = _triplet_terms(hardest.hardest_positive - hardest.hardest_negative, margin)  # (b,)
        return _masked_sum_and_count(anchor_loss, hardest.valid_anchor)
    positives = positives_per_anchor(distances, positive)  # (b, P_max)
    if strategy == "semi_hard":
        sorted_negatives = sort_negatives(distances, negative)
        chosen = semi_hard_negative_distances(positives, sorted_negatives)  # (b, P_max)
        pair_loss = _triplet_terms(positives.distances - chosen, margin)  # (b, P_max)
        valid_pair = tf.logical_and(positives.valid, (sorted_negatives.count > 0)[:, tf.newaxis])  # (b, P_max)
        return _masked_sum_and_count(pair_loss, valid_pair)
    if is_soft_margin(margin):
        loss_sum, _ = _soft_batch_all_sums(distances, positive, negative)
        count = count_valid_triplets(positive, negative)
    else:
        loss_sum, count = hinge_batch_all_sums(positives, sort_negatives(distances, negative), margin)
    return TripletSums(loss_sum, tf.cast(count, distances.dtype))


def normalised_share(sums: TripletSums, global_count: tf.Tensor) -> tf.Tensor:
    """``loss_sum / global_count``: this replica's share of the global loss; 0 (not NaN) for a count of 0."""
    return tf.math.divide_no_nan(sums.loss_sum, tf.cast(global_count, sums.loss_sum.dtype))
