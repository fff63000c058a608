"""Miners: their selection with a plain reduction is the fused loss, and their indices are those of NumPy loops.

The equality tests run in float64: the fused losses read d_ap and d_an off the (B, B)
matrix (|x|^2 - 2<x, y> + |y|^2), the plain reduction recomputes them from the gathered
rows (|x - y|^2); in float32 the two roundings differ by up to ~1e-6 on their own.
"""

import numpy as np
import pytest
import tensorflow as tf

import reference
from conftest import MARGINS, METRICS, pk_labels
from facetrip.losses import (
    MinedTriplets,
    batch_all_miner,
    batch_all_triplet_loss,
    batch_hard_miner,
    batch_hard_triplet_loss,
    batch_semi_hard_triplet_loss,
    paired_distances,
    semi_hard_miner,
    triplet_loss,
)

SEEDS = (0, 1, 2)

LAYOUTS = {
    "P x K 4 x 3": lambda rng: pk_labels(4, 3),
    "P x K 3 x 5": lambda rng: pk_labels(3, 5),
    "random labels": lambda rng: rng.integers(0, 4, size=13),
    "singletons": lambda rng: np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 5]),  # 2, 3, 4 have no positive
    "one identity": lambda rng: np.zeros(6, int),  # no anchor has a negative
    "all different": lambda rng: np.arange(6),  # no anchor has a positive
}


def batches(dtype=np.float64, dim=5):
    """(labels, embeddings) for every seed and label layout."""
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        for make_labels in LAYOUTS.values():
            labels = make_labels(rng)
            yield labels, rng.normal(size=(len(labels), dim)).astype(dtype)


def per_triplet_losses(embeddings, triplets, margin, metric):
    """A user's own per-triplet loss on (T, 3) index rows: gather, paired distances, hinge or softplus."""
    anchor, positive, negative = tf.unstack(tf.gather(embeddings, triplets), axis=1)  # (T, D) each
    difference = paired_distances(anchor, positive, metric=metric) - paired_distances(anchor, negative, metric=metric)
    if margin == "soft":
        return tf.math.softplus(difference)  # (T,)
    return tf.maximum(difference + margin, 0.0)  # (T,)


def mean_or_zero(values):
    return tf.math.divide_no_nan(tf.reduce_sum(values), tf.cast(tf.size(values), values.dtype))


def triplet_loss_of(mined: MinedTriplets, embeddings, margin, metric):
    """Facetrip's explicit-triplet loss on the valid mined triplets: the mean over them."""
    anchor, positive, negative = tf.unstack(tf.gather(embeddings, mined.valid_triplets()), axis=1)  # (T, D) each
    return triplet_loss(anchor, positive, negative, margin, metric=metric)


