"""Triplet losses with online mining: batch-all, batch-hard, semi-hard, and the naive loss.

For a valid triplet (a, p, n) (see :mod:`facetrip.losses.masks`) with distances
``d_ap = D[a, p]`` and ``d_an = D[a, n]`` the per-triplet loss is

- hinge (``margin`` a number m >= 0): ``max(d_ap - d_an + m, 0)``
- soft margin (``margin="soft"``, Hermans et al. 2017): ``softplus(d_ap - d_an)``

The strategies differ in which triplets they average over. None of them builds a
(B, B, B) tensor: batch-all and semi-hard sort each anchor's negative distances once
(O(B^2 log B) time, O(B^2) memory) and find, for every (anchor, positive) pair, the
negatives they need with a binary search; the soft-margin batch-all, which has no such
shortcut, walks over the positive pairs in chunks with a hand-written gradient.

Given a cross-batch memory (``memory_embeddings``, ``memory_labels``;
:mod:`facetrip.losses.memory`) the same algorithms run on the batch's anchors against the
batch's and the memory's rows, a (B, B + M) distance matrix: O(B (B + M)) memory.

The signatures of the classic blog implementation work unchanged:
``batch_all_triplet_loss(labels, embeddings, margin, squared=False)`` and
``batch_hard_triplet_loss(labels, embeddings, margin, squared=False)``.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import tensorflow as tf

from facetrip.losses.distances import paired_distances, pairwise_distances
from facetrip.losses.masks import anchor_negative_mask, anchor_positive_mask
from facetrip.losses.memory import memory_distances_and_masks

Margin = Union[float, str, tf.Tensor]

STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
SOFT_MARGIN = "soft"

# Elements per chunk of the soft-margin batch-all loop: (pairs in chunk) x B <= this.
_SOFT_BATCH_ALL_CHUNK_ELEMENTS = 1 << 22


def is_soft_margin(margin: Margin) -> bool:
    """True for ``margin="soft"``; raises on any other string or a negative number."""
    if isinstance(margin, str):
        if margin.lower() != SOFT_MARGIN:
            raise ValueError(f"margin must be a number >= 0 or 'soft', not {margin!r}.")
        return True
    if isinstance(margin, (int, float)) and margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}.")
    return False


def _triplet_terms(difference: tf.Tensor, margin: Margin) -> tf.Tensor:
    """Per-triplet loss of ``difference = d_ap - d_an``: hinge with margin, or softplus."""
    if is_soft_margin(margin):
        return tf.math.softplus(difference)
    return tf.maximum(difference + tf.cast(margin, difference.dtype), 0.0)


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``values`` where ``mask`` holds; 0 (not NaN) where it holds nowhere."""
    total = tf.reduce_sum(tf.where(mask, values, tf.zeros_like(values)))
    count = tf.reduce_sum(tf.cast(mask, values.dtype))
    return tf.math.divide_no_nan(total, count)


def _distances_and_masks(labels, embeddings, squared: bool, metric: str | None, memory_embeddings=None,
                         memory_labels=None):
    """(B, B) distances and masks of the batch, or (B, B + M) with a cross-batch memory."""
    if (memory_embeddings is None) != (memory_labels is None):
        raise ValueError("memory_embeddings and memory_labels go together: pass both, or neither.")
    if memory_embeddings is not None:
        return memory_distances_and_masks(labels, embeddings, memory_labels, memory_embeddings, squared, metric)
    distances = pairwise_distances(embeddings, squared=squared, metric=metric)  # (B, B)
    return distances, anchor_positive_mask(labels), anchor_negative_mask(labels)


# --------------------------------------------------------------------------- batch hard


class HardestDistances(NamedTuple):
    """Per-anchor hardest distances, and which anchors have both a positive and a negative."""

    hardest_positive: tf.Tensor  # (B,) max over positives of D[a, p]; 0 without positive
    hardest_negative: tf.Tensor  # (B,) min over negatives of D[a, n]; 0 without negative
    valid_anchor: tf.Tensor  # (B,) bool


