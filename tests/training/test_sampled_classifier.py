"""The sampled classifier (Partial FC): its draws, its lazy AdamW / LAMB rows against Keras, and its trainer."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from facetrip.losses import TripletLoss
from facetrip.models import build_embedding_model
from facetrip.training.embedding_trainer import EmbeddingTrainer
from facetrip.training.sampled_classifier import (
    SampledCosineClassifier,
    cosine_softmax_losses,
    lazy_adam_rows,
    sample_class_columns,
)


def test_a_draw_holds_every_class_of_the_batch_once_and_points_each_image_at_its_class():
    classes = np.array([17, 3, 3, 40, 17, 0])
    for step in range(20):
        columns, targets = (value.numpy() for value in sample_class_columns(classes, 50, 9, seed=[0, step]))
        assert len(columns) == 9 and len(set(columns)) == 9 and columns.min() >= 0 and columns.max() < 50
        assert set(classes) <= set(columns)
        np.testing.assert_array_equal(columns[targets], classes)


def test_draws_repeat_for_a_seed_and_step_differ_between_steps_and_cover_the_others_uniformly():
    classes = np.array([5, 5, 6, 6])
    first = sample_class_columns(classes, 200, 20, seed=[3, 7])[0].numpy()
    np.testing.assert_array_equal(np.sort(first), np.sort(sample_class_columns(classes, 200, 20, seed=[3, 7])[0].numpy()))
    assert set(first) != set(sample_class_columns(classes, 200, 20, seed=[3, 8])[0].numpy())
    counts = np.zeros(200)
    draws = 2000
    for step in range(draws):
        counts[sample_class_columns(classes, 200, 20, seed=[1, step])[0].numpy()] += 1
    others = np.delete(counts, [5, 6]) / draws
    assert counts[5] == counts[6] == draws
    expected = 18 / 198  # the 18 free places over the 198 other classes
    # a binomial share over 2000 draws has a standard deviation of 0.0064: 5 of them either way
    assert np.abs(others - expected).max() < 0.032, np.abs(others - expected).max()


def test_cosine_softmax_losses_match_an_explicit_loop():
    rng = np.random.default_rng(0)
    embeddings, centres = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    targets = np.array([0, 6, 2, 2, 5])
    scale, smoothing = 8.0, 0.1
    expected = []
    for embedding, target in zip(embeddings, targets):
        logits = np.array([scale * embedding @ centre / np.linalg.norm(embedding) / np.linalg.norm(centre)
                           for centre in centres])
        log_softmax = logits - np.log(np.exp(logits).sum())
        wanted = np.full(len(centres), smoothing / len(centres))
        wanted[target] += 1 - smoothing
        expected.append(-(wanted * log_softmax).sum())
    losses = cosine_softmax_losses(tf.constant(embeddings, tf.float32), tf.constant(centres, tf.float32),
                                   tf.constant(targets), scale, smoothing)
    np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_lazy_rows_take_the_step_keras_takes_on_a_variable_of_those_rows(name):
    """Five steps with weight decay and a changing learning rate, against Keras' own optimizer."""
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(6, 4)).astype(np.float32)
    schedule = keras.optimizers.schedules.PolynomialDecay(0.05, decay_steps=5, end_learning_rate=0.01)
    optimizer = (keras.optimizers.Lamb if name == "lamb" else keras.optimizers.AdamW)(schedule, weight_decay=0.3)
    variable = keras.Variable(rows)
    optimizer.build([variable])
    first, second = np.zeros_like(rows), np.zeros_like(rows)
    for step in range(5):
        gradient = rng.normal(size=rows.shape).astype(np.float32)
        rows, first, second = (value.numpy() for value in lazy_adam_rows(
            rows, gradient, first, second, step=optimizer.iterations + 1, learning_rate=optimizer.learning_rate,
            beta_1=optimizer.beta_1, beta_2=optimizer.beta_2, epsilon=optimizer.epsilon,
            weight_decay=optimizer.weight_decay, trust_ratio=name == "lamb"))
        optimizer.apply([tf.constant(gradient)], [variable])
        np.testing.assert_allclose(rows, variable.numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(rows, rng.normal(size=rows.shape))


def test_a_step_changes_the_drawn_centres_and_their_moments_and_nothing_else():
    classifier = SampledCosineClassifier(30, 4, 8, scale=8.0, label_smoothing=0.1, seed=0)
    optimizer = keras.optimizers.Lamb(0.01, weight_decay=1e-3)
    optimizer.build([keras.Variable(np.zeros(1, np.float32))])
    before = [table.numpy().copy() for table in (classifier.centres, classifier.first_moments, classifier.second_moments)]
    columns, targets = classifier.draw(tf.constant([4, 4, 21, 21]), optimizer.iterations)
    embeddings = tf.constant(np.random.default_rng(2).normal(size=(4, 4)), tf.float32)
    with tf.GradientTape() as tape:
        block = classifier.block(columns)
        tape.watch(block)
        loss = tf.reduce_mean(classifier.losses(embeddings, block, targets))
    gradient = tape.gradient(loss, block)
    expected = lazy_adam_rows(block, gradient, tf.zeros_like(block), tf.zeros_like(block), 1, 0.01,
                              optimizer.beta_1, optimizer.beta_2, optimizer.epsilon, 1e-3, trust_ratio=True)
    classifier.apply_gradient(columns, block, gradient, optimizer)
    drawn = np.zeros(30, bool)
    drawn[columns.numpy()] = True
    for table, old, new in zip((classifier.centres, classifier.first_moments, classifier.second_moments), before, expected):
        np.testing.assert_array_equal(table.numpy()[~drawn], old[~drawn])
        np.testing.assert_allclose(table.numpy()[columns.numpy()], new.numpy(), rtol=1e-6)
        assert not np.allclose(table.numpy()[drawn], old[drawn])


def tiny_trainer(labels, classifier_sample, optimizer="lamb"):
    keras.utils.set_random_seed(0)
    embedder = build_embedding_model((12, 10, 1), embedding_dim=4, width=4)
    trainer = EmbeddingTrainer(embedder, labels, TripletLoss("batch_hard", 0.2), warmup_epochs=1,
                               classification_weight=0.5, scale=8.0, label_smoothing=0.1,
                               classifier_sample=classifier_sample, seed=0)
    trainer.compile(optimizer=(keras.optimizers.Lamb if optimizer == "lamb" else keras.optimizers.AdamW)(
        0.01, weight_decay=1e-3))
    return trainer


def test_the_classifier_is_sampled_only_above_the_sample_size():
    labels = np.arange(0, 40, 2)  # 20 identities
    assert tiny_trainer(labels, 0).sampled_classifier is None
    assert tiny_trainer(labels, 20).sampled_classifier is None
    sampled = tiny_trainer(labels, 19)
    assert sampled.class_centres is None and sampled.sampled_classifier.sample_size == 19
    assert "class_centres" not in [variable.name for variable in sampled.trainable_variables]
    sampled.optimizer.build(sampled.trainable_variables)
    # no optimizer slots of (identities, D) for the centres
    assert all(variable.shape != (20, 4) and variable.shape != (4, 20) for variable in sampled.optimizer.variables)


def copy_full_centres(sampled, full):
    """The full trainer's centres (D, N) into the sampled one's rows (N, D)."""
    sampled.sampled_classifier.centres.assign(full.class_centres.numpy().T)


def test_drawing_every_centre_trains_exactly_like_the_full_classifier(optimizer="lamb"):
    """With S = N the sampled path is the full classifier's loss, gradient and LAMB step, over 3 steps.

    (AdamW's rows are checked against Keras above.)
    """
    labels = np.array([3, 7, 9, 11, 12])
    full, sampled = tiny_trainer(labels, 0, optimizer), tiny_trainer(labels, 4, optimizer)
    sampled.sampled_classifier.sample_size = 5  # every centre, drawn in shuffled order
    sampled.embedder.set_weights(full.embedder.get_weights())
    copy_full_centres(sampled, full)
    images = np.random.default_rng(3).random((3, 6, 12, 10, 1)).astype(np.float32)
    batch_labels = np.array([3, 3, 7, 7, 12, 12])
    for trainer in (full, sampled):
        trainer.set_epoch(1)  # both terms on
    for batch in images:
        full_logs = full.train_on_batch(batch, batch_labels, return_dict=True)
        sampled_logs = sampled.train_on_batch(batch, batch_labels, return_dict=True)
        np.testing.assert_allclose(sampled_logs["classification_loss"], full_logs["classification_loss"], rtol=1e-5)
        np.testing.assert_allclose(sampled.sampled_classifier.centres.numpy(), full.class_centres.numpy().T,
                                   rtol=1e-4, atol=1e-6)
        for ours, theirs in zip(sampled.embedder.get_weights(), full.embedder.get_weights()):
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)  # a step moves them by about 1e-2


