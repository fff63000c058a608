"""Cross-batch memory: every loss with a memory against explicit loops over the batch and the memory together.

The reference concatenates the batch (rows 0 .. B-1) and the memory (rows B .. B+M-1),
takes only the batch's rows as anchors, and lets positives and negatives be any row; a
valid triplet needs ``a != p`` and the labels of ``reference.is_valid_triplet``.
"""

import numpy as np
import pytest
import tensorflow as tf

import reference
from conftest import METRICS
from facetrip.losses import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    batch_semi_hard_triplet_loss,
    memory_contents,
    memory_enqueue,
    online_triplet_loss,
    semi_hard_triplet_loss,
)
from facetrip.losses.global_batch import global_batch_triplet_sums

STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
MARGINS = (0.2, "soft")


# ------------------------------------------------------------------ NumPy references


def anchor_distances(embeddings: np.ndarray, num_anchors: int, metric: str) -> np.ndarray:
    """(B, B + M) distances from the first ``num_anchors`` rows to every row; 0 from a row to itself."""
    result = np.zeros((num_anchors, len(embeddings)))
    for a in range(num_anchors):
        for j in range(len(embeddings)):
            if a != j:
                result[a, j] = reference.distance(embeddings[a], embeddings[j], metric)
    return result


def reference_with_memory(strategy, labels, embeddings, memory_labels, memory_embeddings, margin, metric):
    """(loss, fraction_positive_triplets or None), anchors = the batch's rows, any row as positive / negative."""
    all_labels = list(np.concatenate([np.reshape(labels, -1), np.reshape(memory_labels, -1)]))
    all_embeddings = np.concatenate([embeddings, np.reshape(memory_embeddings, (-1, embeddings.shape[1]))])
    num_anchors, num_rows = len(embeddings), len(all_embeddings)
    distances = anchor_distances(all_embeddings, num_anchors, metric)
    terms, counted, valid = [], 0, 0
    for a in range(num_anchors):
        positives = [p for p in range(num_rows) if p != a and all_labels[p] == all_labels[a]]
        negatives = [n for n in range(num_rows) if all_labels[n] != all_labels[a]]
        if strategy == "batch_hard":
            if positives and negatives:
                hardest = max(distances[a, p] for p in positives) - min(distances[a, n] for n in negatives)
                terms.append(reference.per_triplet(hardest, margin))
            continue
        for p in positives:
            if strategy == "semi_hard":
                if negatives:
                    farther = [distances[a, n] for n in negatives if distances[a, n] > distances[a, p]]
                    chosen = min(farther) if farther else max(distances[a, n] for n in negatives)
                    terms.append(reference.per_triplet(distances[a, p] - chosen, margin))
                continue
            for n in negatives:
                assert reference.is_valid_triplet(all_labels, a, p, n)
                valid += 1
                difference = distances[a, p] - distances[a, n]
                loss = reference.per_triplet(difference, margin)
                if margin == "soft":
                    terms.append(loss)
                    counted += difference > 0
                elif loss > 0:
                    terms.append(loss)
                    counted += 1
    if strategy != "batch_all":
        return (float(np.mean(terms)) if terms else 0.0), None
    denominator = valid if margin == "soft" else counted
    return (sum(terms) / denominator if denominator else 0.0), (counted / valid if valid else 0.0)


def tied_triplet_fraction(labels, embeddings, memory_labels, memory_embeddings, margin, metric, tolerance=1e-5):
    """Fraction of batch-all's valid triplets that sit on the border of being counted as positive.

    A triplet counts when ``d_ap - d_an > 0`` (soft margin) or ``d_ap - d_an + margin > 0``;
    where that quantity is exactly 0 in exact arithmetic, float32 rounding (``rsqrt`` in
    the cosine normalisation differs between CPUs) decides, so the fraction may differ
    from the float64 loops by at most this share.
    """
    all_labels = list(np.concatenate([np.reshape(labels, -1), np.reshape(memory_labels, -1)]))
    all_embeddings = np.concatenate([embeddings, np.reshape(memory_embeddings, (-1, embeddings.shape[1]))])
    distances = anchor_distances(all_embeddings, len(embeddings), metric)
    offset = 0.0 if margin == "soft" else margin
    tied, valid = 0, 0
    for a in range(len(embeddings)):
        for p in range(len(all_embeddings)):
            for n in range(len(all_embeddings)):
                if reference.is_valid_triplet(all_labels, a, p, n):
                    valid += 1
                    tied += abs(distances[a, p] - distances[a, n] + offset) <= tolerance
    return tied / valid if valid else 0.0