def hardest_distances(distances: tf.Tensor, positive_mask: tf.Tensor, negative_mask: tf.Tensor) -> HardestDistances:
    """Hardest positive and hardest negative distance of every anchor.

    Args:
        distances: (B, B) pairwise distances.
        positive_mask: (B, B) bool, valid (anchor, positive) pairs.
        negative_mask: (B, B) bool, valid (anchor, negative) pairs.

    Returns:
        :class:`HardestDistances`; anchors lacking a positive or a negative hold 0 and
        are marked invalid.
    """
    infinity = tf.constant(float("inf"), distances.dtype)
    has_positive = tf.reduce_any(positive_mask, axis=1)  # (B,)
    has_negative = tf.reduce_any(negative_mask, axis=1)  # (B,)
    hardest_positive = tf.reduce_max(tf.where(positive_mask, distances, -infinity), axis=1)  # (B,)
    hardest_negative = tf.reduce_min(tf.where(negative_mask, distances, infinity), axis=1)  # (B,)
    zeros = tf.zeros_like(hardest_positive)
    return HardestDistances(
        hardest_positive=tf.where(has_positive, hardest_positive, zeros),
        hardest_negative=tf.where(has_negative, hardest_negative, zeros),
        valid_anchor=tf.logical_and(has_positive, has_negative),
    )


def batch_hard_triplet_loss(
    labels, embeddings, margin: Margin, squared: bool = False, metric: str | None = None,
    memory_embeddings=None, memory_labels=None,
) -> tf.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017).

    For each anchor a with at least one positive and one negative in the batch:
    ``loss_a = max(max_p d_ap - min_n d_an + margin, 0)`` (or ``softplus(...)`` with
    ``margin="soft"``); the loss is the mean of ``loss_a`` over those anchors.

    Unlike the classic blog implementation, anchors with no positive (or no negative)
    in the batch are left out of the mean. The classic code gives them a hardest
    positive distance of 0, so they add ``max(margin - d_an, 0)`` terms that push
    singletons apart and dilute the mean.

    Args:
        labels: (B,) or (B, 1) identity labels, integer, float or string.
        embeddings: (B, D) float tensor (float16 / bfloat16 computed in float32).
        margin: number >= 0, or ``"soft"``.
        squared: classic flag for squared euclidean distances.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``; overrides ``squared``.
        memory_embeddings: optional (M, D) cross-batch memory (:mod:`facetrip.losses.memory`):
            positives and negatives range over the batch's rows and these rows too; the
            anchors stay the batch's rows, and no gradient flows into the memory.
        memory_labels: (M,) or (M, 1) labels of the memory, given with ``memory_embeddings``.

    Returns:
        Scalar loss; 0 when no anchor has both a positive and a negative.
    """
    distances, positive, negative = _distances_and_masks(
        labels, embeddings, squared, metric, memory_embeddings, memory_labels
    )
    hardest = hardest_distances(distances, positive, negative)
    anchor_loss = _triplet_terms(hardest.hardest_positive - hardest.hardest_negative, margin)  # (B,)
    return masked_mean(anchor_loss, hardest.valid_anchor)


# ------------------------------------------------------- sorted negatives (all, semi-hard)


class SortedNegatives(NamedTuple):
    """Each anchor's negative distances in ascending order (the other entries pushed to the end)."""

    search_keys: tf.Tensor  # (B, B) ascending, +inf past the negatives; no gradient
    distances: tf.Tensor  # (B, B) same order, differentiable, 0 past the negatives
    count: tf.Tensor  # (B,) int32 number of negatives of each anchor


