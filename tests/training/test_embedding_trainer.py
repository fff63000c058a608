"""The training model (classification warm-up + triplet loss), test-time augmentation, and the training augmentation."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from facetrip.data.pipeline import Augmentation, _augment, _erase, _geometric_transforms
from facetrip.losses import TripletLoss
from facetrip.models import build_embedding_model
from facetrip.models.tta import Shift, tta_offsets, with_flip_averaging, with_test_time_augmentation
from facetrip.training.embedding_trainer import EmbeddingTrainer


def tiny_trainer(warmup_epochs=2, classification_weight=0.25, labels=(3, 7, 9)):
    keras.utils.set_random_seed(0)
    embedder = build_embedding_model((12, 10, 1), embedding_dim=4, width=4)
    trainer = EmbeddingTrainer(embedder, labels, TripletLoss("batch_hard", 0.2), warmup_epochs=warmup_epochs,
                               classification_weight=classification_weight, scale=8.0, label_smoothing=0.1)
    trainer.compile(optimizer=keras.optimizers.SGD(0.01))
    return trainer


def reference_classification_loss(embeddings, centres, classes, scale, smoothing):
    """Explicit loops: -sum_j t_ij log softmax(s cos(e_i, c_j))_j, averaged over i."""
    total = 0.0
    for embedding, target_class in zip(embeddings, classes):
        logits = [scale * np.dot(embedding, centre) / np.linalg.norm(embedding) / np.linalg.norm(centre) for centre in centres.T]
        log_normaliser = np.log(np.sum(np.exp(logits)))
        for j, logit in enumerate(logits):
            target = (1 - smoothing) * (j == target_class) + smoothing / len(logits)
            total -= target * (logit - log_normaliser)
    return total / len(embeddings)


def test_phases_weight_classification_then_triplet():
    trainer = tiny_trainer(warmup_epochs=2, classification_weight=0.25)
    assert [trainer.phase_weights(epoch) for epoch in range(4)] == [(1.0, 0.0), (1.0, 0.0), (0.25, 1.0), (0.25, 1.0)]
    trainer.set_epoch(3)
    np.testing.assert_allclose(trainer.loss_weights_now.numpy(), [0.25, 1.0])


def test_classification_loss_matches_an_explicit_loop():
    trainer = tiny_trainer(labels=(3, 7, 9))
    embeddings = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    labels = np.array([7, 3, 9, 9, 7])
    expected = reference_classification_loss(embeddings, trainer.class_centres.numpy(), [1, 0, 2, 2, 1], 8.0, 0.1)
    np.testing.assert_allclose(float(trainer.classification_loss(labels, embeddings)), expected, rtol=1e-5)
    # labels shaped (B, 1) give the same loss
    np.testing.assert_allclose(float(trainer.classification_loss(labels[:, None], embeddings)), expected, rtol=1e-5)


def test_centres_start_at_the_mean_direction_of_each_sampled_identity_and_others_keep_theirs():
    """Loop reference: c_j = sum_i e_i / |sum_i e_i| over j's embeddings; a class without any (or summing to 0) keeps its centre."""
    trainer = tiny_trainer(labels=(3, 7, 9, 11, 12))
    before = trainer.class_centres.numpy().copy()  # (D, 5)
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(7, 4)).astype(np.float32)
    embeddings[6] = -embeddings[5]  # label 12: its two embeddings sum to zero
    labels = np.array([9, 3, 9, 9, 3, 12, 12])
    trainer.initialise_centres(embeddings, labels)
    after = trainer.class_centres.numpy()
    for column, label in enumerate((3, 7, 9, 11, 12)):
        chosen = embeddings[labels == label].astype(np.float64)
        total = chosen.sum(axis=0)
        if len(chosen) and np.linalg.norm(total) > 1e-6:
            np.testing.assert_allclose(after[:, column], total / np.linalg.norm(total), rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(after[:, column], before[:, column])


def test_without_a_classification_term_there_is_no_classifier():
    """No warm-up and weight 0: no centres (so no optimizer slots for them); the loss is the triplet loss alone."""
    trainer = tiny_trainer(warmup_epochs=0, classification_weight=0.0)
    with_classifier = tiny_trainer(warmup_epochs=0, classification_weight=0.5)
    assert not trainer.has_classifier and with_classifier.has_classifier
    assert "class_centres" not in [weight.name for weight in trainer.weights]
    assert "class_centres" in [weight.name for weight in with_classifier.weights]
    trainer.initialise_centres(np.ones((2, 4), np.float32), [3, 7])  # nothing to start
    trainer.set_epoch(0)
    images = np.random.default_rng(1).random((6, 12, 10, 1)).astype(np.float32)
    labels = np.array([3, 3, 7, 7, 9, 9])
    logs = trainer.train_on_batch(images, labels, return_dict=True)
    assert logs["classification_loss"] == 0.0
    np.testing.assert_allclose(logs["loss"], logs["triplet_loss"], rtol=1e-6)


def test_a_checkpoint_with_a_classifier_is_resumed_with_one_even_when_its_term_is_off(tmp_path):
    """Checkpoints written before the trainer left its classifier out hold one: they are told apart and resumed."""
    from facetrip.training.checkpoints import Checkpoint, holds_classifier, restore_checkpoint
    from facetrip.training.errors import TrainingError

    def saved(trainer, name):
        trainer.optimizer.build(trainer.trainable_variables)
        path = tmp_path / f"{name}.weights.h5"
        trainer.save_weights(path)
        return path

    older = tiny_trainer(warmup_epochs=0, classification_weight=0.0)
    older = EmbeddingTrainer(older.embedder, (3, 7, 9), TripletLoss("batch_hard", 0.2), with_classifier=True)
    older.compile(optimizer=keras.optimizers.Adam(0.01))
    older_path = saved(older, "older")
    newer_path = saved(tiny_trainer(warmup_epochs=0, classification_weight=0.0), "newer")
    assert holds_classifier(older_path) and not holds_classifier(newer_path)
    assert not holds_classifier(tmp_path / "missing.weights.h5")

    def resumed(with_classifier):
        trainer = EmbeddingTrainer(build_embedding_model((12, 10, 1), embedding_dim=4, width=4), (3, 7, 9),
                                   TripletLoss("batch_hard", 0.2), with_classifier=with_classifier)
        trainer.compile(optimizer=keras.optimizers.Adam(0.01))
        restore_checkpoint(trainer, Checkpoint(epoch=1, weights=older_path))
        return trainer

    np.testing.assert_array_equal(resumed(True).class_centres.numpy(), older.class_centres.numpy())
    with pytest.raises(TrainingError, match="Cannot load"):
        resumed(None)


@pytest.mark.parametrize("epoch, weights", [(0, (1.0, 0.0)), (1, (0.3, 1.0))])
def test_train_step_loss_is_the_weighted_sum(epoch, weights):
    """loss = w_cls * classification + w_triplet * triplet, with w_cls = 0.3 after a one-epoch warm-up;
    both terms as the explicit loops compute them from the embeddings and centres before the step."""
    import reference

    trainer = tiny_trainer(warmup_epochs=1, classification_weight=0.3)
    trainer.set_epoch(epoch)
    assert trainer.phase_weights(epoch) == weights
    images = np.random.default_rng(1).random((6, 12, 10, 1)).astype(np.float32)
    labels = np.array([3, 3, 7, 7, 9, 9])
    embeddings = trainer.embedder(images, training=True).numpy()  # batch statistics: what the step sees
    classification = reference_classification_loss(embeddings, trainer.class_centres.numpy(), [0, 0, 1, 1, 2, 2], 8.0, 0.1)
    triplet = reference.batch_hard(labels, embeddings, 0.2, "euclidean")
    assert classification > 0.1 and triplet > 0.1
    logs = trainer.train_on_batch(images, labels, return_dict=True)
    np.testing.assert_allclose(logs["classification_loss"], classification, rtol=1e-5)
    np.testing.assert_allclose(logs["triplet_loss"], triplet, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], weights[0] * classification + weights[1] * triplet, rtol=1e-5)


