"""Which (anchor, positive, negative) index combinations form valid triplets.

A triplet (a, p, n) is valid when ``a != p``, ``label[a] == label[p]`` and
``label[a] != label[n]`` (which implies ``a != n`` and ``p != n``).

Labels may be shaped (B,) or (B, 1) and be integers, floats or strings: only equality
is used.
"""

from __future__ import annotations

import tensorflow as tf


def label_vector(labels) -> tf.Tensor:
    """Labels as a rank-1 tensor: (B,) and (B, 1) both give (B,)."""
    labels = tf.convert_to_tensor(labels)
    return tf.reshape(labels, [-1])  # (B,)


def same_label_mask(labels) -> tf.Tensor:
    """(B, B) bool, True where ``label[i] == label[j]`` (diagonal included)."""
    labels = label_vector(labels)
    return tf.equal(tf.expand_dims(labels, 0), tf.expand_dims(labels, 1))  # (B, B)


def anchor_positive_mask(labels) -> tf.Tensor:
    """(B, B) bool mask of valid (anchor, positive) pairs: ``a != p`` and same label.

    Args:
        labels: (B,) or (B, 1) identity labels.

    Returns:
        (B, B) bool tensor, ``mask[a, p]``.
    """
    same_label = same_label_mask(labels)
    distinct = tf.logical_not(tf.eye(tf.shape(same_label)[0], dtype=tf.bool))  # (B, B)
    return tf.logical_and(same_label, distinct)


def anchor_negative_mask(labels) -> tf.Tensor:
    """(B, B) bool mask of valid (anchor, negative) pairs: different labels.

    Args:
        labels: (B,) or (B, 1) identity labels.

    Returns:
        (B, B) bool tensor, ``mask[a, n]``.
    """
    return tf.logical_not(same_label_mask(labels))


def triplet_mask(labels) -> tf.Tensor:
    """(B, B, B) bool mask of valid triplets ``mask[a, p, n]``.

    This materialises B^3 booleans. It exists for the API and the tests; none of the
    losses in facetrip uses it.

    Args:
        labels: (B,) or (B, 1) identity labels.

    Returns:
        (B, B, B) bool tensor.
    """
    positive = anchor_positive_mask(labels)  # (B, B)
    negative = anchor_negative_mask(labels)  # (B, B)
    return tf.logical_and(tf.expand_dims(positive, 2), tf.expand_dims(negative, 1))  # (B, B, B)
