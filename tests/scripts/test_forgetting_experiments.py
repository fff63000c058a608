"""The forgetting experiments' training changes, on a tiny network: the pull to the pretrained weights and feature distillation."""

import importlib.util

import numpy as np
import pytest

from conftest import REPO


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_embedder(seed=0, name="tiny"):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Flatten(), keras.layers.Dense(4),
                             keras.layers.UnitNormalization()], name=name)


def test_pull_moves_every_weight_the_given_share_back_to_its_start():
    import keras

    pull_to_pretrained = load_script("pull_to_pretrained")
    embedder = tiny_embedder(name="face_resnet")
    start = [weight.copy() for weight in embedder.get_weights()]

    class Holder(keras.Model):  # the callback reaches the network as model.embedder.get_layer("face_resnet")
        def __init__(self):
            super().__init__()
            self.embedder = keras.Sequential([keras.Input((6, 6, 3)), embedder])

    holder = Holder()
    callback = pull_to_pretrained.pull_callback(0.25)
    callback.set_model(holder)
    callback.on_train_begin()
    moved = [weight + 1.0 for weight in start]
    embedder.set_weights(moved)
    callback.on_train_batch_end(0)
    for after, before, begin in zip(embedder.get_weights(), moved, start):
        np.testing.assert_allclose(after, before - 0.25 * (before - begin), atol=1e-6)


@pytest.fixture
def distilling_trainer():
    import keras

    from facetrip.losses import TripletLoss

    distill = load_script("distill_from_pretrained")
    anchor = np.full((1, 6, 6, 3), 0.5, np.float32)  # its mirror is itself: every pick has the same teacher
    trainer_class = distill.distilling_trainer_class(anchor, weight=1.0, anchors_per_step=3)
    embedder = tiny_embedder()
    teacher = np.asarray(embedder(anchor))  # (1, 4)
    trainer = trainer_class(embedder, [0, 1], TripletLoss(strategy="batch_all", margin=0.2))
    return trainer, embedder, anchor, teacher, keras


def test_distillation_term_is_the_squared_distance_to_the_pretrained_embedding(distilling_trainer, rng):
    trainer, embedder, anchor, teacher, keras = distilling_trainer
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    images = rng.uniform(size=(4, 6, 6, 3)).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    logs = trainer.train_step((images, labels))
    assert float(logs["distillation_loss"]) == pytest.approx(0.0, abs=1e-10)  # untrained: the teacher itself
    kernel, bias = embedder.layers[1].get_weights()
    embedder.layers[1].set_weights([kernel + rng.normal(scale=0.1, size=kernel.shape).astype(np.float32), bias])
    student = np.asarray(embedder(anchor))
    expected = float(np.sum((student - teacher) ** 2))
    assert expected > 1e-3
    logs = trainer.train_step((images, labels))  # a fresh Mean: the second step's value averaged with the first's 0
    assert float(logs["distillation_loss"]) == pytest.approx(expected / 2, rel=1e-4)


def test_distillation_alone_brings_the_network_back_to_the_teacher(distilling_trainer, rng):
    trainer, embedder, anchor, teacher, keras = distilling_trainer
    trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    trainer.loss_weights_now.assign([0.0, 0.0])  # no classification or triplet term: only the distillation
    kernel, bias = embedder.layers[1].get_weights()
    embedder.layers[1].set_weights([kernel + rng.normal(scale=0.3, size=kernel.shape).astype(np.float32), bias])
    before = float(np.sum((np.asarray(embedder(anchor)) - teacher) ** 2))
    images, labels = rng.uniform(size=(4, 6, 6, 3)).astype(np.float32), np.array([0, 0, 1, 1])
    for _ in range(50):
        trainer.train_step((images, labels))
    after = float(np.sum((np.asarray(embedder(anchor)) - teacher) ** 2))
    assert after < 0.1 * before