def test_warmup_moves_the_class_centres_and_the_embedder():
    trainer = tiny_trainer(warmup_epochs=1)
    trainer.set_epoch(0)
    centres, kernel = trainer.class_centres.numpy().copy(), trainer.embedder.get_layer("projection").kernel.numpy().copy()
    images = np.random.default_rng(2).random((6, 12, 10, 1)).astype(np.float32)
    trainer.train_on_batch(images, np.array([3, 3, 7, 7, 9, 9]))
    assert not np.allclose(trainer.class_centres.numpy(), centres)
    assert not np.allclose(trainer.embedder.get_layer("projection").kernel.numpy(), kernel)


def test_flip_averaging_is_the_renormalised_sum_and_survives_saving(tmp_path):
    embedder = build_embedding_model((12, 10, 1), embedding_dim=4, width=4)
    averaged = with_flip_averaging(embedder)
    images = np.random.default_rng(3).random((3, 12, 10, 1)).astype(np.float32)
    expected = embedder.predict(images, verbose=0) + embedder.predict(images[:, :, ::-1], verbose=0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(averaged.predict(images, verbose=0), expected, atol=1e-6)
    # a mirrored photo gets the same embedding
    np.testing.assert_allclose(averaged.predict(images[:, :, ::-1], verbose=0), expected, atol=1e-5)
    averaged.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-6)