def sort_negatives(distances: tf.Tensor, negative_mask: tf.Tensor) -> SortedNegatives:
    """Sort every row's negative distances ascending, O(B^2 log B) time, O(B^2) memory."""
    num_columns = tf.shape(distances)[1]  # B; rows may be fewer (one replica's anchors against a global batch)
    infinity = tf.constant(float("inf"), distances.dtype)
    keys = tf.where(negative_mask, distances, infinity)  # (B, B)
    order = tf.argsort(keys, axis=1, stable=True)  # (B, B)
    sorted_keys = tf.gather(keys, order, batch_dims=1)  # (B, B), gradients flow back through the gather
    count = tf.reduce_sum(tf.cast(negative_mask, tf.int32), axis=1)  # (B,)
    in_range = tf.range(num_columns)[tf.newaxis, :] < count[:, tf.newaxis]  # (B, B)
    return SortedNegatives(
        search_keys=tf.stop_gradient(sorted_keys),
        distances=tf.where(in_range, sorted_keys, tf.zeros_like(sorted_keys)),
        count=count,
    )


class PositivePairs(NamedTuple):
    """Each anchor's positives, packed to the left of a (B, max #positives) table."""

    distances: tf.Tensor  # (B, P_max) d_ap, differentiable; padding holds some other distance
    valid: tf.Tensor  # (B, P_max) bool, False on padding


def positives_per_anchor(distances: tf.Tensor, positive_mask: tf.Tensor) -> PositivePairs:
    """Gather every anchor's positive distances into a (B, P_max) table.

    With P x K batches P_max = K - 1, so the binary searches below run on B (K - 1)
    queries instead of B^2.
    """
    as_int = tf.cast(positive_mask, tf.int32)  # (B, B)
    counts = tf.reduce_sum(as_int, axis=1)  # (B,)
    max_positives = tf.reduce_max(tf.concat([counts, [0]], axis=0))
    _, columns = tf.math.top_k(as_int, k=max_positives)  # (B, P_max): positives first, in index order
    return PositivePairs(
        distances=tf.gather(distances, columns, batch_dims=1),
        valid=tf.range(max_positives)[tf.newaxis, :] < counts[:, tf.newaxis],
    )


# ---------------------------------------------------------------------------- batch all


def count_valid_triplets(positive_mask: tf.Tensor, negative_mask: tf.Tensor) -> tf.Tensor:
    """Number of valid triplets, sum over anchors of #positives x #negatives (int64)."""
    num_positives = tf.reduce_sum(tf.cast(positive_mask, tf.int64), axis=1)  # (B,)
    num_negatives = tf.reduce_sum(tf.cast(negative_mask, tf.int64), axis=1)  # (B,)
    return tf.reduce_sum(num_positives * num_negatives)


def hinge_batch_all_sums(positives: PositivePairs, sorted_negatives: SortedNegatives, margin):
    """Sum of positive hinge losses and their count, over all valid triplets, exactly.

    For a pair (a, p) with threshold ``t = d_ap + margin``, the triplets with positive
    loss are the ``c`` negatives with ``d_an < t`` (a binary search in the sorted row),
    and their loss sum is ``c * t - (sum of the c smallest d_an)`` (a prefix sum).
    Summing in ascending order keeps float32 accurate: at B = 4096 the loss agrees with
    an all-float64 computation to 1e-7 (relative).
    """
    thresholds = positives.distances + tf.cast(margin, positives.distances.dtype)  # (B, P_max)
    num_active = tf.searchsorted(sorted_negatives.search_keys, thresholds, side="left")  # (B, P_max) int32
    sorted_distances = sorted_negatives.distances
    prefix_sums = tf.concat(
        [tf.zeros_like(sorted_distances[:, :1]), tf.cumsum(sorted_distances, axis=1)], axis=1
    )  # (B, B + 1): prefix_sums[a, c] = sum of the c smallest d_an
    active_sums = tf.gather(prefix_sums, num_active, batch_dims=1)  # (B, P_max)
    pair_loss = tf.cast(num_active, thresholds.dtype) * thresholds - active_sums  # (B, P_max)
    pair_loss = tf.where(positives.valid, pair_loss, tf.zeros_like(pair_loss))
    num_active = tf.where(positives.valid, num_active, tf.zeros_like(num_active))
    return tf.reduce_sum(pair_loss), tf.reduce_sum(tf.cast(num_active, tf.int64))


