"""A cosine classifier over many identities that trains a sample of its centres each step (Partial FC).

The full classifier of :class:`~facetrip.training.embedding_trainer.EmbeddingTrainer`
keeps one centre per training identity, (D, N), and trains all of them every step: the
optimizer's two slots, the dense gradient and the update's temporaries cost some 5 KB per
identity at D = 128 (0.55 GB at 10^5 identities, ``docs/benchmarks.md``). Above
``sample_size`` identities each step instead draws S centres: those of the batch's own
identities and uniformly drawn others (An et al., "Partial FC", 2021), and the loss is

    loss_i = CE(softmax(s * cos(e_i, c_j) for j in S_t), y_i),   y_i in S_t,  |S_t| = S

with label smoothing spread over the S classes (the target logit takes the head's margin,
ArcFace or CosFace, as in :mod:`facetrip.losses.margin_heads`: the target is always drawn). Only those S centres change, by the
optimizer's own rule applied to them lazily (:func:`lazy_adam_rows`): the Adam moments of
the other centres wait until they are drawn again (as TensorFlow Addons' LazyAdam), the
decoupled weight decay touches the drawn centres only, and LAMB's trust ratio is taken
over the drawn block. What stays is the centres and two moment tables, (N, D) float32
each (1.5 KB per identity at D = 128), plus (S, D) temporaries in a step.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from facetrip.losses.margin_heads import margin_logits

# Training sets with more identities than this draw a sample of the centres each step (train.classifier_sample).
DEFAULT_SAMPLE_SIZE = 8192


def sample_class_columns(classes, num_classes: int, sample_size: int, seed):
    """Draw the classes of one step: every class of the batch, and others uniformly to make ``sample_size``.

    Args:
        classes: (B,) int class indices in [0, num_classes), at most ``sample_size`` distinct.
        num_classes: N.
        sample_size: S <= N.
        seed: (2,) int, the stateless random seed of this step.

    Returns:
        ``(columns, targets)``: (S,) int32 the drawn classes (no repeats, in no order), and
        (B,) int32 the position of each image's class in ``columns``.
    """
    classes = tf.cast(tf.reshape(classes, [-1]), tf.int32)  # (B,)
    scores = tf.random.stateless_uniform([num_classes], seed=seed)  # (N,) in [0, 1)
    present, _ = tf.unique(classes)  # (P,)
    scores = tf.tensor_scatter_nd_update(scores, present[:, None], tf.fill(tf.shape(present), 2.0))  # batch's first
    _, columns = tf.math.top_k(scores, k=sample_size, sorted=False)  # (S,)
    position = tf.scatter_nd(columns[:, None], tf.range(sample_size, dtype=tf.int32), [num_classes])  # (N,)
    return columns, tf.gather(position, classes)  # (S,), (B,)


def cosine_softmax_losses(embeddings, centres, targets, scale: float, label_smoothing: float,
                          head: str = "cosine", margin: float = 0.0):
    """Per-image cross-entropy of ``softmax(z_ij)`` against smoothed one-hot targets.

    The logits are those of :func:`~facetrip.losses.margin_heads.margin_logits`: ``s * cos(e_i, c_j)``,
    the target's with the head's margin (arcface: ``s * cos(theta + m)``; cosface: ``s * (cos(theta) - m)``).

    Args:
        embeddings: (B, D) float32.
        centres: (C, D) float32, the compared centres (any norms).
        targets: (B,) int, each image's row in ``centres``.
        scale: s.
        label_smoothing: eps; the target of class j is (1 - eps) [j = y] + eps / C.
        head: ``"cosine"`` (no margin), ``"arcface"`` or ``"cosface"``.
        margin: m of arcface (radians) or cosface.

    Returns:
        (B,) float32 losses.
    """
    cosines = tf.matmul(tf.math.l2_normalize(embeddings, axis=1),
                        tf.math.l2_normalize(centres, axis=1), transpose_b=True)  # (B, C)
    logits = margin_logits(cosines, targets, head, scale, margin)  # (B, C)
    count = tf.shape(centres)[0]
    smoothed = tf.one_hot(targets, count) * (1.0 - label_smoothing) + label_smoothing / tf.cast(count, tf.float32)
    return tf.nn.softmax_cross_entropy_with_logits(smoothed, logits)  # (B,)


def lazy_adam_rows(rows, gradient, first, second, step, learning_rate, beta_1: float, beta_2: float,
                   epsilon: float, weight_decay: float, trust_ratio: bool):
    """One step of Keras' AdamW (``trust_ratio=False``) or LAMB (``True``) on a block of rows.

    Applied to the rows a step drew, it is the update Keras' optimizer makes to a
    variable holding just those rows (tested against it):

        w <- w (1 - lr * wd)                                   (decoupled weight decay)
        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
        AdamW: w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
        LAMB:  u = m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps),
               w <- w - lr * (||w|| / ||u|| if both > 0 else 1) * u

    Args:
        rows, gradient, first, second: (S, D) float32: the rows, their gradient, and their
            first and second moments.
        step: t, the optimizer's step counting from 1.
        learning_rate: lr of this step.
        beta_1, beta_2, epsilon: the optimizer's.
        weight_decay: wd (0: none).
        trust_ratio: LAMB's layer-wise ratio, over the block.

    Returns:
        ``(rows, first, second)`` after the step, (S, D) each.
    """
    rows, gradient, first, second = (tf.convert_to_tensor(value, tf.float32) for value in (rows, gradient, first, second))
    step = tf.cast(step, tf.float32)
    learning_rate = tf.cast(learning_rate, tf.float32)
    if weight_decay:
        rows = rows - rows * weight_decay * learning_rate
    first = first + (gradient - first) * (1.0 - beta_1)
    second = second + (tf.square(gradient) - second) * (1.0 - beta_2)
    beta_1_power, beta_2_power = tf.pow(beta_1, step), tf.pow(beta_2, step)
    if not trust_ratio:
        alpha = learning_rate * tf.sqrt(1.0 - beta_2_power) / (1.0 - beta_1_power)
        return rows - first * alpha / (tf.sqrt(second) + epsilon), first, second
    update = (first / (1.0 - beta_1_power)) / (tf.sqrt(second / (1.0 - beta_2_power)) + epsilon)
    rows_norm, update_norm = tf.norm(rows), tf.norm(update)
    ratio = tf.where(rows_norm > 0, tf.where(update_norm > 0, rows_norm / update_norm, 1.0), 1.0)
    return rows - ratio * learning_rate * update, first, second


class SampledCosineClassifier(keras.layers.Layer):
    """The centres of N identities, (N, D), trained S at a time (the module's docstring).

    Args:
        num_classes: N.
        dim: D.
        sample_size: S, at most N and at least the identities of one batch.
        scale: s of the cosine softmax.
        label_smoothing: of the targets, over the S drawn classes.
        seed: of the draws; a step's draw depends on it and the optimizer's step only.
        head: ``"cosine"``, ``"arcface"`` or ``"cosface"`` (:mod:`facetrip.losses.margin_heads`).
        margin: m of the arcface or cosface head.
    """

    def __init__(self, num_classes: int, dim: int, sample_size: int, scale: float = 16.0,
                 label_smoothing: float = 0.1, seed: int = 0, head: str = "cosine", margin: float = 0.0, **kwargs):
        super().__init__(name=kwargs.pop("name", "sampled_classifier"), **kwargs)
        if not 0 < sample_size <= num_classes:
            raise ValueError(f"sample_size must be in 1..{num_classes}, not {sample_size}.")
        self.num_classes, self.sample_size = int(num_classes), int(sample_size)
        self.scale, self.label_smoothing, self.seed = float(scale), float(label_smoothing), int(seed)
        self.head, self.margin = str(head), float(margin)
        self.centres = self.add_weight(shape=(num_classes, dim), trainable=False, name="class_centres",
                                       initializer=keras.initializers.RandomNormal(stddev=0.05))
        self.first_moments = self.add_weight(shape=(num_classes, dim), initializer="zeros", trainable=False,
                                             name="first_moments")
        self.second_moments = self.add_weight(shape=(num_classes, dim), initializer="zeros", trainable=False,
                                              name="second_moments")
        self.built = True

    def draw(self, classes, step):
        """``(columns (S,), targets (B,))`` of :func:`sample_class_columns` for an optimizer step."""
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        return sample_class_columns(classes, self.num_classes, self.sample_size, seed)

    def block(self, columns):
        """(S, D) the drawn centres: differentiate the loss with respect to this tensor."""
        return tf.gather(self.centres, columns)

    def losses(self, embeddings, block, targets):
        """(B,) cross-entropy of each image over the drawn centres ``block`` (S, D)."""
        return cosine_softmax_losses(embeddings, block, targets, self.scale, self.label_smoothing, self.head,
                                     self.margin)

    def apply_gradient(self, columns, block, gradient, optimizer) -> None:
        """Update the drawn centres and their moments by ``optimizer``'s rule (call before ``optimizer.apply``).

        Args:
            columns: (S,) the drawn classes.
            block: (S, D) their centres as used in the loss.
            gradient: (S, D) the loss's gradient with respect to ``block``.
            optimizer: the run's Keras ``Lamb`` or ``AdamW`` / ``Adam``; its step and learning rate are read.
        """
        if isinstance(optimizer, keras.optimizers.Lamb):
            trust_ratio = True
        elif isinstance(optimizer, keras.optimizers.Adam):  # AdamW is one
            trust_ratio = False
        else:
            raise ValueError(f"The sampled classifier follows Adam, AdamW or LAMB, not {type(optimizer).__name__}.")
        indices = columns[:, None]  # (S, 1)
        rows, first, second = lazy_adam_rows(
            block, gradient, tf.gather(self.first_moments, columns), tf.gather(self.second_moments, columns),
            step=optimizer.iterations + 1, learning_rate=optimizer.learning_rate, beta_1=optimizer.beta_1,
            beta_2=optimizer.beta_2, epsilon=optimizer.epsilon, weight_decay=optimizer.weight_decay or 0.0,
            trust_ratio=trust_ratio,
        )
        for table, values in ((self.centres, rows), (self.first_moments, first), (self.second_moments, second)):
            table.value.scatter_nd_update(indices, values)  # rows in place: no (N, D) temporaries

    def set_rows(self, classes, rows) -> None:
        """Set the centres of ``classes`` (K,) to ``rows`` (K, D), e.g. their mean embeddings."""
        classes = np.asarray(classes, np.int64).reshape(-1, 1)
        self.centres.value.scatter_nd_update(tf.constant(classes), tf.constant(np.asarray(rows, np.float32)))
