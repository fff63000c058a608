"""The cross-batch memory of a training run (XBM, ``loss.memory_size``): earlier batches' embeddings to mine against.

Each training step mines the batch's anchors against the batch and the memory's current
contents (:mod:`facetrip.losses.memory`), then pushes the batch's embeddings (gradient
stopped) and labels into the memory, overwriting the oldest rows once it holds
``loss.memory_size``. For the first ``loss.memory_warmup_steps`` steps the memory stays
off: nothing is pushed and the loss is the batch's own, since early embeddings move too
fast to be compared with later ones (Wang et al., CVPR 2020, start the memory late too).

The memory lives in non-trainable variables of fixed shape (embeddings, labels, rows
pushed, steps seen), outside the gradient; they are saved with the trainer's weights, so
a checkpoint holds the memory and ``--resume`` continues with it.

Under ``tf.distribute`` every replica pushes the whole global batch (its rows gathered
from every replica, in replica order), so every replica holds the same memory, the one a
single device training on the global batches would hold; the variables are written with
the first replica's value (``only_first_replica``), which every replica shares.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from facetrip.losses.memory import memory_contents, memory_enqueue
from facetrip.training.errors import TrainingError

def check_memory_config(memory_size: int, offline: bool) -> None:
    """Refuse a memory the run cannot use, in one line, before any data is loaded.

    Args:
        memory_size: ``loss.memory_size`` (0: off).
        offline: the run trains on offline triplets.

    Raises:
        TrainingError: a memory with the offline strategy.
    """
    if memory_size <= 0:
        return
    if offline:
        raise TrainingError("loss.memory_size (--memory) mines online batches against earlier ones: choose an online "
                            "strategy (batch_all, batch_hard, semi_hard), not offline, or set it to 0.")


def check_memory_fits(memory_size: int, training_photos: int) -> None:
    """Refuse a memory larger than the training set, in one line, before training starts.

    Args:
        memory_size: ``loss.memory_size``.
        training_photos: the photos of the training identities.

    Raises:
        TrainingError: ``memory_size > training_photos``.
    """
    if memory_size > training_photos:
        raise TrainingError(f"loss.memory_size = {memory_size:,} is larger than the training set's {training_photos:,} "
                            f"photos: the memory would hold the same photos several times; choose at most "
                            f"{training_photos:,} (--memory).")


class CrossBatchMemory(keras.layers.Layer):
    """A first-in first-out memory of the last ``capacity`` training embeddings and their labels.

    Args:
        capacity: M, the rows held (> 0).
        embedding_dim: D.
        warmup_steps: steps before the memory switches on (nothing is pushed before).
        name: of the layer.

    Attributes:
        memory_embeddings: (M, D) float32, a ring buffer (:func:`~facetrip.losses.memory.memory_enqueue`).
        memory_labels: (M,) int64, their labels.
        pushed: scalar int64, rows pushed so far.
        steps: scalar int64, training steps seen (with or without a push).
    """

    def __init__(self, capacity: int, embedding_dim: int, warmup_steps: int = 0, name: str = "cross_batch_memory",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if capacity <= 0 or warmup_steps < 0:
            raise ValueError(f"A memory needs a capacity > 0 and warm-up steps >= 0, not {capacity}, {warmup_steps}.")
        self.capacity, self.embedding_dim, self.warmup_steps = int(capacity), int(embedding_dim), int(warmup_steps)
        # every replica pushes the same global batch: the first replica's value is everyone's
        shared = {"trainable": False, "initializer": "zeros", "aggregation": "only_first_replica"}
        self.memory_embeddings = self.add_weight(shape=(self.capacity, self.embedding_dim), dtype="float32",
                                                 name="memory_embeddings", **shared)
        self.memory_labels = self.add_weight(shape=(self.capacity,), dtype="int64", name="memory_labels", **shared)
        self.pushed = self.add_weight(shape=(), dtype="int64", name="pushed", **shared)
        self.steps = self.add_weight(shape=(), dtype="int64", name="steps", **shared)
        self.built = True

    def contents(self) -> dict[str, tf.Tensor]:
        """What the loss mines against: the rows held, oldest first (none before the warm-up ends).

        Returns:
            ``{"memory_embeddings": (H, D), "memory_labels": (H,)}`` with H = min(pushed, M),
            the keyword arguments of :func:`~facetrip.losses.online_triplet_loss`.
        """
        embeddings, labels = memory_contents(self.memory_embeddings.value, self.memory_labels.value,
                                             self.pushed.value)  # (H, D), (H,)
        return {"memory_embeddings": embeddings, "memory_labels": labels}

    def push(self, embeddings, labels) -> None:
        """End a training step: push the batch (once the warm-up is over) and count the step.

        Args:
            embeddings: (B, D) the batch's embeddings; no gradient flows into the memory.
            labels: (B,) or (B, 1) their integer labels.
        """
        embeddings = tf.stop_gradient(tf.cast(embeddings, tf.float32))  # (B, D)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)  # (B,)
        current = (self.memory_embeddings.value, self.memory_labels.value, self.pushed.value)

        def pushed():
            return memory_enqueue(*current, embeddings, labels)

        if self.warmup_steps == 0:
            updated = pushed()
        else:
            updated = tf.cond(self.steps.value >= self.warmup_steps, pushed, lambda: current)
        for variable, value in zip((self.memory_embeddings, self.memory_labels, self.pushed), updated):
            variable.assign(value)
        self.steps.assign_add(1)

    def get_config(self):
        config = super().get_config()
        config.update(capacity=self.capacity, embedding_dim=self.embedding_dim, warmup_steps=self.warmup_steps)
        return config
