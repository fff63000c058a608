"""Global-batch mining, split into replicas by hand, against the single-device losses: values and gradients."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import METRICS, pk_labels
from facetrip.losses import online_triplet_loss, pairwise_distances
from facetrip.losses.global_batch import (
    global_batch_distances,
    global_batch_masks,
    global_batch_triplet_sums,
    normalised_share,
)
from facetrip.losses.masks import anchor_negative_mask, anchor_positive_mask

STRATEGIES = ("batch_all", "batch_hard", "semi_hard")


def split_points(size, replicas):
    """Row offsets of ``replicas`` near-equal parts (the first ones one larger), as tf.distribute splits."""
    sizes = [size // replicas + (1 if index < size % replicas else 0) for index in range(replicas)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(int)


def split_loss(labels, embeddings, replicas, strategy, margin, metric):
    """The loss as the replicas compute it: each replica's sum over the global count, summed."""
    points = split_points(len(labels), replicas)
    shares = [
        global_batch_triplet_sums(labels[start:end], embeddings[start:end], labels, embeddings, start,
                                  strategy=strategy, margin=margin, metric=metric)
        for start, end in zip(points[:-1], points[1:])
    ]
    global_count = tf.add_n([share.count for share in shares])
    return tf.add_n([normalised_share(share, global_count) for share in shares])


def value_and_gradient(function, embeddings):
    embeddings = tf.convert_to_tensor(embeddings)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        loss = function(embeddings)
    return float(loss), tape.gradient(loss, embeddings).numpy()


@pytest.mark.parametrize("metric", METRICS)
def test_distances_and_masks_are_rows_of_the_whole_batch(rng, metric):
    labels = pk_labels(4, 3)
    embeddings = tf.constant(rng.normal(size=(12, 5)).astype(np.float32))
    whole = pairwise_distances(embeddings, metric=metric).numpy()
    positive, negative = anchor_positive_mask(labels).numpy(), anchor_negative_mask(labels).numpy()
    for start, end in ((0, 5), (5, 12), (3, 3)):
        rows = global_batch_distances(embeddings[start:end], embeddings, start, metric).numpy()
        np.testing.assert_allclose(rows, whole[start:end], atol=1e-5)
        local_positive, local_negative = global_batch_masks(labels[start:end], labels, start)
        np.testing.assert_array_equal(local_positive.numpy(), positive[start:end])
        np.testing.assert_array_equal(local_negative.numpy(), negative[start:end])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("margin", (0.2, "soft"))
@pytest.mark.parametrize("replicas", (2, 3, 4))
def test_split_loss_equals_single_device_loss_and_gradient(rng, strategy, margin, replicas):
    for trial in range(3):
        labels = rng.integers(0, 4, size=14) if trial else pk_labels(4, 4)  # random labels: some rows lack positives
        embeddings = (0.5 * rng.normal(size=(len(labels), 6))).astype(np.float32)
        metric = METRICS[trial]
        expected, expected_gradient = value_and_gradient(
            lambda e: online_triplet_loss(labels, e, strategy=strategy, margin=margin, metric=metric), embeddings)
        value, gradient = value_and_gradient(
            lambda e: split_loss(labels, e, replicas, strategy, margin, metric), embeddings)
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(gradient, expected_gradient, atol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_replica_scope_mining_differs(rng, strategy):
    """Mining each half alone (P/2 identities per replica) is not the global-batch loss."""
    labels = pk_labels(4, 4)
    embeddings = (0.5 * rng.normal(size=(16, 6))).astype(np.float32)
    whole = float(online_triplet_loss(labels, embeddings, strategy=strategy))
    halves = [float(online_triplet_loss(labels[rows], embeddings[rows], strategy=strategy))
              for rows in (slice(0, 8), slice(8, 16))]
    assert abs(np.mean(halves) - whole) > 1e-3


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("margin", (0.2, "soft"))
def test_replica_without_rows_or_positive_pairs_gives_zero_not_nan(rng, strategy, margin):
    labels = np.array([0, 1, 2, 3, 0, 0, 1, 1])
    embeddings = tf.constant(rng.normal(size=(8, 4)).astype(np.float32))
    for start, end in ((0, 0), (0, 4)):  # no rows; four singletons in their own rows, positives elsewhere only
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            sums = global_batch_triplet_sums(labels[start:end], embeddings[start:end], labels, embeddings, start,
                                             strategy=strategy, margin=margin)
            share = normalised_share(sums, tf.constant(0.0) if end == 0 else sums.count)
        assert np.isfinite(float(share))
        assert np.all(np.isfinite(tape.gradient(share, embeddings).numpy()))
    nobody = global_batch_triplet_sums(labels[:0], embeddings[:0], labels, embeddings, 0, strategy=strategy)
    assert float(nobody.loss_sum) == 0.0 and float(nobody.count) == 0.0
