"""Every strategy against the explicit-loop NumPy reference, values and gradients, and edge cases."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference
from conftest import MARGINS, METRICS, pk_labels
from facetrip.losses import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    batch_semi_hard_triplet_loss,
    online_triplet_loss,
    resolve_strategy,
    triplet_batch_statistics,
    triplet_loss,
)

LOSSES = {
    "batch_all": (lambda *args, **kwargs: batch_all_triplet_loss(*args, **kwargs)[0], lambda *a: reference.batch_all(*a)[0]),
    "batch_hard": (batch_hard_triplet_loss, reference.batch_hard),
    "semi_hard": (batch_semi_hard_triplet_loss, reference.semi_hard),
}


def loss_and_gradient(strategy, labels, embeddings, margin, metric):
    loss_function, _ = LOSSES[strategy]
    embeddings = tf.convert_to_tensor(embeddings)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        loss = loss_function(labels, embeddings, margin, metric=metric)
    return loss, tape.gradient(loss, embeddings)


def random_batch(rng, size=12, dim=5, num_identities=4, dtype=np.float32):
    return rng.integers(0, num_identities, size=size), rng.normal(size=(size, dim)).astype(dtype)


# ----------------------------------------------------------------------- classic tests


@pytest.mark.parametrize("squared", [True, False])
def test_simple_batch_all_triplet_loss(rng, squared):
    """One class only: no valid triplet, so the loss and the fraction are 0, not NaN."""
    embeddings = rng.uniform(size=(10, 6)).astype(np.float32)
    labels = np.zeros(10, np.float32)
    loss, fraction = batch_all_triplet_loss(labels, embeddings, 0.2, squared=squared)
    assert float(loss) == 0.0
    assert float(fraction) == 0.0


@pytest.mark.parametrize("squared", [True, False])
def test_batch_all_triplet_loss(rng, squared):
    labels, embeddings = random_batch(rng, size=10, dim=6, num_identities=5)
    metric = "squared" if squared else "euclidean"
    loss, fraction = batch_all_triplet_loss(labels, embeddings, 0.5, squared=squared)
    expected_loss, expected_fraction = reference.batch_all(labels, embeddings, 0.5, metric)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
    np.testing.assert_allclose(float(fraction), expected_fraction, rtol=1e-6)


@pytest.mark.parametrize("squared", [True, False])
def test_batch_hard_triplet_loss(rng, squared):
    labels, embeddings = random_batch(rng, size=10, dim=6, num_identities=5)
    metric = "squared" if squared else "euclidean"
    loss = batch_hard_triplet_loss(labels, embeddings, 0.5, squared=squared)
    np.testing.assert_allclose(float(loss), reference.batch_hard(labels, embeddings, 0.5, metric), rtol=1e-5)


@pytest.mark.parametrize("squared", [True, False])
def test_batch_semi_hard_triplet_loss(rng, squared):
    labels, embeddings = random_batch(rng, size=10, dim=6, num_identities=5)
    metric = "squared" if squared else "euclidean"
    loss = batch_semi_hard_triplet_loss(labels, embeddings, 0.5, squared=squared)
    np.testing.assert_allclose(float(loss), reference.semi_hard(labels, embeddings, 0.5, metric), rtol=1e-5)


# ------------------------------------------------------- every strategy x metric x margin


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", MARGINS)
def test_loss_matches_reference(rng, strategy, metric, margin):
    loss_function, reference_function = LOSSES[strategy]
    for labels, embeddings in (random_batch(rng), (pk_labels(4, 4), rng.normal(size=(16, 8)).astype(np.float32))):
        loss = loss_function(labels, embeddings, margin, metric=metric)
        assert loss.dtype == tf.float32
        np.testing.assert_allclose(float(loss), reference_function(labels, embeddings, margin, metric), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", MARGINS)
def test_batch_all_fraction_matches_reference(rng, metric, margin):
    labels, embeddings = random_batch(rng)
    _, fraction = batch_all_triplet_loss(labels, embeddings, margin, metric=metric)
    np.testing.assert_allclose(float(fraction), reference.batch_all(labels, embeddings, margin, metric)[1], rtol=1e-6)


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", [0.2, "soft"])
def test_gradient_matches_finite_differences(rng, strategy, metric, margin):
    """float64 in, float64 out: TF's gradient against central differences of the reference."""
    labels, embeddings = random_batch(rng, size=8, dim=3, num_identities=3, dtype=np.float64)
    _, reference_function = LOSSES[strategy]
    loss, gradient = loss_and_gradient(strategy, labels, embeddings, margin, metric)
    assert loss.dtype == tf.float64
    expected = reference.numerical_gradient(lambda e: reference_function(labels, e, margin, metric), embeddings)
    assert np.abs(expected).max() > 0, "degenerate case: the reference gradient is zero"
    np.testing.assert_allclose(gradient.numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("margin", [0.2, "soft"])
def test_float32_gradient_agrees_with_float64(rng, strategy, margin):
    labels, embeddings = random_batch(rng, size=16, dim=8)
    _, gradient32 = loss_and_gradient(strategy, labels, embeddings, margin, "euclidean")
    _, gradient64 = loss_and_gradient(strategy, labels, embeddings.astype(np.float64), margin, "euclidean")
    np.testing.assert_allclose(gradient32.numpy(), gradient64.numpy(), rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("metric", METRICS)
def test_identical_embeddings_give_margin_and_finite_gradients(rng, strategy, metric):
    """All distances 0: every triplet costs exactly the margin, and sqrt(0) must not give NaN."""
    embeddings = np.tile(rng.normal(size=(1, 4)), (8, 1)).astype(np.float32)
    loss, gradient = loss_and_gradient(strategy, pk_labels(2, 4), embeddings, 0.3, metric)
    np.testing.assert_allclose(float(loss), 0.3, rtol=1e-6)
    assert np.all(np.isfinite(gradient.numpy()))


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", [0.2, "soft"])
def test_near_identical_embeddings_have_finite_gradients(rng, strategy, metric, margin):
    embeddings = np.tile(rng.normal(size=(1, 4)), (8, 1)) + rng.normal(size=(8, 4)) * 1e-7
    _, gradient = loss_and_gradient(strategy, pk_labels(2, 4), embeddings.astype(np.float32), margin, metric)
    assert np.all(np.isfinite(gradient.numpy()))


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("margin", [0.2, "soft"])
def test_one_identity_gives_zero_loss_and_zero_gradient(rng, strategy, margin):
    loss, gradient = loss_and_gradient(strategy, np.zeros(6, int), rng.normal(size=(6, 4)).astype(np.float32), margin, "euclidean")
    assert float(loss) == 0.0
    np.testing.assert_array_equal(gradient.numpy(), 0.0)


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("margin", [0.2, "soft"])
def test_all_labels_different_gives_zero_loss(rng, strategy, margin):
    loss, gradient = loss_and_gradient(strategy, np.arange(6), rng.normal(size=(6, 4)).astype(np.float32), margin, "euclidean")
    assert float(loss) == 0.0
    np.testing.assert_array_equal(gradient.numpy(), 0.0)


@pytest.mark.parametrize("strategy", list(LOSSES))
def test_anchors_without_positive_are_left_out(rng, strategy):
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 4])  # identities 2, 3 and 4 have one image each
    embeddings = rng.normal(size=(8, 4)).astype(np.float32)
    loss_function, reference_function = LOSSES[strategy]
    expected = reference_function(labels, embeddings, 0.2, "euclidean")
    np.testing.assert_allclose(float(loss_function(labels, embeddings, 0.2)), expected, rtol=1e-5)