def shifted_reference(images, dy, dx):
    """out[y, x] = in[y + dy, x + dx] with the border mirrored (c b a | a b c), by explicit indexing."""
    height, width = images.shape[1:3]
    rows = np.arange(height) + dy
    columns = np.arange(width) + dx
    rows = np.where(rows < 0, -rows - 1, np.where(rows >= height, 2 * height - rows - 1, rows))
    columns = np.where(columns < 0, -columns - 1, np.where(columns >= width, 2 * width - columns - 1, columns))
    return images[:, rows][:, :, columns]


@pytest.mark.parametrize("dy, dx", [(0, 0), (1, 0), (-1, 0), (0, 2), (-2, -1)])
def test_shift_layer_matches_explicit_indexing(dy, dx):
    images = np.random.default_rng(5).random((2, 7, 6, 1)).astype(np.float32)
    np.testing.assert_array_equal(Shift(dy, dx)(images).numpy(), shifted_reference(images, dy, dx))


def test_test_time_augmentation_is_the_renormalised_sum_over_ten_views_and_survives_saving(tmp_path):
    embedder = build_embedding_model((12, 10, 1), embedding_dim=4, width=4)
    images = np.random.default_rng(6).random((3, 12, 10, 1)).astype(np.float32)
    assert tta_offsets(1) == [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)] and tta_offsets(0) == [(0, 0)]
    with pytest.raises(ValueError):
        tta_offsets(-1)
    views = [shifted_reference(images, dy, dx) for dy, dx in tta_offsets(1)]
    views += [view[:, :, ::-1] for view in views]
    expected = sum(embedder.predict(view, verbose=0) for view in views)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    augmented = with_test_time_augmentation(embedder, flip=True, shift=1)
    np.testing.assert_allclose(augmented.predict(images, verbose=0), expected, atol=1e-5)
    augmented.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-5)
    # shift 0 is flip averaging; neither is the embedder itself
    np.testing.assert_allclose(with_test_time_augmentation(embedder, flip=True, shift=0).predict(images, verbose=0),
                               with_flip_averaging(embedder).predict(images, verbose=0), atol=1e-6)
    np.testing.assert_allclose(with_test_time_augmentation(embedder, flip=False, shift=0).predict(images, verbose=0),
                               embedder.predict(images, verbose=0), atol=1e-6)


def _transformed(images, flips, shifts, angles):
    height, width = images.shape[1], images.shape[2]
    transforms = _geometric_transforms(tf.constant(flips), tf.constant(shifts, tf.float32),
                                       tf.constant(angles, tf.float32), height, width)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[height, width], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT").numpy()


def test_geometric_transforms_flip_shift_and_rotate_like_numpy():
    """Flip, then whole-pixel shift with mirrored borders (np.pad 'symmetric'), then rotation."""
    images = np.random.default_rng(4).random((4, 7, 5, 1)).astype(np.float32)
    flips = [False, True, True, False]
    shifts = [[0, 0], [0, 0], [1, -2], [-1, 1]]  # (shift_y, shift_x)
    out = _transformed(images, flips, shifts, [0.0, 0.0, 0.0, 0.0])
    for image, flip, (dy, dx), result in zip(images, flips, shifts, out):
        source = image[:, ::-1] if flip else image
        padded = np.pad(source, [(2, 2), (2, 2), (0, 0)], mode="symmetric")  # (11, 9, 1)
        expected = padded[2 + dy: 2 + dy + 7, 2 + dx: 2 + dx + 5]  # output (y, x) = source (y + dy, x + dx)
        np.testing.assert_array_equal(result, expected)
    turned = _transformed(images, [False, False, True, False], [[0, 0]] * 4, [0.0, np.pi, np.pi, 1e-7])
    np.testing.assert_allclose(turned[1], images[1, ::-1, ::-1], atol=1e-4)  # half a turn
    np.testing.assert_allclose(turned[2], images[2, ::-1], atol=1e-4)  # mirrored, then half a turn
    np.testing.assert_allclose(turned[3], images[3], atol=1e-4)


def test_erasing_replaces_one_rectangle_per_image_or_nothing():
    images = tf.zeros((6, 20, 16, 1))
    erased = _erase(images, tf.constant([1, 2], tf.int64), probability=1.0).numpy()[..., 0]
    for image in erased:
        rows, columns = np.nonzero(image)
        assert 0 < len(rows) < image.size
        box = image[rows.min(): rows.max() + 1, columns.min(): columns.max() + 1]
        assert np.count_nonzero(box) == len(rows)  # the changed pixels fill one rectangle
        assert 2 <= box.shape[0] <= 10 and 1 <= box.shape[1] <= 8  # 10-50% of each side
    assert len({tuple(np.nonzero(image)[0][[0, -1]]) + tuple(np.nonzero(image)[1][[0, -1]]) for image in erased}) > 1
    np.testing.assert_array_equal(_erase(images, tf.constant([1, 2], tf.int64), probability=0.0).numpy(), images.numpy())