def _soft_batch_all_sums(distances, positive, negative):
    """Sum of ``softplus(d_ap - d_an)`` over all valid triplets, and the count with ``d_ap > d_an``.

    softplus never vanishes, so every valid triplet counts and no sort helps: this walks
    over the (anchor, positive) pairs in chunks of (pairs x B) elements and writes the
    gradient by hand, so that memory stays O(B^2) in forward and backward alike.
    """
    num_anchors, num_columns = tf.shape(distances)[0], tf.shape(distances)[1]  # rows may be a replica's anchors
    pairs = tf.where(positive)  # (M, 2) int64: (anchor, positive)
    num_pairs = tf.shape(pairs)[0]
    chunk_size = tf.maximum(1, _SOFT_BATCH_ALL_CHUNK_ELEMENTS // tf.maximum(num_columns, 1))
    num_chunks = (num_pairs + chunk_size - 1) // chunk_size

    def chunk(distance_matrix, index):
        pair_chunk = pairs[index * chunk_size : (index + 1) * chunk_size]  # (C, 2)
        anchors = pair_chunk[:, 0]  # (C,)
        d_ap = tf.gather_nd(distance_matrix, pair_chunk)  # (C,)
        d_an = tf.gather(distance_matrix, anchors)  # (C, B)
        is_negative = tf.gather(negative, anchors)  # (C, B)
        return pair_chunk, anchors, d_ap[:, tf.newaxis] - d_an, is_negative  # difference (C, B)

    @tf.custom_gradient
    def soft_sum(distance_matrix):
        def accumulate(index, total, violating):
            _, _, difference, is_negative = chunk(distance_matrix, index)
            loss = tf.where(is_negative, tf.math.softplus(difference), tf.zeros_like(difference))
            hard = tf.logical_and(is_negative, difference > 0)
            return index + 1, total + tf.reduce_sum(loss), violating + tf.reduce_sum(tf.cast(hard, tf.int64))

        _, total, violating = tf.while_loop(
            lambda index, *_: index < num_chunks,
            accumulate,
            (tf.constant(0), tf.zeros([], distance_matrix.dtype), tf.constant(0, tf.int64)),
        )

        def gradient(upstream_total, upstream_violating=None):
            del upstream_violating  # a count has no gradient

            def accumulate_gradient(index, grad):
                pair_chunk, anchors, difference, is_negative = chunk(distance_matrix, index)
                slope = tf.where(is_negative, tf.sigmoid(difference), tf.zeros_like(difference))  # (C, B)
                grad += tf.scatter_nd(pair_chunk, tf.reduce_sum(slope, axis=1), tf.shape(grad, out_type=tf.int64))
                grad -= tf.math.unsorted_segment_sum(slope, anchors, num_anchors)  # d/d D[a, n]
                return index + 1, grad

            _, grad = tf.while_loop(
                lambda index, _: index < num_chunks,
                accumulate_gradient,
                (tf.constant(0), tf.zeros_like(distance_matrix)),
            )
            return upstream_total * grad

        return (total, violating), gradient

    return soft_sum(distances)


def batch_all_triplet_loss(
    labels, embeddings, margin: Margin, squared: bool = False, metric: str | None = None,
    memory_embeddings=None, memory_labels=None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Batch-all triplet loss: the mean over all valid triplets whose loss is positive.

    ``loss = sum_{valid (a,p,n)} max(d_ap - d_an + margin, 0) / #{valid triplets with loss > 0}``

    With ``margin="soft"`` every valid triplet has a positive loss
    ``softplus(d_ap - d_an)``, so the loss is the mean over all valid triplets and the
    fraction counts the triplets that still violate ``d_ap < d_an``.

    Exact, and O(B^2) memory: no (B, B, B) tensor is built.

    Args:
        labels: (B,) or (B, 1) identity labels, integer, float or string.
        embeddings: (B, D) float tensor (float16 / bfloat16 computed in float32).
        margin: number >= 0, or ``"soft"``.
        squared: classic flag for squared euclidean distances.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``; overrides ``squared``.
        memory_embeddings: optional (M, D) cross-batch memory (:mod:`facetrip.losses.memory`):
            positives and negatives range over the batch's rows and these rows too; the
            anchors stay the batch's rows, and no gradient flows into the memory.
        memory_labels: (M,) or (M, 1) labels of the memory, given with ``memory_embeddings``.

    Returns:
        ``(loss, fraction_positive_triplets)``: two scalars, both 0 (not NaN) when the
        batch holds no valid or no positive triplet.
    """
    distances, positive, negative = _distances_and_masks(
        labels, embeddings, squared, metric, memory_embeddings, memory_labels
    )
    if is_soft_margin(margin):
        loss_sum, num_counted = _soft_batch_all_sums(distances, positive, negative)
    else:
        loss_sum, num_counted = hinge_batch_all_sums(
            positives_per_anchor(distances, positive), sort_negatives(distances, negative), margin
        )

    num_valid = count_valid_triplets(positive, negative)
    fraction_positive_triplets = tf.math.divide_no_nan(
        tf.cast(num_counted, distances.dtype), tf.cast(num_valid, distances.dtype)
    )
    denominator = num_valid if is_soft_margin(margin) else num_counted
    loss = tf.math.divide_no_nan(loss_sum, tf.cast(denominator, distances.dtype))
    return loss, fraction_positive_triplets


# ---------------------------------------------------------------------------- semi-hard


def semi_hard_negative_distances(positives: PositivePairs, sorted_negatives: SortedNegatives) -> tf.Tensor:
    """For every pair (a, p), the FaceNet semi-hard negative distance.

    The smallest ``d_an`` with ``d_an > d_ap``; where no negative is that far, the
    largest ``d_an`` of the anchor. Found by binary search in each anchor's sorted
    negatives.

    Args:
        positives: :func:`positives_per_anchor`, the d_ap of every pair.
        sorted_negatives: :func:`sort_negatives` of the same distances.

    Returns:
        (B, P_max) tensor ``chosen[a, p]``, differentiable; 0 for anchors without negatives.
    """
    first_farther = tf.searchsorted(sorted_negatives.search_keys, positives.distances, side="right")  # (B, P_max)
    last_negative = tf.maximum(sorted_negatives.count - 1, 0)[:, tf.newaxis]  # (B, 1)
    chosen_rank = tf.minimum(first_farther, last_negative)  # (B, P_max)
    return tf.gather(sorted_negatives.distances, chosen_rank, batch_dims=1)  # (B, P_max)


def batch_semi_hard_triplet_loss(
    labels, embeddings, margin: Margin, squared: bool = False, metric: str | None = None,
    memory_embeddings=None, memory_labels=None,
) -> tf.Tensor:
    """Semi-hard triplet loss (Schroff et al. 2015, FaceNet), as in TF Addons.

    For every valid (anchor, positive) pair whose anchor has a negative, the negative is
    the closest one farther than the positive (``d_an > d_ap``); where there is none, the
    farthest negative. ``loss = mean over those pairs of max(d_ap - d_an + margin, 0)``
    (``softplus(d_ap - d_an)`` with ``margin="soft"``).

    Exact, and O(B^2) memory: no (B, B, B) tensor is built.

    Args:
        labels: (B,) or (B, 1) identity labels, integer, float or string.
        embeddings: (B, D) float tensor (float16 / bfloat16 computed in float32).
        margin: number >= 0, or ``"soft"``.
        squared: classic flag for squared euclidean distances.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``; overrides ``squared``.
        memory_embeddings: optional (M, D) cross-batch memory (:mod:`facetrip.losses.memory`):
            positives and negatives range over the batch's rows and these rows too; the
            anchors stay the batch's rows, and no gradient flows into the memory.
        memory_labels: (M,) or (M, 1) labels of the memory, given with ``memory_embeddings``.

    Returns:
        Scalar loss; 0 when no anchor has both a positive and a negative.
    """
    distances, positive, negative = _distances_and_masks(
        labels, embeddings, squared, metric, memory_embeddings, memory_labels
    )
    positives = positives_per_anchor(distances, positive)
    sorted_negatives = sort_negatives(distances, negative)
    negative_distances = semi_hard_negative_distances(positives, sorted_negatives)  # (B, P_max)
    pair_loss = _triplet_terms(positives.distances - negative_distances, margin)  # (B, P_max)
    valid_pair = tf.logical_and(positives.valid, (sorted_negatives.count > 0)[:, tf.newaxis])  # (B, P_max)
    return masked_mean(pair_loss, valid_pair)


semi_hard_triplet_loss = batch_semi_hard_triplet_loss


# ------------------------------------------------------------------------ explicit triplets


def triplet_loss(anchor, positive, negative, margin: Margin, squared: bool = False, metric: str | None = None) -> tf.Tensor:
    """The naive triplet loss on explicit triplets (offline mining).

    ``loss = mean_i max(d(a_i, p_i) - d(a_i, n_i) + margin, 0)`` (``softplus`` with
    ``margin="soft"``).

    Args:
        anchor: (N, D) embeddings.
        positive: (N, D) embeddings of the same identity as ``anchor``.
        negative: (N, D) embeddings of another identity.
        margin: number >= 0, or ``"soft"``.
        squared: classic flag for squared euclidean distances.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``; overrides ``squared``.

    Returns:
        Scalar loss; 0 for N = 0.
    """
    d_ap = paired_distances(anchor, positive, squared=squared, metric=metric)  # (N,)
    d_an = paired_distances(anchor, negative, squared=squared, metric=metric)  # (N,)
    losses = _triplet_terms(d_ap - d_an, margin)  # (N,)
    return tf.math.divide_no_nan(tf.reduce_sum(losses), tf.cast(tf.size(losses), losses.dtype))


# ------------------------------------------------------------------------------ dispatch


def online_triplet_loss(
    labels, embeddings, strategy: str = "batch_hard", margin: Margin = 0.2, metric: str = "euclidean",
    memory_embeddings=None, memory_labels=None,
) -> tf.Tensor:
    """The loss of one online-mining ``strategy`` (``batch_all``, ``batch_hard``, ``semi_hard``).

    ``memory_embeddings`` / ``memory_labels``: an optional cross-batch memory, as in each loss.
    """
    strategy = resolve_strategy(strategy)
    memory = {"memory_embeddings": memory_embeddings, "memory_labels": memory_labels}
    if strategy == "batch_all":
        return batch_all_triplet_loss(labels, embeddings, margin, metric=metric, **memory)[0]
    if strategy == "batch_hard":
        return batch_hard_triplet_loss(labels, embeddings, margin, metric=metric, **memory)
    return batch_semi_hard_triplet_loss(labels, embeddings, margin, metric=metric, **memory)


_STRATEGY_ALIASES = {"batch_semi_hard": "semi_hard", "semihard": "semi_hard", "all": "batch_all", "hard": "batch_hard"}


def resolve_strategy(strategy: str) -> str:
    """Canonical strategy name; raises ValueError naming the choices for an unknown one."""
    name = str(strategy).lower().replace("-", "_")
    name = _STRATEGY_ALIASES.get(name, name)
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}.")
    return name