# ------------------------------------------------------------------------- the losses


def memory_loss(strategy, labels, embeddings, margin, metric, memory_labels=None, memory_embeddings=None):
    """(loss, fraction or None) of the public function of ``strategy``."""
    memory = {"memory_embeddings": memory_embeddings, "memory_labels": memory_labels}
    if strategy == "batch_all":
        return batch_all_triplet_loss(labels, embeddings, margin, metric=metric, **memory)
    function = batch_hard_triplet_loss if strategy == "batch_hard" else batch_semi_hard_triplet_loss
    return function(labels, embeddings, margin, metric=metric, **memory), None


def loss_and_gradients(strategy, labels, embeddings, margin, metric, memory_labels, memory_embeddings):
    """(loss, fraction or None, gradient w.r.t. the batch, gradient w.r.t. the memory or None)."""
    embeddings = tf.convert_to_tensor(embeddings)
    if memory_embeddings is not None:
        memory_embeddings = tf.convert_to_tensor(memory_embeddings)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(embeddings)
        if memory_embeddings is not None:
            tape.watch(memory_embeddings)
        loss, fraction = memory_loss(strategy, labels, embeddings, margin, metric, memory_labels, memory_embeddings)
    memory_gradient = None if memory_embeddings is None else tape.gradient(loss, memory_embeddings)
    return loss, fraction, tape.gradient(loss, embeddings), memory_gradient


def concatenated_loss(strategy, labels, embeddings, margin, metric, memory_labels, memory_embeddings):
    """TF reference by concatenation: the batch's rows mined against batch + stop_gradient(memory)."""
    sums = global_batch_triplet_sums(
        labels, embeddings,
        tf.concat([labels, memory_labels], axis=0),
        tf.concat([embeddings, tf.stop_gradient(memory_embeddings)], axis=0),
        offset=0, strategy=strategy, margin=margin, metric=metric,
    )
    return tf.math.divide_no_nan(sums.loss_sum, sums.count)


# --------------------------------------------------------------------------- the cases


def random_case(rng):
    """Labels 0..3 in the batch and the memory, random embeddings."""
    return (rng.integers(0, 4, 8), rng.normal(size=(8, 4)).astype(np.float32),
            rng.integers(0, 4, 6), rng.normal(size=(6, 4)).astype(np.float32))


def memory_only_labels_case(rng):
    """Anchors 6, 7 (labels 8, 9) have their only positives in the memory; labels 5, 6 live only in the memory."""
    labels = np.array([0, 0, 1, 1, 2, 2, 8, 9])
    memory_labels = np.array([8, 9, 5, 5, 6, 0, 9])
    return (labels, rng.normal(size=(8, 4)).astype(np.float32),
            memory_labels, rng.normal(size=(7, 4)).astype(np.float32))


def tied_case(rng):
    """Embeddings ``s * (+-e_k)``, s in {1, 2, 4}: many exactly equal distances in every metric."""

    def axis_points(count):
        points = np.zeros((count, 3), np.float32)
        points[np.arange(count), rng.integers(0, 3, count)] = rng.choice([-4.0, -2.0, -1.0, 1.0, 2.0, 4.0], count)
        return points

    return rng.integers(0, 3, 8), axis_points(8), rng.integers(0, 3, 9), axis_points(9)


def full_case(rng):
    """A memory three times the batch holding every label (a full XBM queue)."""
    return (np.repeat(np.arange(4), 2), rng.normal(size=(8, 4)).astype(np.float32),
            np.tile(np.arange(4), 6), rng.normal(size=(24, 4)).astype(np.float32))


