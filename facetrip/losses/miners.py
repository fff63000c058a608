"""Miners: the (anchor, positive, negative) triplets each online-mining strategy selects.

The fused losses of :mod:`facetrip.losses.triplet` mine and reduce in one O(B^2) pass and
stay the fast path. A miner returns the selection itself, as indices into the batch, so
that it can be paired with a per-triplet loss of one's own::

    mined = semi_hard_miner(labels, embeddings, metric="cosine")
    anchor, positive, negative = tf.unstack(tf.gather(embeddings, mined.valid_triplets()), axis=1)  # (T, D) each
    loss = triplet_loss(anchor, positive, negative, margin=0.2, metric="cosine")

Every miner returns a :class:`MinedTriplets` of four (N,) vectors, ``anchor``, ``positive``
and ``negative`` (int32 row indices) and ``valid`` (bool); the mean of a per-triplet loss
over the valid rows is the fused loss of the same strategy:

- :func:`batch_hard_miner`: one row per anchor (N = B), its hardest positive and hardest
  negative; the mean over valid rows is :func:`batch_hard_triplet_loss`.
- :func:`semi_hard_miner`: one row per slot of each anchor's (B, P_max) table of positives
  (N = B * P_max, P_max = K - 1 for P x K batches), the pair's semi-hard negative; the
  mean over valid rows is :func:`batch_semi_hard_triplet_loss`.
- :func:`batch_all_miner`: every valid triplet (N = T, all rows valid), or with a number
  ``margin`` only those with a positive hinge loss; the mean over those is
  :func:`batch_all_triplet_loss`.

Rows that are not valid (an anchor without a positive or a negative, a padding slot)
hold the anchor's own index as positive and negative, so gathering them is always safe;
:meth:`MinedTriplets.valid_triplets` drops them.

Ties: where several rows are equally hard (the same distance), the miner picks the
lowest row index, as a stable sort would.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from facetrip.losses.distances import pairwise_distances
from facetrip.losses.masks import anchor_negative_mask, anchor_positive_mask
from facetrip.losses.triplet import (
    Margin,
    PositivePairs,
    hardest_distances,
    is_soft_margin,
    positives_per_anchor,
    semi_hard_negative_distances,
    sort_negatives,
)

__all__ = ["MinedTriplets", "batch_all_miner", "batch_hard_miner", "semi_hard_miner"]


class MinedTriplets(NamedTuple):
    """The triplets a miner selects, as row indices into the batch."""

    anchor: tf.Tensor  # (N,) int32
    positive: tf.Tensor  # (N,) int32, the anchor itself where not valid
    negative: tf.Tensor  # (N,) int32, the anchor itself where not valid
    valid: tf.Tensor  # (N,) bool

    def valid_triplets(self) -> tf.Tensor:
        """(T, 3) int32 rows ``(anchor, positive, negative)`` of the valid triplets, in row order."""
        stacked = tf.stack([self.anchor, self.positive, self.negative], axis=1)  # (N, 3)
        return tf.boolean_mask(stacked, self.valid)  # (T, 3)


def _lowest_column(mask: tf.Tensor) -> tf.Tensor:
    """(B,) int32 index of the first True column of each row of a (B, B) mask; B where none."""
    num_columns = tf.shape(mask)[1]
    columns = tf.broadcast_to(tf.range(num_columns)[tf.newaxis, :], tf.shape(mask))  # (B, B)
    return tf.reduce_min(tf.where(mask, columns, num_columns), axis=1)  # (B,)


def _valid_or_anchor(index: tf.Tensor, valid: tf.Tensor, anchor: tf.Tensor) -> tf.Tensor:
    return tf.where(valid, tf.cast(index, tf.int32), anchor)


def batch_hard_miner(labels, embeddings, *, squared: bool = False, metric: str | None = None) -> MinedTriplets:
    """Each anchor's hardest positive and hardest negative (Hermans et al. 2017).

    ``positive[a] = argmax_{p: label p = label a, p != a} d_ap`` and
    ``negative[a] = argmin_{n: label n != label a} d_an``, the lowest index on ties.
    The mean of ``max(d_ap - d_an + margin, 0)`` over the valid rows is
    :func:`~facetrip.losses.batch_hard_triplet_loss`.

    Args:
        labels: (B,) or (B, 1) identity labels, integer, float or string.
        embeddings: (B, D) float tensor.
        squared: classic flag for squared euclidean distances.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``; overrides ``squared``.

    Returns:
        :class:`MinedTriplets` of (B,) vectors: ``anchor[a] = a``, and ``valid[a]`` where
        the anchor has both a positive and a negative in the batch.
    """
    distances = pairwise_distances(embeddings, squared=squared, metric=metric)  # (B, B)
    positive_mask, negative_mask = anchor_positive_mask(labels), anchor_negative_mask(labels)  # (B, B)
    hardest = hardest_distances(distances, positive_mask, negative_mask)
    is_hardest_positive = tf.logical_and(positive_mask, distances == hardest.hardest_positive[:, tf.newaxis])  # (B, B)
    is_hardest_negative = tf.logical_and(negative_mask, distances == hardest.hardest_negative[:, tf.newaxis])  # (B, B)
    anchor = tf.range(tf.shape(distances)[0])  # (B,)
    return MinedTriplets(
        anchor=anchor,
        positive=_valid_or_anchor(_lowest_column(is_hardest_positive), hardest.valid_anchor, anchor),
        negative=_valid_or_anchor(_lowest_column(is_hardest_negative), hardest.valid_anchor, anchor),
        valid=hardest.valid_anchor,
    )


def semi_hard_miner(labels, embeddings, *, squared: bool = False, metric: str | None = None) -> MinedTriplets:
    """For every (anchor, positive) pair, its semi-hard negative (Schroff et al. 2015, FaceNet).

    The negative is the closest one farther than the positive,
    ``argmin_{n: d_an > d_ap} d_an``; where no negative is that far, the farthest one,
    ``argmax_n d_an``; the lowest index on ties. This is the rule of
    :func:`~facetrip.losses.batch_semi_hard_triplet_loss`: the mean of
    ``max(d_ap - d_an + margin, 0)`` over the valid rows is that loss.

    Args:
        labels: (B,) or (B, 1) identity labels, integer, float or string.
        embeddings: (B, D) float tensor.
        squared: classic flag for squared euclidean distances.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``; overrides ``squared``.

    Returns:
        :class:`MinedTriplets` of (B * P_max,) vectors, P_max the most positives of any
        anchor: row ``a * P_max + j`` is anchor a with its j-th positive (in index order),
        valid where that positive exists and the anchor has a negative.
    """
    distances = pairwise_distances(embeddings, squared=squared, metric=metric)  # (B, B)
    positive_mask, negative_mask = anchor_positive_mask(labels), anchor_negative_mask(labels)  # (B, B)
    num_rows, num_columns = tf.shape(distances)[0], tf.shape(distances)[1]

    # The gather that builds the table of positive distances, run on column indices instead.
    column_of_entry = tf.broadcast_to(tf.range(num_columns)[tf.newaxis, :], tf.shape(distances))  # (B, B)
    positive_columns = positives_per_anchor(column_of_entry, positive_mask)  # .distances: (B, P_max) columns
    positives = PositivePairs(
        distances=tf.gather(distances, positive_columns.distances, batch_dims=1),  # (B, P_max)
        valid=positive_columns.valid,
    )
    sorted_negatives = sort_negatives(distances, negative_mask)
    chosen_distance = semi_hard_negative_distances(positives, sorted_negatives)  # (B, P_max)

    # The first rank holding the chosen distance, in a stable sort: the lowest column at that distance.
    chosen_rank = tf.searchsorted(sorted_negatives.search_keys, chosen_distance, side="left")  # (B, P_max)
    chosen_rank = tf.minimum(chosen_rank, num_columns - 1)
    infinity = tf.constant(float("inf"), distances.dtype)
    negative_order = tf.argsort(tf.where(negative_mask, distances, infinity), axis=1, stable=True)  # (B, B)
    negative_column = tf.gather(negative_order, chosen_rank, batch_dims=1)  # (B, P_max)

    valid = tf.logical_and(positives.valid, (sorted_negatives.count > 0)[:, tf.newaxis])  # (B, P_max)
    anchor = tf.broadcast_to(tf.range(num_rows)[:, tf.newaxis], tf.shape(valid))  # (B, P_max)
    return MinedTriplets(
        anchor=tf.reshape(anchor, [-1]),  # (B * P_max,)
        positive=tf.reshape(_valid_or_anchor(positive_columns.distances, valid, anchor), [-1]),
        negative=tf.reshape(_valid_or_anchor(negative_column, valid, anchor), [-1]),
        valid=tf.reshape(valid, [-1]),
    )


def batch_all_miner(
    labels,
    embeddings,
    *,
    margin: Margin | None = None,
    squared: bool = False,
    metric: str | None = None,
) -> MinedTriplets:
    """Every valid triplet, or with a number ``margin`` those with a positive hinge loss.

    A triplet (a, p, n) is valid when ``a != p``, ``label a = label p`` and
    ``label n != label a``. With ``margin = m`` only the triplets with
    ``d_an < d_ap + m`` are kept: the triplets with ``max(d_ap - d_an + m, 0) > 0`` that
    :func:`~facetrip.losses.batch_all_triplet_loss` averages over. ``margin="soft"``
    keeps every valid triplet, as the soft-margin batch-all averages over all of them.

    The result has one row per triplet, T = sum over anchors of #positives x
    #negatives (about B^2 (K - 1) for P x K batches); the fused loss never builds it.

    Args:
        labels: (B,) or (B, 1) identity labels, integer, float or string.
        embeddings: (B, D) float tensor; only read when ``margin`` is a number.
        margin: None (default) or ``"soft"`` for every valid triplet; a number >= 0 for
            the triplets with a positive hinge loss.
        squared: classic flag for squared euclidean distances.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``; overrides ``squared``.

    Returns:
        :class:`MinedTriplets` of (T,) vectors, ordered by (anchor, positive, negative),
        all valid; T = 0 when there is no such triplet.
    """
    positive_mask, negative_mask = anchor_positive_mask(labels), anchor_negative_mask(labels)  # (B, B)
    pairs = tf.where(positive_mask)  # (M, 2) int64: (anchor, positive), in row order
    pair_negatives = tf.gather(negative_mask, pairs[:, 0])  # (M, B)
    if margin is not None and not is_soft_margin(margin):
        distances = pairwise_distances(embeddings, squared=squared, metric=metric)  # (B, B)
        thresholds = tf.gather_nd(distances, pairs) + tf.cast(margin, distances.dtype)  # (M,) d_ap + m
        active = tf.gather(distances, pairs[:, 0]) < thresholds[:, tf.newaxis]  # (M, B) d_an < d_ap + m
        pair_negatives = tf.logical_and(pair_negatives, active)
    pair_and_negative = tf.cast(tf.where(pair_negatives), tf.int32)  # (T, 2): (pair row, negative)
    anchor_positive = tf.gather(tf.cast(pairs, tf.int32), pair_and_negative[:, 0])  # (T, 2)
    return MinedTriplets(
        anchor=anchor_positive[:, 0],
        positive=anchor_positive[:, 1],
        negative=pair_and_negative[:, 1],
        valid=tf.ones_like(pair_and_negative[:, 1], dtype=tf.bool),
    )
