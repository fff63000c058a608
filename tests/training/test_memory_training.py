"""The cross-batch memory in training (``loss.memory_size``, ``--memory``): FIFO filling, warm-up, resume, bad input."""

import json

import keras
import numpy as np
import pytest

import reference
from conftest import TINY, run_cli
from helpers import assert_resume_equals_uninterrupted, one_line_error
from facetrip.losses import TripletLoss
from facetrip.models import build_embedding_model
from facetrip.training.embedding_trainer import EmbeddingTrainer

BATCH = 6
IMAGE_SHAPE = (12, 10, 1)


def tiny_trainer(memory_size=0, memory_warmup_steps=0, **options):
    keras.utils.set_random_seed(0)
    embedder = build_embedding_model(IMAGE_SHAPE, embedding_dim=4, width=4)
    trainer = EmbeddingTrainer(embedder, range(12), TripletLoss("batch_hard", 0.2), memory_size=memory_size,
                               memory_warmup_steps=memory_warmup_steps, **options)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05))
    return trainer


def batch(step: int):
    """Step ``step``'s batch: 3 identities x 2 images, labels 3 * step .. 3 * step + 2 (mod 12): each step's differ."""
    images = np.random.default_rng(step).random((BATCH, *IMAGE_SHAPE)).astype(np.float32)
    labels = np.repeat((3 * step + np.arange(3)) % 12, 2)
    return images, labels


def step(trainer, step_index: int):
    """One train step; returns (logs, the embeddings the step computed, the batch's labels)."""
    images, labels = batch(step_index)
    embeddings = trainer.embedder(images, training=True).numpy()  # what the step sees (batch statistics)
    trainer.reset_metrics()
    logs = trainer.train_on_batch(images, labels, return_dict=True)
    return logs, embeddings, labels


def held(trainer):
    """The memory's rows, oldest first: (embeddings (H, D), labels (H,))."""
    contents = trainer.cross_batch_memory.contents()
    return contents["memory_embeddings"].numpy(), contents["memory_labels"].numpy()


def batch_hard_with_memory(labels, embeddings, memory_labels, memory_embeddings, margin=0.2):
    """Explicit loops: anchors are the batch's rows; positives (not the anchor), negatives: any batch or memory row."""
    all_labels = np.concatenate([labels, memory_labels])
    rows = np.concatenate([embeddings, memory_embeddings.reshape(-1, embeddings.shape[1])])
    terms = []
    for a in range(len(labels)):
        distances = [reference.distance(rows[a], rows[j], "euclidean") for j in range(len(rows))]
        positives = [distances[p] for p in range(len(rows)) if p != a and all_labels[p] == all_labels[a]]
        negatives = [distances[n] for n in range(len(rows)) if all_labels[n] != all_labels[a]]
        if positives and negatives:
            terms.append(reference.per_triplet(max(positives) - min(negatives), margin))
    return float(np.mean(terms)) if terms else 0.0


def test_the_memory_fills_first_in_first_out_and_mines_against_earlier_batches():
    """Capacity 10, batches of 6: after k steps it holds the last min(10, 6k) rows pushed, oldest first, and
    step k's triplet loss is batch_hard over the batch and what the memory held before that step."""
    trainer = tiny_trainer(memory_size=10)
    pushed_embeddings, pushed_labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    for k in range(4):
        before_embeddings, before_labels = held(trainer)
        logs, embeddings, labels = step(trainer, k)
        expected = batch_hard_with_memory(labels, embeddings, before_labels, before_embeddings)
        np.testing.assert_allclose(logs["triplet_loss"], expected, rtol=1e-5, atol=1e-6)
        pushed_embeddings = np.concatenate([pushed_embeddings, embeddings])
        pushed_labels = np.concatenate([pushed_labels, labels])
        memory_embeddings, memory_labels = held(trainer)
        np.testing.assert_array_equal(memory_labels, pushed_labels[-10:])
        np.testing.assert_allclose(memory_embeddings, pushed_embeddings[-10:], rtol=1e-5, atol=1e-6)
    assert int(trainer.cross_batch_memory.pushed.numpy()) == 4 * BATCH
    assert not any(variable.trainable for variable in trainer.cross_batch_memory.weights)
    assert all(variable.path.split("/")[0] != "cross_batch_memory" for variable in trainer.trainable_variables)


