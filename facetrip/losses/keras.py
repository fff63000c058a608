"""Thin Keras 3 wrappers over the functional core: a loss class and batch statistics as metrics.

Keras 3's ``Loss.__call__`` converts ``y_true`` to the loss dtype (float32), and float32
holds integers exactly only up to 2^24 = 16,777,216: identity labels above that would
silently merge. :class:`TripletLoss` keeps ``y_true`` in its own dtype (integer or
string) and only the embeddings are cast.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from facetrip.losses.distances import resolve_metric
from facetrip.losses.statistics import STATISTICS, triplet_batch_statistics
from facetrip.losses.triplet import Margin, is_soft_margin, online_triplet_loss, resolve_strategy, triplet_loss

OFFLINE = "offline"


def _margin_config(margin: Margin) -> float | str:
    return "soft" if is_soft_margin(margin) else float(margin)


@keras.saving.register_keras_serializable(package="facetrip")
class TripletLoss(keras.losses.Loss):
    """Triplet loss with online mining, for ``model.compile(loss=TripletLoss(...))``.

    ``y_true`` holds the identity labels (B,) or (B, 1), ``y_pred`` the embeddings (B, D).
    The loss is batch-level (it mines inside the batch), so it returns one scalar and
    takes no per-sample weights. With ``strategy="offline"`` the batch holds explicit
    triplets stacked as ``[anchors; positives; negatives]`` (3N, D) and the naive
    :func:`~facetrip.losses.triplet_loss` is used (labels are not needed). Calling it with
    ``memory_embeddings`` (M, D) and ``memory_labels`` (M,) mines the batch's anchors
    against a cross-batch memory too (:mod:`facetrip.losses.memory`; online strategies only).

    Args:
        strategy: ``"batch_all"``, ``"batch_hard"``, ``"semi_hard"`` or ``"offline"``.
        margin: number >= 0, or ``"soft"`` for ``softplus(d_ap - d_an)``.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``.
        name: name of the loss.

    Example:
        >>> loss = TripletLoss(strategy="batch_hard", margin=0.2)
        >>> float(loss([0, 0, 1, 1], [[0.0, 0.0], [0.0, 0.1], [1.0, 0.0], [1.0, 0.1]]))
        0.0
    """

    def __init__(
        self,
        strategy: str = "batch_hard",
        margin: Margin = 0.2,
        metric: str = "euclidean",
        name: str = "triplet_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.strategy = OFFLINE if str(strategy).lower() == OFFLINE else resolve_strategy(strategy)
        self.margin = _margin_config(margin)
        self.metric = resolve_metric(metric)

    def __call__(self, y_true, y_pred, sample_weight=None, memory_embeddings=None, memory_labels=None):
        if sample_weight is not None:
            raise ValueError("TripletLoss mines triplets across the batch and does not take sample weights.")
        with tf.name_scope(self.name):
            return self.call(tf.convert_to_tensor(y_true), tf.convert_to_tensor(y_pred), memory_embeddings,
                             memory_labels)

    def call(self, y_true, y_pred, memory_embeddings=None, memory_labels=None):
        if self.strategy == OFFLINE:
            if memory_embeddings is not None:
                raise ValueError("The offline strategy takes explicit triplets, not a cross-batch memory.")
            anchors, positives, negatives = tf.split(y_pred, 3, axis=0)  # 3 x (N, D)
            return triplet_loss(anchors, positives, negatives, self.margin, metric=self.metric)
        return online_triplet_loss(y_true, y_pred, strategy=self.strategy, margin=self.margin, metric=self.metric,
                                   memory_embeddings=memory_embeddings, memory_labels=memory_labels)

    def get_config(self):
        config = super().get_config()
        config.update(strategy=self.strategy, margin=self.margin, metric=self.metric)
        return config


@keras.saving.register_keras_serializable(package="facetrip")
class TripletStatistic(keras.metrics.Mean):
    """One of the batch statistics of :mod:`facetrip.losses.statistics`, averaged over batches.

    Args:
        statistic: one of ``fraction_positive_triplets``, ``hardest_positive_dist``,
            ``hardest_negative_dist``, ``mean_embedding_norm``.
        margin: the loss margin (used by ``fraction_positive_triplets``).
        metric: the distance (``euclidean``, ``squared``, ``cosine``).
        name: defaults to ``statistic``.
    """

    def __init__(self, statistic: str, margin: Margin = 0.2, metric: str = "euclidean", name: str | None = None, **kwargs):
        if statistic not in STATISTICS:
            raise ValueError(f"Unknown statistic {statistic!r}: choose one of {', '.join(STATISTICS)}.")
        super().__init__(name=name or statistic, **kwargs)
        self.statistic = statistic
        self.margin = _margin_config(margin)
        self.metric = resolve_metric(metric)

    def update_state(self, y_true, y_pred, sample_weight=None):
        value = triplet_batch_statistics(y_true, y_pred, margin=self.margin, metric=self.metric)[self.statistic]
        return super().update_state(value)

    def update_from(self, statistics: dict) -> None:
        """Update with this statistic's value in ``statistics``, what :func:`triplet_batch_statistics` returned.

        A training step that keeps several statistics computes them once and updates each
        with its value (:meth:`EmbeddingTrainer.update_statistics`).
        """
        super().update_state(statistics[self.statistic])

    def get_config(self):
        config = super().get_config()
        config.update(statistic=self.statistic, margin=self.margin, metric=self.metric)
        return config


def triplet_metrics(margin: Margin = 0.2, metric: str = "euclidean") -> list[TripletStatistic]:
    """All four batch statistics as Keras metrics, for ``model.compile(metrics=...)``."""
    return [TripletStatistic(name, margin=margin, metric=metric) for name in STATISTICS]
