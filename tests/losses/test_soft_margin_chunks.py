"""The soft-margin batch-all loss walked in several chunks against one chunk and the explicit-loop reference.

``batch_all_triplet_loss(..., margin="soft")`` lists the M positive pairs (a, p) in
row-major order (anchor by anchor) and walks them in chunks of
``C = max(1, _SOFT_BATCH_ALL_CHUNK_ELEMENTS // B)`` pairs, each a (C, B) slab of
``d_ap - d_an``, with a hand-written gradient; ``ceil(M / C)`` chunks in all. The tests
shrink the element budget (``monkeypatch``) so that a batch of 12 walks in 1 to 28
chunks, whose borders fall inside an anchor's positives and between identities, and
check the loss, the fraction of violating triplets and the gradient against the one-chunk
result and against ``reference.batch_all``.

In eager mode ``tf.while_loop`` runs its body as Python once per chunk, and the body
calls ``tf.math.softplus`` once, so counting those calls counts the chunks.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

import reference
from conftest import METRICS, pk_labels
from facetrip.losses import batch_all_triplet_loss, triplet

# Elements: every batch here fits in one chunk. (The budget is divided by B as an int32
# tensor, so it must stay below 2^31: 2^40 // B wraps to 0 and gives chunks of one pair.)
ONE_CHUNK = 1 << 30
# Identities of 5, 2, 3, 1 and 1 images, interleaved: positive pairs 5*4 + 2*1 + 3*2 = 28,
# and the singletons 3 and 4 are anchors without a positive (but negatives of everyone).
UNEVEN_LABELS = np.array([0, 1, 0, 2, 0, 3, 2, 0, 1, 4, 2, 0])
UNEVEN_PAIRS = 28


@pytest.fixture
def chunk_elements(monkeypatch):
    """Set the element budget of a chunk for the rest of the test."""

    def set_budget(elements: int) -> None:
        monkeypatch.setattr(triplet, "_SOFT_BATCH_ALL_CHUNK_ELEMENTS", elements)

    return set_budget


@pytest.fixture
def chunk_counter(monkeypatch):
    """A list that gets one entry per softplus call, i.e. per forward chunk (eager mode)."""
    calls = []
    softplus = tf.math.softplus

    def counting_softplus(*arguments, **options):
        calls.append(1)
        return softplus(*arguments, **options)

    monkeypatch.setattr(tf.math, "softplus", counting_softplus)
    return calls


def soft_loss(labels, embeddings, metric="euclidean"):
    """(loss, fraction, gradient with respect to the embeddings) of the soft-margin batch-all loss."""
    embeddings = tf.convert_to_tensor(embeddings)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        loss, fraction = batch_all_triplet_loss(labels, embeddings, "soft", metric=metric)
    return float(loss), float(fraction), tape.gradient(loss, embeddings).numpy()


# (elements per chunk, chunks for the 28 pairs of UNEVEN_LABELS at B = 12):
# C = max(1, elements // 12) pairs per chunk, ceil(28 / C) chunks.
BUDGETS = [
    (1, 28),  # 1 // 12 = 0, raised to 1 pair per chunk
    (3 * 12, 10),  # 3 pairs: 9 full chunks and one of 1
    (5 * 12 + 11, 6),  # 71 // 12 = 5 pairs (rounded down): 5 full chunks and one of 3
    (27 * 12, 2),  # 27 pairs and the last 1
    (28 * 12, 1),  # exactly one chunk
]


@pytest.mark.parametrize("elements, chunks", BUDGETS)
def test_the_element_budget_sets_the_number_of_chunks(rng, chunk_elements, chunk_counter, elements, chunks):
    assert chunks == math.ceil(UNEVEN_PAIRS / max(1, elements // len(UNEVEN_LABELS)))
    assert reference.anchor_positive_mask(UNEVEN_LABELS).sum() == UNEVEN_PAIRS
    chunk_elements(elements)
    batch_all_triplet_loss(UNEVEN_LABELS, rng.normal(size=(12, 5)).astype(np.float32), "soft")
    assert len(chunk_counter) == chunks


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("elements, chunks", BUDGETS[:-1])
def test_chunked_loss_and_fraction_match_one_chunk_and_the_reference(rng, chunk_elements, chunk_counter, metric,
                                                                     elements, chunks):
    """float32: the loss to 1e-6 of one chunk's (only the order of the sums differs) and 1e-5 of the
    float64 reference; the fraction is a ratio of exact integer counts, so it matches exactly."""
    embeddings = rng.normal(size=(12, 5)).astype(np.float32)
    chunk_elements(ONE_CHUNK)
    one_loss, one_fraction, _ = soft_loss(UNEVEN_LABELS, embeddings, metric)
    assert len(chunk_counter) == 1
    chunk_elements(elements)
    loss, fraction, _ = soft_loss(UNEVEN_LABELS, embeddings, metric)
    assert len(chunk_counter) == 1 + chunks
    expected_loss, expected_fraction = reference.batch_all(UNEVEN_LABELS, embeddings, "soft", metric)
    np.testing.assert_allclose(loss, one_loss, rtol=1e-6)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    assert fraction == one_fraction
    np.testing.assert_allclose(fraction, expected_fraction, rtol=1e-7)
    assert 0.05 < fraction < 0.95  # random embeddings: some triplets violate d_ap < d_an, some do not


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("elements", [1, 3 * 12, 5 * 12])
def test_chunked_gradient_matches_one_chunk_and_finite_differences(rng, chunk_elements, chunk_counter, metric, elements):
    """float64: the hand-written gradient summed over 28, 10 or 6 chunks equals one chunk's (1e-12,
    the order of additions) and central differences of the explicit-loop reference (1e-4, as in
    test_triplet.py)."""
    embeddings = rng.normal(size=(12, 3))
    chunk_elements(ONE_CHUNK)
    _, _, one_gradient = soft_loss(UNEVEN_LABELS, embeddings, metric)
    chunk_elements(elements)
    _, _, gradient = soft_loss(UNEVEN_LABELS, embeddings, metric)
    assert len(chunk_counter) == 1 + math.ceil(UNEVEN_PAIRS / max(1, elements // 12))
    np.testing.assert_allclose(gradient, one_gradient, rtol=1e-12, atol=1e-14)
    expected = reference.numerical_gradient(lambda e: reference.batch_all(UNEVEN_LABELS, e, "soft", metric)[0], embeddings)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6)


def test_chunks_that_split_identities_by_hand(chunk_elements, chunk_counter):
    """Identity 0 at 0 and 1, identity 1 at 0.4 and 3 on a line; 3 pairs per chunk.

    The pairs, in order, are (0,1), (1,0), (2,3), (3,2): the first chunk holds both of
    identity 0's and one of identity 1's, the second chunk the other. Each pair has two
    negatives, 8 valid triplets, with d_ap - d_an:
      anchor 0 (x=0), d_ap = 1:   1 - 0.4 = 0.6,  1 - 3 = -2
      anchor 1 (x=1), d_ap = 1:   1 - 0.6 = 0.4,  1 - 2 = -1
      anchor 2 (x=0.4), d_ap = 2.6: 2.6 - 0.4 = 2.2, 2.6 - 0.6 = 2.0
      anchor 3 (x=3), d_ap = 2.6: 2.6 - 3 = -0.4, 2.6 - 2 = 0.6
    5 of the 8 are positive (violating): fraction 5/8; the loss is their softplus mean.
    """
    embeddings = np.array([[0.0], [1.0], [0.4], [3.0]], np.float32)
    differences = np.array([0.6, -2.0, 0.4, -1.0, 2.2, 2.0, -0.4, 0.6])
    chunk_elements(3 * 4)
    loss, fraction, gradient = soft_loss([0, 0, 1, 1], embeddings)
    assert len(chunk_counter) == 2
    np.testing.assert_allclose(loss, np.mean(np.logaddexp(0.0, differences)), rtol=1e-6)
    assert fraction == 5 / 8
    chunk_elements(ONE_CHUNK)
    np.testing.assert_allclose(gradient, soft_loss([0, 0, 1, 1], embeddings)[2], rtol=1e-6, atol=1e-7)
    assert len(chunk_counter) == 2 + 1


@pytest.mark.parametrize("labels", [np.zeros(6, np.int64), np.arange(6), np.array([0, 0, 1, 2, 3, 4])])
def test_chunked_batches_without_valid_triplets_or_with_few(rng, chunk_elements, labels):
    """One identity (pairs but no negatives), all singletons (no pairs) and a single pair with 4
    negatives, one pair per chunk: 0 / 0 / the reference, never NaN."""
    chunk_elements(1)
    embeddings = rng.normal(size=(6, 4)).astype(np.float32)
    loss, fraction, gradient = soft_loss(labels, embeddings)
    expected_loss, expected_fraction = reference.batch_all(labels, embeddings, "soft", "euclidean")
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fraction, expected_fraction, rtol=1e-7)
    assert np.all(np.isfinite(gradient))


def test_chunked_graph_mode_with_unknown_batch_size(rng, chunk_elements):
    """Traced with the budget of 3 pairs of B = 12 (chunk size and count are tensors), at B = 12 and 13."""
    chunk_elements(3 * 12)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, None], tf.float32)])
    def graph_loss(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss, fraction = batch_all_triplet_loss(labels, embeddings, "soft")
        return loss, fraction, tape.gradient(loss, embeddings)

    for labels in (UNEVEN_LABELS, np.append(UNEVEN_LABELS, 2)):
        embeddings = rng.normal(size=(len(labels), 5)).astype(np.float32)
        loss, fraction, gradient = graph_loss(labels.astype(np.int64), embeddings)
        expected_loss, expected_fraction = reference.batch_all(labels, embeddings, "soft", "euclidean")
        np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
        np.testing.assert_allclose(float(fraction), expected_fraction, rtol=1e-7)
        chunk_elements(ONE_CHUNK)
        np.testing.assert_allclose(gradient.numpy(), soft_loss(labels, embeddings)[2], rtol=1e-5, atol=1e-7)
        chunk_elements(3 * 12)


def test_the_default_budget_chunks_a_large_batch(rng, chunk_elements, chunk_counter):
    """B = 1024 (128 identities x 8): M = 1024 x 7 = 7,168 pairs, and the default budget of
    2^22 elements gives C = 4,096 pairs per chunk, so 2 chunks (4,096 and 3,072).

    The loss and fraction match one chunk to 1e-6 and an all-float64 run to 1e-5; the
    gradient matches one chunk's to 1e-6 of its largest entry.
    """
    assert triplet._SOFT_BATCH_ALL_CHUNK_ELEMENTS == 1 << 22
    labels = pk_labels(128, 8)
    embeddings = rng.normal(size=(1024, 16))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    loss, fraction, gradient = soft_loss(labels, embeddings.astype(np.float32))
    assert len(chunk_counter) == 2
    loss64, fraction64, _ = soft_loss(labels, embeddings)
    chunk_elements(ONE_CHUNK)
    one_loss, one_fraction, one_gradient = soft_loss(labels, embeddings.astype(np.float32))
    assert len(chunk_counter) == 2 + 2 + 1  # the float64 run took 2 chunks too, the one-chunk run 1
    np.testing.assert_allclose(loss, one_loss, rtol=1e-6)
    np.testing.assert_allclose(loss, loss64, rtol=1e-5)
    np.testing.assert_allclose(fraction, one_fraction, rtol=1e-6)
    np.testing.assert_allclose(fraction, fraction64, rtol=1e-5)
    np.testing.assert_allclose(gradient, one_gradient, atol=1e-6 * np.abs(one_gradient).max())
