import numpy as np
import pytest
import tensorflow as tf

import reference
from conftest import METRICS
from facetrip.losses import paired_distances, pairwise_distances, resolve_metric


def gradient_of(function, embeddings):
    embeddings = tf.convert_to_tensor(embeddings)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        value = function(embeddings)
    return value, tape.gradient(value, embeddings)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distances(rng, metric):
    embeddings = rng.normal(size=(12, 6)).astype(np.float32)
    expected = reference.pairwise(embeddings, metric)
    np.testing.assert_allclose(pairwise_distances(embeddings, metric=metric).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("squared", [True, False])
def test_pairwise_distances_classic_squared_flag(rng, squared):
    embeddings = rng.normal(size=(8, 5)).astype(np.float32)
    expected = reference.pairwise(embeddings, "squared" if squared else "euclidean")
    np.testing.assert_allclose(pairwise_distances(embeddings, squared=squared).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distances_are_positive(rng, metric):
    """Large, nearly identical embeddings make |a|^2 - 2ab + |b|^2 round below zero."""
    base = rng.normal(size=(1, 16)).astype(np.float32) * 100.0
    embeddings = base + rng.normal(size=(10, 16)).astype(np.float32) * 1e-6
    distances = pairwise_distances(embeddings, metric=metric).numpy()
    assert np.all(distances >= 0.0)
    assert np.all(np.diag(distances) == 0.0)
    assert np.all(np.isfinite(distances))


@pytest.mark.parametrize("metric", METRICS)
def test_gradients_pairwise_distances(rng, metric):
    """Identical embeddings (sqrt at 0, the classic NaN) and near-identical ones."""
    identical = np.tile(rng.normal(size=(1, 4)), (6, 1)).astype(np.float32)
    near_identical = identical + rng.normal(size=identical.shape).astype(np.float32) * 1e-7
    for embeddings in (identical, near_identical, np.zeros((3, 4), np.float32)):
        _, gradient = gradient_of(lambda e: tf.reduce_sum(pairwise_distances(e, metric=metric)), embeddings)
        assert np.all(np.isfinite(gradient.numpy())), metric


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distance_gradients_match_finite_differences(rng, metric):
    embeddings = rng.normal(size=(5, 3))
    weights = rng.uniform(size=(5, 5))  # a weighted sum exercises every entry differently
    _, gradient = gradient_of(lambda e: tf.reduce_sum(pairwise_distances(e, metric=metric) * weights), embeddings)
    expected = reference.numerical_gradient(lambda e: float(np.sum(reference.pairwise(e, metric) * weights)), embeddings)
    np.testing.assert_allclose(gradient.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_is_computed_in_float32(rng, dtype):
    embeddings = tf.cast(rng.normal(size=(6, 8)), dtype)
    distances = pairwise_distances(embeddings)
    assert distances.dtype == tf.float32
    rounded = tf.cast(embeddings, tf.float32).numpy()
    np.testing.assert_allclose(distances.numpy(), reference.pairwise(rounded, "euclidean"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_paired_distances(rng, metric):
    x, y = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(7, 4)).astype(np.float32)
    expected = [reference.distance(a, b, metric) for a, b in zip(x, y)]
    np.testing.assert_allclose(paired_distances(x, y, metric=metric).numpy(), expected, rtol=1e-5, atol=1e-6)
    _, gradient = gradient_of(lambda e: tf.reduce_sum(paired_distances(e, e, metric=metric)), x)
    assert np.all(np.isfinite(gradient.numpy()))


def test_resolve_metric():
    assert resolve_metric() == "euclidean"
    assert resolve_metric(squared=True) == "squared"
    assert resolve_metric("Cosine") == "cosine"
    with pytest.raises(ValueError, match="Unknown metric"):
        resolve_metric("manhattan")
    with pytest.raises(ValueError, match="contradicts"):
        resolve_metric("cosine", squared=True)