def test_memory_zero_leaves_the_step_as_it_was():
    """No memory object, no variables of its own; the step's logs and weights equal those of a trainer without one."""
    without = tiny_trainer()
    with_zero = tiny_trainer(memory_size=0)
    assert with_zero.cross_batch_memory is None
    assert [v.path for v in with_zero.weights] == [v.path for v in without.weights]
    for k in range(2):
        assert step(with_zero, k)[0] == step(without, k)[0]
    for mine, theirs in zip(with_zero.weights, without.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_nothing_is_pushed_or_mined_before_the_warmup_steps_end():
    """Warm-up 2: steps 0 and 1 are the batch-only loss and push nothing; step 2 pushes; step 3 mines the memory."""
    trainer = tiny_trainer(memory_size=12, memory_warmup_steps=2)
    for k in range(3):
        logs, embeddings, labels = step(trainer, k)
        np.testing.assert_allclose(logs["triplet_loss"], reference.batch_hard(labels, embeddings, 0.2, "euclidean"),
                                   rtol=1e-5, atol=1e-6)
        assert int(trainer.cross_batch_memory.pushed.numpy()) == (BATCH if k == 2 else 0)
    before_embeddings, before_labels = held(trainer)
    logs, embeddings, labels = step(trainer, 3)
    with_memory = batch_hard_with_memory(labels, embeddings, before_labels, before_embeddings)
    assert abs(with_memory - reference.batch_hard(labels, embeddings, 0.2, "euclidean")) > 1e-4  # the memory counts
    np.testing.assert_allclose(logs["triplet_loss"], with_memory, rtol=1e-5, atol=1e-6)
    assert int(trainer.cross_batch_memory.steps.numpy()) == 4


def test_a_checkpoint_holds_the_memory_and_a_resumed_trainer_continues_as_the_uninterrupted_one(tmp_path):
    """Save after 3 steps, restore into a fresh trainer: memory, counters and the next steps are the same."""
    from facetrip.training.checkpoints import Checkpoint, holds_classifier, restore_checkpoint

    uninterrupted = tiny_trainer(memory_size=10, memory_warmup_steps=1)
    for k in range(3):
        step(uninterrupted, k)
    uninterrupted.optimizer.build(uninterrupted.trainable_variables)
    path = tmp_path / "epoch-0001.weights.h5"
    uninterrupted.save_weights(path)
    assert not holds_classifier(path)  # the memory's variables are its own, not the trainer's

    resumed = tiny_trainer(memory_size=10, memory_warmup_steps=1)
    restore_checkpoint(resumed, Checkpoint(epoch=1, weights=path))
    for mine, theirs in zip(resumed.cross_batch_memory.weights, uninterrupted.cross_batch_memory.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    for k in range(3, 5):
        assert step(resumed, k)[0] == step(uninterrupted, k)[0]
    for mine, theirs in zip(resumed.weights, uninterrupted.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)


def test_a_run_with_memory_trains_and_records_it(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    result = run_cli("train", "--config", TINY, "--run-dir", run_dir, "--data-dir", data_dir, "--memory", "16",
                     "--epochs", "1", "--no-evaluate")
    assert result.exit_code == 0, result.output
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["memory"] == {"size": 16, "warmup_steps": 0}
    assert "memory_size = 16" in (run_dir / "config.toml").read_text()


@pytest.mark.parametrize("flags, expected", [
    (("--strategy", "offline"), "choose an online strategy"),
])
def test_memory_with_offline_mining_is_a_one_line_error(tmp_path, data_dir, flags, expected):
    result = run_cli("train", "--config", TINY, "--run-dir", tmp_path / "run", "--data-dir", data_dir, "--memory", "8",
                     *flags, "--no-evaluate")
    one_line_error(result, "loss.memory_size", expected)


def test_a_memory_larger_than_the_training_photos_is_a_one_line_error(tmp_path, data_dir):
    result = run_cli("train", "--config", TINY, "--run-dir", tmp_path / "run", "--data-dir", data_dir,
                     "--memory", "100000", "--no-evaluate")
    one_line_error(result, "loss.memory_size = 100,000 is larger than the training set's")
    assert not (tmp_path / "run" / "metrics.csv").exists()  # refused before training started


def test_a_resumed_run_with_memory_ends_as_an_uninterrupted_one(tmp_path, data_dir):
    """Two epochs, the memory switching on mid-way through the second (warm-up 40 steps of about 31 an epoch);
    stopped after epoch 1's checkpoint and resumed, the run ends with the uninterrupted run's weights and losses."""
    from facetrip.config import Config

    config = Config.from_toml(TINY)
    config.set("data.data_dir", data_dir)
    config.set("loss.memory_size", 64)
    config.set("loss.memory_warmup_steps", 40)
    config.set("train.stranger_check", "")
    assert_resume_equals_uninterrupted(config, tmp_path)
