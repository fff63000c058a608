"""The classification term with a margin head: cosine unchanged to the bit, ArcFace and CosFace train, configs checked."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from facetrip.config import Config
from facetrip.losses import TripletLoss
from facetrip.losses.margin_heads import margin_logits
from facetrip.models import build_embedding_model
from facetrip.training.embedding_trainer import EmbeddingTrainer
from facetrip.training.sampled_classifier import cosine_softmax_losses

LABELS = np.array([3, 7, 9, 11, 12, 20])


def head_trainer(head="cosine", scale=0.0, margin=0.0, classifier_sample=0, eager=True):
    keras.utils.set_random_seed(0)
    embedder = build_embedding_model((12, 10, 1), embedding_dim=4, width=4)
    trainer = EmbeddingTrainer(embedder, LABELS, TripletLoss("batch_hard", 0.2), warmup_epochs=1,
                               classification_weight=0.5, scale=scale, label_smoothing=0.1,
                               classifier_sample=classifier_sample, seed=0, classification_head=head,
                               classification_margin=margin)
    trainer.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=1e-4), run_eagerly=eager)  # eager: no tracing, fast
    return trainer


def test_the_cosine_head_is_bit_identical_to_the_plain_cosine_softmax():
    """The formula the trainer had before the heads: CE(smoothed one-hot, 16 * e_hat @ c_hat), s = 16 by default."""
    trainer = head_trainer("cosine")
    assert (trainer.head, trainer.scale, trainer.margin) == ("cosine", 16.0, 0.0)
    embeddings = tf.constant(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    labels = np.array([3, 7, 9, 9, 20, 12, 11, 3])
    classes = tf.constant([0, 1, 2, 2, 5, 4, 3, 0], tf.int64)
    centres = tf.math.l2_normalize(trainer.class_centres, axis=0)  # (D, N)
    logits = 16.0 * tf.matmul(tf.math.l2_normalize(embeddings, axis=1), centres)  # (B, N)
    targets = tf.one_hot(classes, 6) * 0.9 + 0.1 / 6
    before = tf.nn.softmax_cross_entropy_with_logits(targets, logits).numpy()
    np.testing.assert_array_equal(trainer.classification_losses(labels, embeddings).numpy(), before)
    # the sampled classifier's losses, likewise
    block = tf.constant(np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32))
    sampled_logits = 16.0 * tf.matmul(tf.math.l2_normalize(embeddings, axis=1), tf.math.l2_normalize(block, axis=1),
                                      transpose_b=True)  # (B, S)
    sampled_before = tf.nn.softmax_cross_entropy_with_logits(targets, sampled_logits).numpy()
    np.testing.assert_array_equal(cosine_softmax_losses(embeddings, block, classes, 16.0, 0.1).numpy(), sampled_before)


@pytest.mark.parametrize("head, scale, margin", [("arcface", 64.0, 0.5), ("cosface", 64.0, 0.35), ("arcface", 30.0, 0.3)])
def test_margin_heads_give_the_loss_of_their_logits(head, scale, margin):
    """CE of the head's logits (margin_logits, checked against NumPy in tests/losses) over the full centres."""
    trainer = head_trainer(head, 0.0 if scale == 64.0 else scale, 0.0 if margin in (0.5, 0.35) else margin)
    assert (trainer.head, trainer.scale, trainer.margin) == (head, scale, margin)
    embeddings = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    classes = np.array([0, 1, 2, 3, 4, 5])
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    centres = trainer.class_centres.numpy()
    cosines = unit @ (centres / np.linalg.norm(centres, axis=0, keepdims=True))  # (B, N)
    logits = margin_logits(tf.constant(cosines, tf.float32), classes, head, scale, margin).numpy().astype(np.float64)
    targets = np.eye(6)[classes] * 0.9 + 0.1 / 6
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    expected = -(targets * log_softmax).sum(1)
    np.testing.assert_allclose(trainer.classification_losses(LABELS, embeddings).numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("classifier_sample", [0, 4], ids=["full", "sampled"])
@pytest.mark.parametrize("head", ["cosine", "arcface", "cosface"])
def test_a_few_warm_up_steps_with_each_head_lower_the_classification_loss(head, classifier_sample):
    trainer = head_trainer(head, classifier_sample=classifier_sample)
    assert (trainer.sampled_classifier is not None) == (classifier_sample > 0)
    if trainer.sampled_classifier is not None:
        assert (trainer.sampled_classifier.head, trainer.sampled_classifier.margin) == (trainer.head, trainer.margin)
    trainer.set_epoch(0)  # the warm-up: classification only
    images = np.random.default_rng(3).random((6, 12, 10, 1)).astype(np.float32)
    labels = np.array([3, 3, 7, 7, 9, 9])  # 3 identities: with S = 4 every step draws one other centre
    losses = [trainer.train_on_batch(images, labels, return_dict=True)["classification_loss"] for _ in range(12)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_a_traced_step_with_a_sampled_arcface_head_trains_like_the_eager_one():
    """fit's path: the step as a tf.function, with the drawn block's gradient."""
    images = np.random.default_rng(4).random((6, 12, 10, 1)).astype(np.float32)
    labels = np.array([3, 3, 7, 7, 9, 9])
    logs = []
    for eager in (True, False):
        trainer = head_trainer("arcface", classifier_sample=4, eager=eager)
        trainer.set_epoch(0)
        logs.append([trainer.train_on_batch(images, labels, return_dict=True)["classification_loss"] for _ in range(3)])
    np.testing.assert_allclose(logs[1], logs[0], rtol=2e-3)  # the traced step may fuse ops (XLA): not bit-equal
    assert logs[1][-1] < logs[1][0]


def test_the_cosine_head_takes_no_margin():
    with pytest.raises(ValueError, match="cosine head has no margin"):
        head_trainer("cosine", margin=0.3)


def test_the_config_keys_default_to_today_and_accept_each_head():
    config = Config()
    assert (config.train.classification_head, config.train.classification_scale,
            config.train.classification_margin) == ("cosine", 0.0, 0.0)
    config = Config.from_dict({"train": {"classification_head": "ArcFace", "classification_margin": 0.5,
                                         "classification_scale": 32.0}})
    assert (config.train.classification_head, config.train.classification_scale,
            config.train.classification_margin) == ("arcface", 32.0, 0.5)


@pytest.mark.parametrize("table, expected", [
    ('classification_head = "sphereface"',
     "train.classification_head must be one of cosine, arcface, cosface, not 'sphereface'."),
    ("classification_head = 1", "train.classification_head must be a string, not 1."),
    ("classification_scale = -1.0", "train.classification_scale must be a number from 0 to 1024, not -1.0."),
    ("classification_scale = 2000.0", "train.classification_scale must be a number from 0 to 1024, not 2000.0."),
    ("classification_margin = nan", "train.classification_margin must be a number from 0 to 1, not nan."),
    ("classification_margin = 1.5", "train.classification_margin must be a number from 0 to 1, not 1.5."),
    ("classification_margin = 0.3", "train.classification_margin applies to the arcface and cosface heads"),
])
def test_bad_head_settings_are_one_line_errors_before_any_data(table, expected, tmp_path):
    from conftest import run_cli
    from helpers import one_line_error

    config = tmp_path / "head.toml"
    config.write_text(f"[train]\n{table}\n")
    result = run_cli("train", "--config", config, "--run-dir", tmp_path / "run", "--data-dir", tmp_path / "never_prepared")
    one_line_error(result, str(config), expected)
    assert not (tmp_path / "run").exists()