def test_batch_hard_differs_from_classic_on_singletons():
    """Documented difference: the classic code gives an anchor without positive a hardest positive of 0.

    Identity 0 at (0,0) and (1,0), identity 1 alone at (0,3); margin 5.
    Anchor 0: hardest positive 1, hardest negative 3 -> 1 - 3 + 5 = 3.
    Anchor 1: hardest positive 1, hardest negative sqrt(10) -> 6 - sqrt(10).
    Anchor 2 has no positive. Ours leaves it out: (9 - sqrt(10)) / 2.
    The classic code counts it as 0 - 3 + 5 = 2: (11 - sqrt(10)) / 3.
    """
    embeddings = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], np.float32)
    ours = float(batch_hard_triplet_loss([0, 0, 1], embeddings, 5.0))
    np.testing.assert_allclose(ours, (9 - np.sqrt(10)) / 2, rtol=1e-6)
    assert abs(ours - (11 - np.sqrt(10)) / 3) > 0.1


def test_semi_hard_without_semi_hard_negative_takes_the_farthest_negative():
    """Negatives closer than the positive everywhere: FaceNet falls back to the farthest one.

    Points on a line: identity 0 at 0 and 10, identity 1 at 4 and 5. For anchor 0 with
    positive 10 (d_ap = 10) both negatives (4, 5) are closer, so the farthest (5) is used:
    max(10 - 5 + 1, 0) = 6. Same for anchor 10: negatives at 6 and 5, farthest 6: 10 - 6 + 1 = 5.
    Anchor 4, positive 5 (d_ap = 1): negatives 0 (4 away) and 10 (6 away); closest farther than 1
    is 4: max(1 - 4 + 1, 0) = 0. Anchor 5, positive 4: negatives 5 and 5 away -> 1 - 5 + 1 < 0 -> 0.
    Mean over the four pairs: (6 + 5 + 0 + 0) / 4 = 2.75.
    """
    embeddings = np.array([[0.0], [10.0], [4.0], [5.0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    loss = float(batch_semi_hard_triplet_loss(labels, embeddings, 1.0))
    np.testing.assert_allclose(loss, 2.75, rtol=1e-6)
    np.testing.assert_allclose(loss, reference.semi_hard(labels, embeddings, 1.0, "euclidean"), rtol=1e-6)


TIES_EMBEDDINGS = np.array([[0.0], [2.0], [-2.0], [5.0]], np.float32)  # A, P (identity 0); N1, N2 (identity 1)
TIES_LABELS = np.array([0, 0, 1, 1])


def test_semi_hard_negative_must_be_strictly_farther():
    """Ties: a negative exactly as far as the positive is not "farther".

    Points on a line, margin 1: A=0, P=2 (identity 0); N1=-2, N2=5 (identity 1).
    (A, P): d_ap = 2; negatives at 2 (a tie) and 5 -> the closest strictly farther is 5: 0.
    (P, A): d_ap = 2; negatives at 4 and 3 -> 3: max(2 - 3 + 1, 0) = 0.
    (N1, N2): d_ap = 7; negatives at 2 and 4, none farther -> farthest 4: 7 - 4 + 1 = 4.
    (N2, N1): d_ap = 7; negatives at 5 and 3, none farther -> farthest 5: 7 - 5 + 1 = 3.
    Mean (0 + 0 + 4 + 3) / 4 = 1.75 (taking the tie would give 2).
    """
    loss = float(batch_semi_hard_triplet_loss(TIES_LABELS, TIES_EMBEDDINGS, 1.0))
    assert loss == pytest.approx(1.75, rel=1e-6)
    assert loss == pytest.approx(reference.semi_hard(TIES_LABELS, TIES_EMBEDDINGS, 1.0, "euclidean"), rel=1e-6)


def test_batch_all_does_not_count_zero_loss_triplets():
    """Same points, margin 1. The 8 valid triplets' losses:
    A,P: N1 -> 2 - 2 + 1 = 1, N2 -> 2 - 5 + 1 < 0;  P,A: N1 -> 2 - 4 + 1 < 0, N2 -> 2 - 3 + 1 = 0 (a tie);
    N1,N2: A -> 7 - 2 + 1 = 6, P -> 7 - 4 + 1 = 4;  N2,N1: A -> 7 - 5 + 1 = 3, P -> 7 - 3 + 1 = 5.
    Five positive losses summing to 19: loss 19 / 5 = 3.8, fraction 5 / 8 (the tie counts as 0).
    """
    loss, fraction = batch_all_triplet_loss(TIES_LABELS, TIES_EMBEDDINGS, 1.0)
    assert float(loss) == pytest.approx(3.8, rel=1e-6)
    assert float(fraction) == pytest.approx(5 / 8, rel=1e-6)


@pytest.mark.parametrize("strategy", list(LOSSES))
def test_column_labels_and_string_labels_match_integer_labels(rng, strategy):
    labels, embeddings = random_batch(rng)
    loss_function, _ = LOSSES[strategy]
    expected = float(loss_function(labels, embeddings, 0.2))
    assert float(loss_function(labels.reshape(-1, 1), embeddings, 0.2)) == pytest.approx(expected, rel=1e-6)
    names = np.array([f"person-{label}".encode() for label in labels])
    assert float(loss_function(names, embeddings, 0.2)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_embeddings(rng, strategy, dtype):
    labels, embeddings = random_batch(rng)
    half = tf.cast(embeddings, dtype)
    loss, gradient = loss_and_gradient(strategy, labels, half, 0.2, "euclidean")
    assert loss.dtype == tf.float32 and gradient.dtype == dtype
    _, reference_function = LOSSES[strategy]
    rounded = tf.cast(half, tf.float32).numpy()
    np.testing.assert_allclose(float(loss), reference_function(labels, rounded, 0.2, "euclidean"), rtol=1e-5)
    assert np.all(np.isfinite(tf.cast(gradient, tf.float32).numpy()))


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("labels", [[0, 0], [0, 1], [3], []])
def test_tiny_batches(rng, strategy, labels):
    """B = 2 with one or two identities, B = 1 and B = 0: 0, never NaN."""
    embeddings = rng.normal(size=(len(labels), 4)).astype(np.float32)
    loss, gradient = loss_and_gradient(strategy, np.array(labels, np.int64), embeddings, 0.2, "euclidean")
    assert float(loss) == 0.0
    assert np.all(np.isfinite(gradient.numpy()))


def test_two_pairs_batch_all_by_hand():
    """Identity 0 at (0,0),(0,1); identity 1 at (3,0),(3,1); margin 5.

    Each of the 4 anchors has 1 positive (d=1) and 2 negatives (d=3 and sqrt(10)):
    8 triplets, all positive: losses 1-3+5 = 3 and 1-sqrt(10)+5 = 6-sqrt(10), four of each.
    Mean = (3 + 6 - sqrt(10)) / 2; fraction = 1.
    """
    embeddings = np.array([[0, 0], [0, 1], [3, 0], [3, 1]], np.float32)
    loss, fraction = batch_all_triplet_loss([0, 0, 1, 1], embeddings, 5.0)
    np.testing.assert_allclose(float(loss), (9 - np.sqrt(10)) / 2, rtol=1e-6)
    assert float(fraction) == 1.0


# ---------------------------------------------------------------------- explicit triplets


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", MARGINS)
def test_triplet_loss_on_explicit_triplets(rng, metric, margin):
    anchor, positive, negative = (rng.normal(size=(9, 4)).astype(np.float32) for _ in range(3))
    loss = triplet_loss(anchor, positive, negative, margin, metric=metric)
    np.testing.assert_allclose(float(loss), reference.explicit_triplets(anchor, positive, negative, margin, metric), rtol=1e-5, atol=1e-7)


def test_triplet_loss_gradient_and_empty_input(rng):
    anchor = rng.normal(size=(4, 3))
    positive, negative = anchor.copy(), rng.normal(size=(4, 3))  # d_ap = 0: the sqrt NaN case
    anchor_tensor = tf.convert_to_tensor(anchor)
    with tf.GradientTape() as tape:
        tape.watch(anchor_tensor)
        loss = triplet_loss(anchor_tensor, positive, negative, 0.2, squared=False)
    assert np.all(np.isfinite(tape.gradient(loss, anchor_tensor).numpy()))
    assert float(triplet_loss(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)), 0.2)) == 0.0


# ------------------------------------------------------------------ graph mode, dispatch


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("margin", [0.2, "soft"])
def test_graph_mode_with_unknown_batch_size(rng, strategy, margin):
    loss_function, _ = LOSSES[strategy]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, None], tf.float32)])
    def graph_loss(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = loss_function(labels, embeddings, margin)
        return loss, tape.gradient(loss, embeddings)

    for size in (8, 13):
        labels, embeddings = random_batch(rng, size=size)
        loss, gradient = graph_loss(labels.astype(np.int64), embeddings)
        eager_loss, eager_gradient = loss_and_gradient(strategy, labels, embeddings, margin, "euclidean")
        np.testing.assert_allclose(float(loss), float(eager_loss), rtol=1e-6)
        np.testing.assert_allclose(gradient.numpy(), eager_gradient.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("margin", [0.2, "soft"])
def test_no_strategy_builds_a_cubic_tensor(strategy, margin):
    """Trace forward and backward at B = 40 and look at every tensor shape in the graph."""
    size = 40
    loss_function, _ = LOSSES[strategy]

    @tf.function(input_signature=[tf.TensorSpec([size], tf.int64), tf.TensorSpec([size, 8], tf.float32)])
    def graph_loss(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = loss_function(labels, embeddings, margin)
        return tape.gradient(loss, embeddings)

    graph = graph_loss.get_concrete_function().graph
    largest = max(
        (output.shape.num_elements() or 0)
        for operation in graph.get_operations()
        for output in operation.outputs
        if output.shape.is_fully_defined()
    )
    assert largest < size**3 / 4, f"a tensor of {largest} elements for B = {size}"
    assert largest >= size * size  # the check does see the (B, B) distance matrix


def test_online_triplet_loss_dispatch(rng):
    labels, embeddings = random_batch(rng)
    assert float(online_triplet_loss(labels, embeddings, "batch_all", 0.2)) == pytest.approx(float(batch_all_triplet_loss(labels, embeddings, 0.2)[0]))
    assert float(online_triplet_loss(labels, embeddings, "semi-hard", 0.2, "cosine")) == pytest.approx(
        float(batch_semi_hard_triplet_loss(labels, embeddings, 0.2, metric="cosine"))
    )
    assert resolve_strategy("batch_semi_hard") == "semi_hard"
    with pytest.raises(ValueError, match="Unknown strategy"):
        resolve_strategy("hardest")
    with pytest.raises(ValueError, match="margin"):
        batch_hard_triplet_loss(labels, embeddings, "hard")
    with pytest.raises(ValueError, match="margin"):
        batch_hard_triplet_loss(labels, embeddings, -0.1)


# ---------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("margin", [0.2, "soft"])
def test_batch_statistics_match_reference(rng, margin):
    labels, embeddings = random_batch(rng)
    statistics = triplet_batch_statistics(labels, embeddings, margin=margin)
    _, expected_fraction = reference.batch_all(labels, embeddings, margin, "euclidean")
    per_anchor = [pair for pair in reference.hardest(labels, embeddings, "euclidean") if pair]
    np.testing.assert_allclose(float(statistics["fraction_positive_triplets"]), expected_fraction, rtol=1e-6)
    np.testing.assert_allclose(float(statistics["hardest_positive_dist"]), np.mean([p for p, _ in per_anchor]), rtol=1e-5)
    np.testing.assert_allclose(float(statistics["hardest_negative_dist"]), np.mean([n for _, n in per_anchor]), rtol=1e-5)
    np.testing.assert_allclose(float(statistics["mean_embedding_norm"]), np.linalg.norm(embeddings, axis=1).mean(), rtol=1e-5)


# ----------------------------------------------------------------------- property test

label_patterns = st.lists(st.integers(0, 3), min_size=0, max_size=10)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=label_patterns, data=st.data())
def test_no_strategy_returns_nan_or_inf(labels, data):
    """Any label pattern, embeddings with repeats, zeros and large values: finite loss and gradient."""
    size = len(labels)
    rows = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=3, max_size=3)
    embeddings = np.array(data.draw(st.lists(rows, min_size=size, max_size=size)), np.float32).reshape(size, 3)
    if size > 1 and data.draw(st.booleans()):
        embeddings[1] = embeddings[0]  # an exactly repeated embedding
    metric = data.draw(st.sampled_from(METRICS))
    margin = data.draw(st.sampled_from(MARGINS))
    for strategy in LOSSES:
        loss, gradient = loss_and_gradient(strategy, np.array(labels, np.int64), embeddings, margin, metric)
        assert np.isfinite(float(loss)), (strategy, metric, margin)
        assert np.all(np.isfinite(gradient.numpy())), (strategy, metric, margin)
    _, fraction = batch_all_triplet_loss(np.array(labels, np.int64), embeddings, margin, metric=metric)
    assert 0.0 <= float(fraction) <= 1.0


def batch_all_by_anchor(labels, embeddings, margin):
    """Batch-all (loss, fraction) in float64 one anchor at a time: its positives' and negatives' euclidean
    distances from the coordinates, every (positive, negative) difference of the anchor, summed."""
    embeddings = np.asarray(embeddings, np.float64)
    total, counted, valid = 0.0, 0, 0
    for anchor in range(len(labels)):
        distances = np.sqrt(np.sum((embeddings - embeddings[anchor]) ** 2, axis=1))
        same = labels == labels[anchor]
        same[anchor] = False
        difference = distances[same][:, None] - distances[labels != labels[anchor]][None, :]  # (positives, negatives)
        valid += difference.size
        if margin == "soft":
            total += np.logaddexp(0.0, difference).sum()
            counted += int(np.sum(difference > 0))
        else:
            hinge = np.maximum(difference + margin, 0.0)
            total += hinge.sum()
            counted += int(np.sum(hinge > 0))
    return total / (valid if margin == "soft" else counted), counted / valid


@pytest.mark.parametrize("margin", [0.2, "soft"])
def test_float32_sums_stay_accurate_on_a_large_batch(rng, margin, monkeypatch):
    """B = 512 P x K batch: float32 prefix sums and chunked loops against a float64 reference that sums
    every triplet of each anchor (the module's triple loop takes too long at this size).

    The soft margin's 512 x 3 = 1,536 positive pairs would fit one chunk of the default
    budget (2^22 // 512 = 8,192 pairs); a budget of 100 pairs makes it 16 chunks, the last
    one partly filled.
    """
    from facetrip.losses import triplet

    monkeypatch.setattr(triplet, "_SOFT_BATCH_ALL_CHUNK_ELEMENTS", 100 * 512)
    labels = pk_labels(128, 4)
    embeddings = rng.normal(size=(512, 32))
    embeddings = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)
    loss32, fraction32 = batch_all_triplet_loss(labels, embeddings, margin)
    expected_loss, expected_fraction = batch_all_by_anchor(labels, embeddings, margin)
    assert 0.0 < expected_fraction < 1.0
    np.testing.assert_allclose(float(loss32), expected_loss, rtol=1e-5)
    np.testing.assert_allclose(float(fraction32), expected_fraction, rtol=1e-5)
