"""Per-batch mining statistics worth watching while training a triplet loss.

- ``fraction_positive_triplets``: valid triplets with a positive hinge loss
  (``d_an < d_ap + margin``; for the soft margin, ``d_an < d_ap``). It falls as the
  embedding learns; batch-all divides by the count behind it.
- ``hardest_positive_dist`` / ``hardest_negative_dist``: batch-hard's per-anchor
  extremes, averaged over anchors that have both.
- ``mean_embedding_norm``: the mean L2 norm of the embeddings (1 for a normalised head;
  drift elsewhere is a sign of trouble).
"""

from __future__ import annotations

import tensorflow as tf

from facetrip.losses.distances import as_compute_tensor, pairwise_distances
from facetrip.losses.masks import anchor_negative_mask, anchor_positive_mask
from facetrip.losses.triplet import (
    Margin,
    count_valid_triplets,
    hardest_distances,
    hinge_batch_all_sums,
    is_soft_margin,
    masked_mean,
    positives_per_anchor,
    sort_negatives,
)

STATISTICS = (
    "fraction_positive_triplets",
    "hardest_positive_dist",
    "hardest_negative_dist",
    "mean_embedding_norm",
)


def triplet_batch_statistics(labels, embeddings, margin: Margin = 0.2, metric: str = "euclidean") -> dict[str, tf.Tensor]:
    """The four statistics of :data:`STATISTICS` for one batch, from one distance matrix.

    Args:
        labels: (B,) or (B, 1) identity labels.
        embeddings: (B, D) float tensor.
        margin: the loss margin (number or ``"soft"``), used by the fraction.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``.

    Returns:
        Dict of scalar tensors keyed by the names in :data:`STATISTICS`. Values are
        statistics only: gradients are stopped.
    """
    embeddings = tf.stop_gradient(as_compute_tensor(embeddings))
    distances = pairwise_distances(embeddings, metric=metric)  # (B, B)
    positive, negative = anchor_positive_mask(labels), anchor_negative_mask(labels)

    hinge_margin = 0.0 if is_soft_margin(margin) else margin
    _, num_positive_triplets = hinge_batch_all_sums(
        positives_per_anchor(distances, positive), sort_negatives(distances, negative), hinge_margin
    )
    num_valid = count_valid_triplets(positive, negative)
    hardest = hardest_distances(distances, positive, negative)
    return {
        "fraction_positive_triplets": tf.math.divide_no_nan(
            tf.cast(num_positive_triplets, distances.dtype), tf.cast(num_valid, distances.dtype)
        ),
        "hardest_positive_dist": masked_mean(hardest.hardest_positive, hardest.valid_anchor),
        "hardest_negative_dist": masked_mean(hardest.hardest_negative, hardest.valid_anchor),
        "mean_embedding_norm": tf.reduce_mean(tf.norm(embeddings, axis=1)),
    }