CASES = {"random": random_case, "memory_only_labels": memory_only_labels_case, "ties": tied_case, "full": full_case}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_loss_with_memory_matches_the_explicit_loops(rng, strategy, metric, margin, case):
    """Value (and batch-all's fraction) against the loops; the gradient flows into the batch only."""
    labels, embeddings, memory_labels, memory_embeddings = CASES[case](rng)
    loss, fraction, batch_gradient, memory_gradient = loss_and_gradients(
        strategy, labels, embeddings, margin, metric, memory_labels, memory_embeddings)
    expected_loss, expected_fraction = reference_with_memory(
        strategy, labels, embeddings, memory_labels, memory_embeddings, margin, metric)

    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5, atol=1e-6)
    if expected_fraction is not None:
        # exact ties: a triplet at d_ap - d_an + margin = 0 may go either way in float32
        tied = tied_triplet_fraction(labels, embeddings, memory_labels, memory_embeddings, margin, metric)
        assert case == "ties" or tied == 0.0
        # the loops count no tie (exact in float64); float32 may count any of them
        assert expected_fraction - 1e-6 <= float(fraction) <= expected_fraction + tied + 1e-6
    assert memory_gradient is None or not np.any(memory_gradient.numpy())
    assert np.all(np.isfinite(batch_gradient.numpy()))
    if case != "ties":  # at tied distances the hinge and the max have no single gradient
        embeddings_tensor = tf.convert_to_tensor(embeddings)
        with tf.GradientTape() as tape:
            tape.watch(embeddings_tensor)
            expected = concatenated_loss(strategy, labels, embeddings_tensor, margin, metric, memory_labels,
                                         tf.convert_to_tensor(memory_embeddings))
        np.testing.assert_allclose(float(expected), expected_loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batch_gradient.numpy(), tape.gradient(expected, embeddings_tensor).numpy(),
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradient_matches_finite_differences_of_the_loops(rng, strategy, metric, margin):
    """float64: the batch's gradient is the numerical gradient of the reference with the memory held fixed."""
    labels, memory_labels = np.array([0, 0, 1, 1, 2, 3]), np.array([0, 1, 2, 3, 4])
    embeddings, memory_embeddings = rng.normal(size=(6, 3)), rng.normal(size=(5, 3))
    _, _, gradient, _ = loss_and_gradients(strategy, labels, embeddings, margin, metric, memory_labels,
                                           memory_embeddings)
    expected = reference.numerical_gradient(
        lambda batch: reference_with_memory(strategy, labels, batch, memory_labels, memory_embeddings, margin,
                                            metric)[0],
        embeddings,
    )
    np.testing.assert_allclose(gradient.numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_memory_is_exactly_the_batch_only_loss(rng, strategy, metric, margin):
    labels, embeddings = rng.integers(0, 4, 12), rng.normal(size=(12, 5)).astype(np.float32)
    empty_labels, empty_embeddings = np.zeros([0], np.int64), np.zeros([0, 5], np.float32)
    batch_only = loss_and_gradients(strategy, labels, embeddings, margin, metric, None, None)
    with_memory = loss_and_gradients(strategy, labels, embeddings, margin, metric, empty_labels, empty_embeddings)
    for expected, actual in zip(batch_only[:3], with_memory[:3]):
        if expected is not None:
            np.testing.assert_array_equal(actual.numpy(), expected.numpy())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_memory_keeps_the_batch_only_loss(rng, strategy):
    """None for both arguments is the classic call, bit for bit; one without the other is refused."""
    labels, embeddings = rng.integers(0, 4, 12), rng.normal(size=(12, 5)).astype(np.float32)
    classic = memory_loss(strategy, labels, embeddings, 0.2, "euclidean")
    explicit = memory_loss(strategy, labels, embeddings, 0.2, "euclidean", None, None)
    for expected, actual in zip(classic, explicit):
        if expected is not None:
            np.testing.assert_array_equal(actual.numpy(), expected.numpy())
    np.testing.assert_array_equal(
        online_triplet_loss(labels, embeddings, strategy).numpy(),
        online_triplet_loss(labels, embeddings, strategy, memory_embeddings=None, memory_labels=None).numpy(),
    )
    with pytest.raises(ValueError, match="pass both"):
        memory_loss(strategy, labels, embeddings, 0.2, "euclidean", memory_labels=labels)


def test_online_loss_and_alias_pass_the_memory_on(rng):
    labels, embeddings, memory_labels, memory_embeddings = random_case(rng)
    expected, _ = reference_with_memory("semi_hard", labels, embeddings, memory_labels, memory_embeddings, 0.2,
                                        "euclidean")
    for loss in (
        online_triplet_loss(labels, embeddings, "semi_hard", 0.2, memory_embeddings=memory_embeddings,
                            memory_labels=memory_labels[:, np.newaxis]),
        semi_hard_triplet_loss(labels, embeddings, 0.2, memory_embeddings=memory_embeddings,
                               memory_labels=memory_labels),
    ):
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_memory_of_any_size_in_one_traced_function(rng):
    """One tf.function trace serves a memory of any size, empty included (a growing queue)."""
    loss_function = tf.function(
        lambda labels, embeddings, memory_labels, memory_embeddings: batch_all_triplet_loss(
            labels, embeddings, 0.2, memory_embeddings=memory_embeddings, memory_labels=memory_labels)[0],
        input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 4], tf.float32),
                         tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 4], tf.float32)],
    )
    labels, embeddings, memory_labels, memory_embeddings = random_case(rng)
    for size in (0, 3, 6):
        expected, _ = reference_with_memory("batch_all", labels, embeddings, memory_labels[:size],
                                            memory_embeddings[:size], 0.2, "euclidean")
        loss = loss_function(labels, embeddings, memory_labels[:size], memory_embeddings[:size])
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


