"""Synthetic (blended) training identities."""

import numpy as np
import pytest

from facetrip.data import load_faces, preprocess_encoded
from facetrip.data.synthetic import blended_identities


@pytest.fixture(scope="module")
def orl(data_dir):
    return load_faces("orl_faces", data_dir=data_dir)


def _pixels(faces, index):
    import tensorflow as tf

    return tf.io.decode_image(bytes(faces.encoded[index]), channels=faces.channels, expand_animations=False).numpy()


def test_blends_are_new_identities_whose_images_average_two_real_people(orl):
    faces = orl.restricted_to(["s1", "s2", "s3"])
    blended = blended_identities(faces, 4, images_per_identity=5, seed=3)
    assert len(blended) == len(faces) + 20
    assert blended.identity_names[: len(orl.identity_names)] == orl.identity_names
    new_labels = blended.labels[len(faces):]
    assert sorted(set(new_labels)) == list(range(len(orl.identity_names), len(orl.identity_names) + 4))
    assert np.all(np.bincount(new_labels)[len(orl.identity_names):] == 5)
    np.testing.assert_array_equal(blended.labels[: len(faces)], faces.labels)  # the real images come first, unchanged
    # every blended image is the rounded mean of one photo of each of its two people
    name = blended.identity_names[new_labels[0]]
    first, second = name.split(":")[1].split("+")
    photos = {person: [_pixels(faces, i).astype(np.float64) for i in np.flatnonzero(faces.labels == orl.identity_names.index(person))]
              for person in (first, second)}
    image = _pixels(blended, len(faces)).astype(np.float64)
    closest = min(np.abs(image - (a + b) / 2).max() for a in photos[first] for b in photos[second])
    assert closest <= 0.5 + 1e-9
    assert first != second and {first, second} <= {"s1", "s2", "s3"}
    # the blended bytes go through the same preprocessing as real images
    assert preprocess_encoded(blended.encoded[-1], (28, 23), 1).shape == (28, 23, 1)


def test_blending_is_seeded_and_zero_is_a_no_op(orl):
    faces = orl.restricted_to(["s1", "s2", "s3"])
    first, again = blended_identities(faces, 2, seed=1), blended_identities(faces, 2, seed=1)
    assert first.identity_names == again.identity_names
    assert all(a == b for a, b in zip(first.encoded, again.encoded))
    assert blended_identities(faces, 0) is faces


def test_blending_needs_two_identities_and_a_count_of_zero_or_more(orl):
    with pytest.raises(ValueError, match="two training identities"):
        blended_identities(orl.restricted_to(["s1"]), 1)
    with pytest.raises(ValueError, match="0 or more"):
        blended_identities(orl, -1)


def test_training_with_blended_identities_classifies_them_too(tmp_path, data_dir):
    """augment.blended_identities = 3 adds 3 identities of 10 images to what training sees.

    ORL's 40 people split into 10 test, 5 dev and 25 training identities of 10 images: 250
    images, 31 P x K = 4 x 2 batches per epoch (round(250 / 8)). With 3 blends there are 28
    identities (28 classifier centres) and 280 images, round(280 / 8) = 35 batches. Negative
    counts are one-line errors.
    """
    from pathlib import Path

    import keras

    from conftest import TINY, run_cli
    from facetrip.config import Config
    from facetrip.training import prepare_run_dir, train

    class WhatTrainingSees(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.identities = self.model.num_identities
            self.centres = tuple(self.model.class_centres.shape)
            self.batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1

    config = Config.from_toml(TINY)
    config.set("augment.blended_identities", 3)
    config.set("train.epochs", 1)
    config.set("data.data_dir", str(data_dir))
    run_dir = tmp_path / "run"
    prepare_run_dir(config, run_dir)
    seen = WhatTrainingSees()
    metadata = train(config, run_dir, callbacks=[seen])
    assert len(metadata["split"]["train"]) == 25 and metadata["epochs_completed"] == 1
    assert seen.identities == 25 + 3 and seen.centres == (8, 28)  # (embedding_dim, identities)
    assert seen.batches == round((250 + 3 * 10) / 8) == 35
    assert (run_dir / "model.keras").is_file()

    bad = tmp_path / "blend.toml"
    bad.write_text(Path(TINY).read_text().replace("[augment]", "[augment]\nblended_identities = -1"))
    result = run_cli("train", "--config", bad, "--run-dir", tmp_path / "bad", "--data-dir", data_dir)
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "blended_identities must be" in message and "not -1" in message, message
    assert "Traceback" not in result.output