def test_augmentation_is_seeded_and_draws_per_image():
    image = np.random.default_rng(5).random((20, 16, 1)).astype(np.float32)
    batch = tf.constant(np.stack([image] * 8))  # one image eight times
    augmentation = Augmentation(rotation=10.0, erasing=0.5)
    first = _augment(batch, tf.constant([3, 4], tf.int64), augmentation).numpy()
    np.testing.assert_array_equal(first, _augment(batch, tf.constant([3, 4], tf.int64), augmentation).numpy())
    assert not np.allclose(first, _augment(batch, tf.constant([3, 5], tf.int64), augmentation).numpy())
    assert first.min() >= 0 and first.max() <= 1
    assert all(not np.allclose(first[0], other) for other in first[1:])  # each copy augmented differently
    unchanged = _augment(batch, tf.constant([3, 4], tf.int64), Augmentation(False, 0.0, 0.0, 0.0)).numpy()
    np.testing.assert_array_equal(unchanged, batch.numpy())


def test_subsampled_shortcut_is_the_strided_1x1_convolution():
    """The shortcut computes subsampling then a 1x1 convolution (a oneDNN crash workaround):
    the same function as a 1x1 convolution of stride 2, on even and odd feature-map sizes."""
    model = build_embedding_model((31, 26, 1), 16, width=8, head="flatten")
    subsample, project = model.get_layer("stage2_block1_subsample"), model.get_layer("stage2_block1_project")
    features = tf.constant(np.random.default_rng(6).random((3, 31, 26, 8)), tf.float32)  # odd height, even width
    ours = project(subsample(features)).numpy()
    strided = tf.nn.conv2d(features, project.kernel, strides=2, padding="VALID").numpy()
    assert ours.shape == strided.shape == (3, 16, 13, 16)
    np.testing.assert_allclose(ours, strided, atol=1e-5)


def test_flatten_head_keeps_positions_and_unknown_heads_are_refused():
    pooled = build_embedding_model((16, 16, 1), embedding_dim=4, width=4, head="pool")
    flattened = build_embedding_model((16, 16, 1), embedding_dim=4, width=4, head="flatten")
    assert flattened.get_layer("flatten").output.shape == (None, 2 * 2 * 32)  # (16 / 8)^2 positions x 8 w
    assert flattened.count_params() > pooled.count_params()
    outputs = flattened.predict(np.random.default_rng(6).random((2, 16, 16, 1)), verbose=0)
    np.testing.assert_allclose(np.linalg.norm(outputs, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="Unknown head"):
        build_embedding_model((16, 16, 1), head="attention")


def test_checkpoint_schedule_saves_after_the_interval_and_at_the_last_epoch():
    from facetrip.training.checkpoints import CheckpointSchedule

    now = [0.0]
    schedule = CheckpointSchedule(10.0, last_epoch=5, clock=lambda: now[0])
    decisions = []
    for epoch, seconds in enumerate([4, 4, 4, 4, 1, 1]):  # epoch ends at 4, 8, 12, 16, 17, 18 s
        now[0] += seconds
        decisions.append(schedule.due(epoch))
        assert schedule.due(epoch) == decisions[-1]  # asked twice (export, backup): the same answer
    assert decisions == [False, False, True, False, False, True]
    every_epoch = CheckpointSchedule(0.0, last_epoch=2, clock=lambda: 0.0)
    assert [every_epoch.due(epoch) for epoch in range(3)] == [True, True, True]


def test_the_centres_start_from_every_photo_of_a_small_set_and_a_bounded_seeded_sample_of_a_large_one():
    from facetrip.training.run import centre_sample

    np.testing.assert_array_equal(centre_sample(250, 4096, seed=0), np.arange(250))
    sample = centre_sample(1_000_000, 4096, seed=3)
    assert len(sample) == 4096 and len(np.unique(sample)) == 4096 and (np.diff(sample) > 0).all()
    assert sample.min() >= 0 and sample.max() < 1_000_000
    np.testing.assert_array_equal(sample, centre_sample(1_000_000, 4096, seed=3))  # the run's seed decides it
    assert not np.array_equal(sample, centre_sample(1_000_000, 4096, seed=4))
    assert sample.mean() > 400_000 and sample.mean() < 600_000  # drawn from the whole set, not its start