def test_a_sampled_trainer_trains_the_drawn_centres_only_and_starts_them_at_mean_directions():
    labels = np.arange(30)
    trainer = tiny_trainer(labels, 8)
    rng = np.random.default_rng(4)
    embeddings = rng.normal(size=(6, 4)).astype(np.float32)
    trainer.initialise_centres(embeddings, [2, 2, 5, 5, 5, 29])
    centres = trainer.sampled_classifier.centres.numpy()
    for label in (2, 5, 29):
        total = embeddings[np.array([2, 2, 5, 5, 5, 29]) == label].sum(axis=0)
        np.testing.assert_allclose(centres[label], total / np.linalg.norm(total), rtol=1e-5)
    trainer.set_epoch(0)
    before = centres.copy()
    trainer.train_on_batch(rng.random((6, 12, 10, 1)).astype(np.float32), np.array([2, 2, 5, 5, 29, 29]))
    changed = np.flatnonzero(np.any(trainer.sampled_classifier.centres.numpy() != before, axis=1))
    assert {2, 5, 29} <= set(changed) and len(changed) == 8


def test_a_sampled_trainer_checkpoint_restores_its_centres_and_moments(tmp_path):
    from facetrip.training.checkpoints import Checkpoint, holds_classifier, restore_checkpoint

    labels = np.arange(30)
    trainer = tiny_trainer(labels, 8)
    trainer.set_epoch(0)
    trainer.train_on_batch(np.random.default_rng(5).random((6, 12, 10, 1)).astype(np.float32),
                           np.array([2, 2, 5, 5, 29, 29]))
    path = tmp_path / "sampled.weights.h5"
    trainer.save_weights(path)
    assert not holds_classifier(path)  # the trainer's own variables: the loss weights only
    resumed = tiny_trainer(labels, 8)
    restore_checkpoint(resumed, Checkpoint(epoch=1, weights=path))
    for name in ("centres", "first_moments", "second_moments"):
        np.testing.assert_array_equal(getattr(resumed.sampled_classifier, name).numpy(),
                                      getattr(trainer.sampled_classifier, name).numpy())
    assert int(resumed.optimizer.iterations) == 1


def test_a_sample_smaller_than_a_batch_s_identities_is_one_line_before_any_data(tmp_path):
    from conftest import run_cli
    from helpers import one_line_error

    config = tmp_path / "small_sample.toml"
    config.write_text("[sampler]\nidentities_per_batch = 8\n[train]\nclassifier_sample = 5\n")
    result = run_cli("train", "--config", config, "--run-dir", tmp_path / "run", "--data-dir", tmp_path / "never_prepared")
    one_line_error(result, "train.classifier_sample must be 0 or at least the identities of a batch (8), not 5.")
    assert not (tmp_path / "never_prepared").exists()
