"""The Keras 3 wrappers: TripletLoss and the statistics metrics, in compile/fit and saved models."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import pk_labels
from facetrip.losses import STATISTICS, TripletLoss, TripletStatistic, batch_all_triplet_loss, online_triplet_loss, triplet_metrics


def tiny_model(input_dim=6, embedding_dim=4):
    inputs = keras.Input((input_dim,))
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(embedding_dim)(inputs))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("strategy", ["batch_all", "batch_hard", "semi_hard"])
@pytest.mark.parametrize("margin", [0.3, "soft"])
def test_triplet_loss_class_matches_function(rng, strategy, margin):
    labels, embeddings = pk_labels(3, 4), rng.normal(size=(12, 5)).astype(np.float32)
    loss = TripletLoss(strategy=strategy, margin=margin, metric="cosine")
    expected = online_triplet_loss(labels, embeddings, strategy, margin, "cosine")
    assert float(loss(labels, embeddings)) == pytest.approx(float(expected), rel=1e-6)


def test_triplet_loss_config_round_trip():
    loss = TripletLoss(strategy="semi-hard", margin="soft", metric="squared", name="facenet")
    clone = TripletLoss.from_config(loss.get_config())
    assert (clone.strategy, clone.margin, clone.metric, clone.name) == ("semi_hard", "soft", "squared", "facenet")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, TripletLoss) and restored.get_config() == loss.get_config()


def test_triplet_loss_keeps_labels_above_two_to_the_24_apart():
    """Keras casts y_true to float32 by default; 2^24 and 2^24 + 1 would then be one identity."""
    labels = np.array([2**24, 2**24, 2**24 + 1, 2**24 + 1], np.int64)
    embeddings = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], np.float32)
    loss = float(TripletLoss("batch_all", margin=2.0)(labels, embeddings))
    assert loss == pytest.approx(float(batch_all_triplet_loss(labels, embeddings, 2.0)[0]), rel=1e-6)
    collided = float(batch_all_triplet_loss(labels.astype(np.float32), embeddings, 2.0)[0])
    assert collided == 0.0 and loss > 0.0  # one float32 identity has no negative at all


def test_triplet_loss_rejects_sample_weights(rng):
    with pytest.raises(ValueError, match="sample weights"):
        TripletLoss()(pk_labels(2, 2), rng.normal(size=(4, 3)), sample_weight=np.ones(4))


def test_fit_with_loss_and_metrics_and_save(rng, tmp_path):
    """compile + fit with int64 labels beyond 2^24, the four statistics in the logs, save and load."""
    features = rng.normal(size=(32, 6)).astype(np.float32)
    labels = (2**24 + pk_labels(8, 4)).astype(np.int64)
    model = tiny_model()
    model.compile(optimizer="adam", loss=TripletLoss("batch_hard", margin=0.2), metrics=triplet_metrics(margin=0.2))
    history = model.fit(features, labels, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for name in ("loss", *STATISTICS):
        assert name in history.history and np.all(np.isfinite(history.history[name])), name
    assert np.allclose(history.history["mean_embedding_norm"], 1.0, atol=1e-5)

    path = os.fspath(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.loss, TripletLoss) and restored.loss.strategy == "batch_hard"
    np.testing.assert_allclose(restored.predict(features, verbose=0), model.predict(features, verbose=0), rtol=1e-6)


def test_statistic_metric_accumulates_a_mean(rng):
    metric = TripletStatistic("mean_embedding_norm")
    metric.update_state(pk_labels(2, 2), np.full((4, 3), 1.0, np.float32))  # norm sqrt(3)
    metric.update_state(pk_labels(2, 2), np.full((4, 3), 2.0, np.float32))  # norm 2 sqrt(3)
    assert float(metric.result()) == pytest.approx(1.5 * np.sqrt(3), rel=1e-6)
    assert TripletStatistic.from_config(metric.get_config()).statistic == "mean_embedding_norm"
    with pytest.raises(ValueError, match="Unknown statistic"):
        TripletStatistic("accuracy")


def test_bfloat16_model_output_is_accepted(rng):
    """bfloat16 embeddings are computed in float32: the loss is that of their float32 values, exactly."""
    embeddings = tf.cast(rng.normal(size=(8, 4)), tf.bfloat16)
    loss = TripletLoss("batch_all", margin=0.2)(pk_labels(2, 4), embeddings)
    expected = batch_all_triplet_loss(pk_labels(2, 4), tf.cast(embeddings, tf.float32).numpy(), 0.2)[0]
    assert loss.dtype == tf.float32 and float(expected) > 0
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_offline_strategy_takes_stacked_explicit_triplets(rng):
    anchors, positives, negatives = (rng.normal(size=(5, 4)).astype(np.float32) for _ in range(3))
    from facetrip.losses import triplet_loss

    stacked = np.concatenate([anchors, positives, negatives])
    loss = TripletLoss(strategy="offline", margin=0.3)(np.zeros(15, np.int64), stacked)
    assert float(loss) == pytest.approx(float(triplet_loss(anchors, positives, negatives, 0.3)), rel=1e-6)
    assert TripletLoss.from_config(TripletLoss("offline").get_config()).strategy == "offline"