def value_and_gradient(function, embeddings):
    embeddings = tf.convert_to_tensor(embeddings)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        value = function(embeddings)
    gradient = tape.gradient(value, embeddings, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return value, tf.convert_to_tensor(gradient)  # tf.gather's gradient comes as IndexedSlices


def assert_same_loss_and_gradient(fused, plain, embeddings):
    fused_loss, fused_gradient = value_and_gradient(fused, embeddings)
    plain_loss, plain_gradient = value_and_gradient(plain, embeddings)
    assert np.isfinite(float(plain_loss))
    np.testing.assert_allclose(float(plain_loss), float(fused_loss), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(plain_gradient.numpy(), fused_gradient.numpy(), rtol=1e-6, atol=1e-6)


# --------------------------------------------------- selection + plain reduction = fused loss


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", MARGINS)
def test_batch_hard_miner_with_triplet_loss_is_the_batch_hard_loss(metric, margin):
    for labels, embeddings in batches():
        assert_same_loss_and_gradient(
            lambda e: batch_hard_triplet_loss(labels, e, margin, metric=metric),
            lambda e: triplet_loss_of(batch_hard_miner(labels, e, metric=metric), e, margin, metric),
            embeddings,
        )


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", MARGINS)
def test_semi_hard_miner_with_triplet_loss_is_the_semi_hard_loss(metric, margin):
    for labels, embeddings in batches():
        assert_same_loss_and_gradient(
            lambda e: batch_semi_hard_triplet_loss(labels, e, margin, metric=metric),
            lambda e: triplet_loss_of(semi_hard_miner(labels, e, metric=metric), e, margin, metric),
            embeddings,
        )


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", MARGINS)
def test_batch_all_miner_with_a_mean_over_positive_losses_is_the_batch_all_loss(metric, margin):
    """Every valid triplet, a user's per-triplet loss, and the mean over those with a positive loss."""

    def plain(e):
        losses = per_triplet_losses(e, batch_all_miner(labels, e).valid_triplets(), margin, metric)  # (T,)
        return mean_or_zero(tf.boolean_mask(losses, losses > 0))

    for labels, embeddings in batches():
        assert_same_loss_and_gradient(lambda e: batch_all_triplet_loss(labels, e, margin, metric=metric)[0], plain, embeddings)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", MARGINS)
def test_batch_all_miner_with_margin_keeps_the_triplets_the_loss_averages_over(metric, margin):
    """With the margin, the miner keeps exactly the triplets counted by the fused loss (their share is its fraction)."""
    for labels, embeddings in batches():
        assert_same_loss_and_gradient(
            lambda e: batch_all_triplet_loss(labels, e, margin, metric=metric)[0],
            lambda e: triplet_loss_of(batch_all_miner(labels, e, margin=margin, metric=metric), e, margin, metric),
            embeddings,
        )
        if margin != "soft":
            _, fraction = batch_all_triplet_loss(labels, embeddings, margin, metric=metric)
            num_active = int(tf.size(batch_all_miner(labels, embeddings, margin=margin, metric=metric).anchor))
            num_valid = int(tf.size(batch_all_miner(labels, embeddings).anchor))
            np.testing.assert_allclose(num_active / max(num_valid, 1), float(fraction), rtol=1e-12)


@pytest.mark.parametrize("miner", [batch_hard_miner, semi_hard_miner, batch_all_miner])
def test_float32_selection_gives_the_fused_loss_within_float32_rounding(miner):
    fused = {
        batch_hard_miner: batch_hard_triplet_loss,
        semi_hard_miner: batch_semi_hard_triplet_loss,
        batch_all_miner: lambda *args: batch_all_triplet_loss(*args)[0],
    }[miner]
    for labels, embeddings in batches(np.float32):
        mined = miner(labels, embeddings, margin=0.2) if miner is batch_all_miner else miner(labels, embeddings)
        np.testing.assert_allclose(
            float(triplet_loss_of(mined, embeddings, 0.2, "euclidean")), float(fused(labels, embeddings, 0.2)), atol=1e-5
        )


# ------------------------------------------------------------ indices against NumPy loops


def reference_batch_hard(labels, distances):
    """(a, p, n) per anchor with a positive and a negative: the farthest positive, the nearest negative."""
    rows = []
    for a in range(len(labels)):
        positives = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if positives and negatives:
            hardest_positive = min(positives, key=lambda p: (-distances[a, p], p))  # ties: the lowest index
            hardest_negative = min(negatives, key=lambda n: (distances[a, n], n))
            rows.append((a, hardest_positive, hardest_negative))
    return rows


def reference_semi_hard(labels, distances):
    """(a, p, n) per positive pair whose anchor has a negative: the nearest negative farther than p, else the farthest."""
    rows = []
    for a in range(len(labels)):
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [n for n in negatives if distances[a, n] > distances[a, p]]
            if farther:
                chosen = min(farther, key=lambda n: (distances[a, n], n))
            else:
                chosen = min(negatives, key=lambda n: (-distances[a, n], n))
            rows.append((a, p, chosen))
    return rows


def reference_batch_all(labels, distances, margin=None):
    """Every valid (a, p, n) in lexicographic order; with a number margin, those with d_an < d_ap + margin."""
    size = len(labels)
    return [
        (a, p, n)
        for a in range(size)
        for p in range(size)
        for n in range(size)
        if reference.is_valid_triplet(labels, a, p, n) and (margin is None or distances[a, n] < distances[a, p] + margin)
    ]


def tied_batch(rng, metric):
    """Labels and float64 embeddings with many exactly equal distances.

    Euclidean and squared: points on a small integer grid, whose distances are exact in
    any order of summation. Cosine: random directions with some rows copied onto others.
    """
    labels = rng.integers(0, 4, size=14)
    if metric == "cosine":
        embeddings = rng.normal(size=(14, 3))
        embeddings[rng.integers(0, 14, size=6)] = embeddings[rng.integers(0, 14, size=6)]
    else:
        embeddings = rng.integers(0, 3, size=(14, 2)).astype(np.float64)
    return labels, embeddings


def assert_rows(mined: MinedTriplets, expected):
    assert mined.anchor.dtype == mined.positive.dtype == mined.negative.dtype == tf.int32
    assert mined.valid.dtype == tf.bool
    np.testing.assert_array_equal(mined.valid_triplets().numpy().reshape(-1, 3), np.array(expected, int).reshape(-1, 3))
    invalid = ~mined.valid.numpy()
    np.testing.assert_array_equal(mined.positive.numpy()[invalid], mined.anchor.numpy()[invalid])
    np.testing.assert_array_equal(mined.negative.numpy()[invalid], mined.anchor.numpy()[invalid])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("metric", METRICS)
def test_batch_hard_indices_match_the_loops(seed, metric):
    labels, embeddings = tied_batch(np.random.default_rng(seed), metric)
    mined = batch_hard_miner(labels, embeddings, metric=metric)
    np.testing.assert_array_equal(mined.anchor.numpy(), np.arange(len(labels)))
    assert_rows(mined, reference_batch_hard(labels, reference.pairwise(embeddings, metric)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("metric", METRICS)
def test_semi_hard_indices_match_the_loops(seed, metric):
    labels, embeddings = tied_batch(np.random.default_rng(seed), metric)
    mined = semi_hard_miner(labels, embeddings, metric=metric)
    max_positives = max(np.sum(labels == label) - 1 for label in labels)
    assert mined.anchor.shape == (len(labels) * max_positives,)
    assert_rows(mined, reference_semi_hard(labels, reference.pairwise(embeddings, metric)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", [None, "soft", 0.0, 0.5])
def test_batch_all_indices_match_the_loops(seed, metric, margin):
    labels, embeddings = tied_batch(np.random.default_rng(seed), metric)
    mined = batch_all_miner(labels, embeddings, margin=margin, metric=metric)
    assert bool(tf.reduce_all(mined.valid))
    number_margin = None if margin in (None, "soft") else margin
    assert_rows(mined, reference_batch_all(labels, reference.pairwise(embeddings, metric), number_margin))


def test_ties_go_to_the_lowest_index():
    """Points on a line; identity 0 at 0 (anchor 0), +2 (row 1) and -2 (row 2); identity 1 at +1 (row 3), -1 (row 4).

    Anchor 0: both positives are 2 away and both negatives 1 away, so batch-hard picks
    positive 1 and negative 3. Semi-hard: no negative is farther than 2, so the fallback
    is the farthest negative; both are 1 away, and it is row 3, not the last in sorted order.
    """
    labels = np.array([0, 0, 0, 1, 1])
    embeddings = np.array([[0.0], [2.0], [-2.0], [1.0], [-1.0]])
    hard = batch_hard_miner(labels, embeddings)
    assert (int(hard.positive[0]), int(hard.negative[0])) == (1, 3)
    semi_hard = semi_hard_miner(labels, embeddings).valid_triplets().numpy()
    np.testing.assert_array_equal(semi_hard[:2], [[0, 1, 3], [0, 2, 3]])


def test_semi_hard_negative_must_be_strictly_farther():
    """Identity 0 at 0 and 1, identity 1 at -1 and 3 (rows 2, 3). Anchor 0, positive 1 (d_ap = 1):
    row 2 is at distance 1, not farther, so the semi-hard negative is row 3 (distance 3)."""
    labels = np.array([0, 0, 1, 1])
    embeddings = np.array([[0.0], [1.0], [-1.0], [3.0]])
    np.testing.assert_array_equal(semi_hard_miner(labels, embeddings).valid_triplets().numpy()[0], [0, 1, 3])


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("miner", [batch_hard_miner, semi_hard_miner, batch_all_miner])
@pytest.mark.parametrize("labels", [np.zeros(5, int), np.arange(5), np.zeros(1, int), np.zeros(0, int)], ids=["one identity", "all different", "one row", "empty"])
def test_no_valid_anchor_gives_no_triplet_and_a_zero_loss(rng, miner, labels):
    embeddings = rng.normal(size=(len(labels), 4))
    mined = miner(labels, embeddings)
    assert not bool(tf.reduce_any(mined.valid))
    assert mined.valid_triplets().shape == (0, 3)
    loss, gradient = value_and_gradient(lambda e: triplet_loss_of(miner(labels, e), e, 0.2, "euclidean"), embeddings)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(gradient.numpy(), 0.0)


@pytest.mark.parametrize("miner", [batch_hard_miner, semi_hard_miner, batch_all_miner])
def test_labels_shaped_b_1_or_strings_give_the_same_triplets(rng, miner):
    labels = rng.integers(0, 3, size=9)
    embeddings = rng.normal(size=(9, 4))
    expected = miner(labels, embeddings).valid_triplets().numpy()
    np.testing.assert_array_equal(miner(labels[:, None], embeddings).valid_triplets().numpy(), expected)
    names = np.array(["ann", "bob", "cyd"])[labels]
    np.testing.assert_array_equal(miner(names, embeddings).valid_triplets().numpy(), expected)


@pytest.mark.parametrize("miner", [batch_hard_miner, semi_hard_miner, batch_all_miner])
def test_miners_run_in_a_graph_with_an_unknown_batch_size(rng, miner):
    labels, embeddings = rng.integers(0, 3, size=10), rng.normal(size=(10, 4)).astype(np.float32)
    graph = tf.function(
        lambda l, e: miner(l, e).valid_triplets(),
        input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 4], tf.float32)],
    )
    np.testing.assert_array_equal(graph(labels, embeddings).numpy(), miner(labels, embeddings).valid_triplets().numpy())


@pytest.mark.parametrize("margin", [-0.1, "hard"])
def test_batch_all_miner_refuses_a_bad_margin(margin):
    with pytest.raises(ValueError, match="margin"):
        batch_all_miner([0, 0, 1], [[0.0], [1.0], [2.0]], margin=margin)