# --------------------------------------------------------------------------- the FIFO


@pytest.mark.parametrize("capacity", [1, 5, 8])
def test_enqueue_keeps_the_last_rows_in_push_order(rng, capacity):
    """Pushing batches of 0 .. 11 rows (some larger than the memory) keeps the last ``capacity`` rows, oldest first."""
    memory_embeddings, memory_labels = tf.zeros([capacity, 2]), tf.fill([capacity], tf.constant(-1, tf.int64))
    count = tf.constant(0, tf.int64)
    pushed_embeddings, pushed_labels = np.zeros([0, 2], np.float32), np.zeros([0], np.int64)
    enqueue = tf.function(memory_enqueue)
    for batch_size in (3, 0, 4, 11, 2, 1, 6):
        new_embeddings = rng.normal(size=(batch_size, 2)).astype(np.float32)
        new_labels = rng.integers(0, 100, (batch_size, 1))
        memory_embeddings, memory_labels, count = enqueue(memory_embeddings, memory_labels, count, new_embeddings,
                                                          new_labels)
        pushed_embeddings = np.concatenate([pushed_embeddings, new_embeddings])
        pushed_labels = np.concatenate([pushed_labels, new_labels[:, 0]])
        held = min(len(pushed_labels), capacity)
        assert int(count) == len(pushed_labels)
        contents_embeddings, contents_labels = memory_contents(memory_embeddings, memory_labels, count)
        np.testing.assert_array_equal(contents_embeddings.numpy(), pushed_embeddings[len(pushed_labels) - held :])
        np.testing.assert_array_equal(contents_labels.numpy(), pushed_labels[len(pushed_labels) - held :])
        # the ring buffer itself: the i-th row pushed sits in slot i mod capacity
        for index in range(len(pushed_labels) - held, len(pushed_labels)):
            assert int(memory_labels[index % capacity]) == pushed_labels[index]


def test_enqueue_before_the_memory_fills(rng):
    """Slots not yet written keep their content, and ``memory_contents`` leaves them out."""
    memory_embeddings, memory_labels = tf.zeros([6, 2]), tf.fill([6], tf.constant(-1, tf.int32))
    new_embeddings = rng.normal(size=(4, 2)).astype(np.float32)
    memory_embeddings, memory_labels, count = memory_enqueue(memory_embeddings, memory_labels, 0, new_embeddings,
                                                             np.array([3, 1, 4, 1]))
    np.testing.assert_array_equal(memory_labels.numpy(), [3, 1, 4, 1, -1, -1])
    np.testing.assert_array_equal(memory_embeddings.numpy()[4:], 0.0)
    contents_embeddings, contents_labels = memory_contents(memory_embeddings, memory_labels, count)
    np.testing.assert_array_equal(contents_embeddings.numpy(), new_embeddings)
    np.testing.assert_array_equal(contents_labels.numpy(), [3, 1, 4, 1])


def test_enqueued_rows_carry_no_gradient(rng):
    new_embeddings = tf.convert_to_tensor(rng.normal(size=(3, 2)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(new_embeddings)
        memory_embeddings, _, _ = memory_enqueue(tf.zeros([4, 2]), tf.zeros([4], tf.int64), 0, new_embeddings,
                                                 np.arange(3))
        total = tf.reduce_sum(memory_embeddings)
    gradient = tape.gradient(total, new_embeddings)
    assert gradient is None or not np.any(gradient.numpy())
