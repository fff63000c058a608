"""The model that ``fit`` trains: the embedder plus a cosine classifier over the training identities.

On a small data set a triplet loss alone memorises the training identities within a few
hundred steps (the loss reaches 0 and learning stops). Two things help, both measured in
``docs/quality.md``: a short classification warm-up that spreads the identities over
the sphere before triplet mining starts, and keeping a small classification term as a
regulariser afterwards. The loss of one step is

    loss = w_cls * CE(softmax(s * cos(e_i, c_j)), y_i) + w_triplet * triplet(labels, e)

with unit embeddings ``e_i``, one learned centre ``c_j`` per training identity (compared by
cosine, as in NormFace) and scale ``s``. With a margin head the target class's logit is
``s * cos(theta + m)`` (ArcFace) or ``s * (cos(theta) - m)`` (CosFace) instead
(:mod:`facetrip.losses.margin_heads`). During the warm-up epochs ``w_cls = 1`` and
``w_triplet = 0``; afterwards ``w_cls = classification_weight`` and ``w_triplet = 1``.
The classifier only exists during training: the exported model is :attr:`embedder`.

Under a ``tf.distribute`` strategy with R replicas (:meth:`replica_step`) each replica
holds a part of the global P x K batch. With ``mining_scope="global"`` it gathers every
replica's embeddings and labels and mines its own anchors over the whole batch
(:mod:`facetrip.losses.global_batch`); each term is this replica's local sum over the
GLOBAL count, so the replicas' gradients, which the optimizer sums, are the gradient of
the single-device loss on the concatenated batch.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from facetrip.losses import TripletStatistic, triplet_batch_statistics
from facetrip.losses.global_batch import global_batch_triplet_sums, normalised_share
from facetrip.losses.margin_heads import margin_logits, resolve_head
from facetrip.training.cross_batch_memory import CrossBatchMemory
from facetrip.training.sampled_classifier import SampledCosineClassifier

MINING_SCOPES = ("global", "replica")


class EmbeddingTrainer(keras.Model):
    """Wraps an embedding model for ``fit``: triplet loss, classification warm-up, batch statistics.

    Args:
        embedder: model from images (B, H, W, C) to unit embeddings (B, D).
        identity_labels: the integer labels of the training identities (any order, unique).
        triplet_loss: a callable ``(labels (B,), embeddings (B, D)) -> scalar``, e.g. a
            :class:`~facetrip.losses.TripletLoss`.
        statistics: Keras metrics updated with ``(labels, embeddings)`` every step
            (e.g. :func:`~facetrip.losses.triplet_metrics`).
        warmup_epochs: epochs of classification only at the start.
        classification_weight: weight of the classification term after the warm-up; with no
            warm-up and weight 0 there is no classifier (``class_centres`` is None).
        scale: ``s``, the inverse temperature of the cosine softmax; 0: the head's default
            (cosine 16, arcface and cosface 64).
        label_smoothing: of the classification targets.
        mining_scope: with several replicas, ``"global"`` (each replica's anchors mined over
            the global batch) or ``"replica"`` (over its own rows only).
        with_classifier: build the classifier even with no warm-up and weight 0 (to resume a
            checkpoint that holds one); None: only when its term is on.
        classifier_sample: with more training identities than this, each step trains the
            centres of a sample of this many (:mod:`facetrip.training.sampled_classifier`,
            ``sampled_classifier``; ``class_centres`` is then None); 0: always all of them.
            It must be at least the identities of one batch.
        seed: of the sampled classifier's draws.
        classification_head: ``"cosine"`` (NormFace), ``"arcface"`` or ``"cosface"``: how the
            target class's logit is made harder (:mod:`facetrip.losses.margin_heads`).
        classification_margin: ``m`` of the arcface (radians) or cosface head; 0: the head's
            default (arcface 0.5, cosface 0.35); the cosine head takes only 0.
        memory_size: rows of the cross-batch memory the triplet loss also mines against
            (:mod:`facetrip.training.cross_batch_memory`); 0: none (``cross_batch_memory`` is None).
        memory_warmup_steps: steps before the memory switches on.

    Raises:
        ValueError: an unknown mining scope or head, or a margin for the cosine head.
    """

    def __init__(self, embedder, identity_labels, triplet_loss, statistics=(), warmup_epochs: int = 0,
                 classification_weight: float = 0.0, scale: float = 0.0, label_smoothing: float = 0.1,
                 mining_scope: str = "global", with_classifier: bool | None = None, classifier_sample: int = 0,
                 seed: int = 0, classification_head: str = "cosine", classification_margin: float = 0.0,
                 memory_size: int = 0, memory_warmup_steps: int = 0, **kwargs):
        super().__init__(name="trainer", **kwargs)
        if mining_scope not in MINING_SCOPES:
            raise ValueError(f"mining_scope must be one of {', '.join(MINING_SCOPES)}, not {mining_scope!r}.")
        self.mining_scope = mining_scope
        self.embedder = embedder
        identity_labels = np.unique(np.asarray(identity_labels, np.int64))
        self.num_identities = len(identity_labels)
        # class index of every label value; the labels of other identities never reach training
        index = np.zeros(int(identity_labels.max()) + 1, np.int64)
        index[identity_labels] = np.arange(self.num_identities)
        self._class_of_label = tf.constant(index)
        self.triplet_loss = triplet_loss
        self.statistics = list(statistics)
        self.warmup_epochs = int(warmup_epochs)
        self.classification_weight = float(classification_weight)
        self.head, self.scale, self.margin = resolve_head(classification_head, scale, classification_margin)
        self.label_smoothing = float(label_smoothing)
        # Without a classification term (no warm-up, weight 0) there is no classifier: its centres,
        # their optimizer slots and update buffers take some 5 KB per training identity.
        self.has_classifier = (self.warmup_epochs > 0 or self.classification_weight > 0 if with_classifier is None
                               else bool(with_classifier))
        sampled = self.has_classifier and 0 < classifier_sample < self.num_identities
        self.class_centres = self.add_weight(
            shape=(embedder.output_shape[-1], self.num_identities), initializer=keras.initializers.RandomNormal(stddev=0.05),
            name="class_centres",
        ) if self.has_classifier and not sampled else None
        self.sampled_classifier = SampledCosineClassifier(
            self.num_identities, embedder.output_shape[-1], int(classifier_sample), scale=self.scale,
            label_smoothing=self.label_smoothing, seed=seed, head=self.head, margin=self.margin,
        ) if sampled else None
        # (w_cls, w_triplet) of the current epoch, set by set_epoch; saved with the backup.
        self.loss_weights_now = self.add_weight(shape=(2,), initializer="zeros", trainable=False, name="loss_weights_now")
        self.cross_batch_memory = CrossBatchMemory(
            memory_size, embedder.output_shape[-1], memory_warmup_steps,
        ) if memory_size > 0 else None
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "triplet_loss", "classification_loss")}
        self.built = True  # the embedder is built and the trainer's own weights exist (Keras' backup requires it)

    def initialise_centres(self, embeddings, labels) -> None:
        """Start each identity's centre at the mean direction of its embeddings.

        With a pretrained embedder the classification term then agrees with the embedding
        from the first step, instead of pulling every face towards a random centre.

        Args:
            embeddings: (N, D) embeddings of training images, from the embedder as it is.
            labels: (N,) their identity labels.
        """
        if not self.has_classifier:
            return
        classes = np.asarray(tf.gather(self._class_of_label, np.asarray(labels, np.int64).reshape(-1)))  # (N,)
        present, rows = np.unique(classes, return_inverse=True)  # (P,) classes with embeddings, (N,) their row
        sums = np.zeros((len(present), embeddings.shape[1]), np.float64)
        np.add.at(sums, rows.reshape(-1), np.asarray(embeddings, np.float64))  # (P, D)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)  # (P, 1)
        keep = norms[:, 0] > 0
        if self.sampled_classifier is not None:  # (identities, D), set row by row
            self.sampled_classifier.set_rows(present[keep], sums[keep] / norms[keep])
            return
        # Only the P sampled columns change: no (identities, D) temporaries, whatever the number of identities.
        centres = np.array(self.class_centres.numpy(), np.float32)  # (D, identities), a copy
        centres[:, present[keep]] = (sums[keep] / norms[keep]).T
        self.class_centres.assign(centres)

    def phase_weights(self, epoch: int) -> tuple[float, float]:
        """``(w_cls, w_triplet)`` of an epoch (0-based)."""
        if epoch < self.warmup_epochs:
            return 1.0, 0.0
        return self.classification_weight, 1.0

    def set_epoch(self, epoch: int) -> None:
        self.loss_weights_now.assign(np.asarray(self.phase_weights(epoch), np.float32))

    def call(self, images, training=False):
        return self.embedder(images, training=training)

    def classification_loss(self, labels, embeddings):
        """Cross-entropy of the cosine softmax: ``s * cos(e_i, c_j)`` logits (B, identities) with the head's margin, averaged."""
        return tf.reduce_mean(self.classification_losses(labels, embeddings))

    def classification_losses(self, labels, embeddings):
        """Per-image cross-entropy (B,) of the cosine softmax (zeros without a classifier).

        A sampled classifier compares each image with the centres drawn for the
        optimizer's next step (:meth:`drawn_classification_loss`).
        """
        if not self.has_classifier:
            return tf.zeros(tf.shape(tf.reshape(labels, [-1])), embeddings.dtype)  # (B,)
        if self.sampled_classifier is not None:
            losses, _ = self.drawn_classification_losses(labels, embeddings)
            return losses
        centres = tf.math.l2_normalize(self.class_centres, axis=0)  # (D, identities)
        cosines = tf.matmul(tf.math.l2_normalize(embeddings, axis=1), centres)  # (B, identities)
        classes = tf.gather(self._class_of_label, tf.reshape(tf.cast(labels, tf.int64), [-1]))  # (B,)
        logits = margin_logits(cosines, classes, self.head, self.scale, self.margin)  # (B, identities)
        targets = tf.one_hot(classes, self.num_identities)
        targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_identities
        return tf.nn.softmax_cross_entropy_with_logits(targets, logits)  # (B,)

    def drawn_classification_losses(self, labels, embeddings, tape=None):
        """The sampled classifier's per-image losses (B,) over the centres drawn for the optimizer's next step.

        Args:
            labels: (B,) or (B, 1).
            embeddings: (B, D) float32.
            tape: a ``GradientTape`` to watch the drawn block in, or None.

        Returns:
            ``(losses, (columns, block))``: (B,) losses, the (S,) drawn classes and their
            (S, D) centres, the tensor to differentiate for
            :meth:`~facetrip.training.sampled_classifier.SampledCosineClassifier.apply_gradient`.
        """
        classes = tf.gather(self._class_of_label, tf.reshape(tf.cast(labels, tf.int64), [-1]))  # (B,)
        step = self.optimizer.iterations if self.optimizer is not None else 0
        columns, targets = self.sampled_classifier.draw(classes, step)  # (S,), (B,)
        block = self.sampled_classifier.block(columns)  # (S, D)
        if tape is not None:
            tape.watch(block)
        return self.sampled_classifier.losses(embeddings, block, targets), (columns, block)

    def replica_losses(self, labels, embeddings, context) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """This replica's share of the loss of one global batch, inside ``strategy.run``.

        ``share = w_cls * sum_i CE_i / B + w_triplet * S / N + regularisation / R`` with
        the global batch size B, the global-batch mining sums of
        :func:`~facetrip.losses.global_batch.global_batch_triplet_sums` (S local, N the
        count summed over replicas) and R replicas. Summed over the replicas, the shares
        are the single-device loss of the concatenated batch, and so are their gradients.

        Args:
            labels: (b,) or (b, 1) this replica's labels.
            embeddings: (b, D) float32, this replica's embeddings.
            context: the replica context (``tf.distribute.get_replica_context()``).

        Returns:
            ``(share, parts)``: the differentiable share, and the shares of the triplet
            and classification terms; ``parts`` also holds the global labels (B,) and
            embeddings (B, D), gradient stopped, for the batch statistics.
        """
        if self.sampled_classifier is not None:
            raise ValueError("The sampled classifier trains on one device; with replicas, train.classifier_sample "
                             "must be 0 or at least the number of training identities.")
        replicas = context.num_replicas_in_sync
        labels = tf.reshape(labels, [-1])  # (b,)
        # Under MultiWorkerMirroredStrategy a raw input tensor cannot be gathered ("destinations can not be empty").
        sizes = context.all_gather(tf.identity(tf.shape(embeddings)[:1]), axis=0)  # (R,) rows per replica
        offset = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
        global_size = tf.cast(tf.reduce_sum(sizes), embeddings.dtype)
        global_labels = context.all_gather(tf.identity(labels), axis=0)  # (B,)
        global_embeddings = context.all_gather(tf.identity(embeddings), axis=0)  # (B, D); backward: all-reduce, own rows
        # the same memory on every replica (it holds global batches): the columns after the global batch's
        memory = self.cross_batch_memory.contents() if self.cross_batch_memory is not None else {}
        if self.mining_scope == "global":
            column_labels, column_embeddings = global_labels, global_embeddings  # (B,), (B, D)
            if memory:
                column_labels = tf.concat([column_labels, tf.cast(memory["memory_labels"], column_labels.dtype)],
                                          axis=0)  # (B + H,)
                column_embeddings = tf.concat(
                    [column_embeddings, tf.stop_gradient(tf.cast(memory["memory_embeddings"], embeddings.dtype))],
                    axis=0)  # (B + H, D)
            sums = global_batch_triplet_sums(labels, embeddings, column_labels, column_embeddings, offset,
                                             strategy=self.triplet_loss.strategy, margin=self.triplet_loss.margin,
                                             metric=self.triplet_loss.metric)
            global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(sums.count))
            triplet = normalised_share(sums, global_count)
        else:  # each replica mines its own rows (and the memory); the replicas' losses are averaged
            triplet = self.triplet_loss(labels, embeddings, **memory) / replicas
        classification = tf.reduce_sum(self.classification_losses(labels, embeddings)) / global_size
        share = self.loss_weights_now[0] * classification + self.loss_weights_now[1] * triplet
        if self.embedder.losses:
            share += tf.add_n(self.embedder.losses) / replicas  # the same on every replica: counted once in the sum
        return share, {"triplet_loss": triplet, "classification_loss": classification,
                       "global_labels": tf.stop_gradient(global_labels),
                       "global_embeddings": tf.stop_gradient(global_embeddings)}

    def replica_step(self, images, labels) -> dict[str, tf.Tensor]:
        """One optimizer step on this replica's part of a global batch (the function ``strategy.run`` runs).

        The optimizer sums the replicas' gradients (an all-reduce) before it updates the
        weights, so each replica's gradient is that of its share (:meth:`replica_losses`).

        Returns:
            The step's logs, the same on every replica: ``loss``, ``triplet_loss``,
            ``classification_loss`` of the global batch and its batch statistics.
        """
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            embeddings = tf.cast(self.embedder(images, training=True), tf.float32)  # (b, D)
            share, parts = self.replica_losses(labels, embeddings, context)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(share, variables), variables)
        if self.cross_batch_memory is not None:  # the global batch, as one device training on it pushes
            self.cross_batch_memory.push(parts["global_embeddings"], parts["global_labels"])
        logs = {name: context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(value))
                for name, value in (("loss", share), ("triplet_loss", parts["triplet_loss"]),
                                    ("classification_loss", parts["classification_loss"]))}
        statistics = self.statistics_settings()
        if statistics is not None:
            logs.update(triplet_batch_statistics(parts["global_labels"], parts["global_embeddings"], **statistics))
        return logs

    def statistics_settings(self) -> dict | None:
        """The margin and metric of the batch statistics (from the first statistic), or None without statistics."""
        if not self.statistics:
            return None
        return {"margin": self.statistics[0].margin, "metric": self.statistics[0].metric}

    def train_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        classification_weight, triplet_weight = self.loss_weights_now[0], self.loss_weights_now[1]
        # None while fit builds symbolically in cross-replica context: no gather there
        context = tf.distribute.get_replica_context()
        distributed = context is not None and context.num_replicas_in_sync > 1
        drawn = None  # a sampled classifier's (columns, block)
        with tf.GradientTape() as tape:
            embeddings = tf.cast(self.embedder(images, training=True), tf.float32)  # (B, D)
            if distributed:  # this replica's share: local sums over global counts (Keras does not rescale it)
                loss, parts = self.replica_losses(labels, embeddings, context)
                triplet, classification = parts["triplet_loss"], parts["classification_loss"]
            else:  # with a memory, mined against its contents before this batch joins them
                memory = self.cross_batch_memory.contents() if self.cross_batch_memory is not None else {}
                triplet = self.triplet_loss(labels, embeddings, **memory)
                if self.sampled_classifier is not None:
                    losses, drawn = self.drawn_classification_losses(labels, embeddings, tape)
                    classification = tf.reduce_mean(losses)
                else:
                    classification = self.classification_loss(labels, embeddings)
                loss = classification_weight * classification + triplet_weight * triplet
                if self.embedder.losses:
                    loss += tf.add_n(self.embedder.losses)
        variables = self.trainable_variables
        if drawn is None:
            self.optimizer.apply(tape.gradient(loss, variables), variables)
        else:  # the drawn centres first: their update reads the optimizer's step before apply counts it
            *gradients, block_gradient = tape.gradient(loss, [*variables, drawn[1]])
            self.sampled_classifier.apply_gradient(*drawn, block_gradient, self.optimizer)
            self.optimizer.apply(gradients, variables)
        if self.cross_batch_memory is not None:  # distributed: the global batch, the same on every replica
            self.cross_batch_memory.push(*((parts["global_embeddings"], parts["global_labels"]) if distributed
                                           else (embeddings, labels)))
        if distributed:  # the global values, the same on every replica
            loss, triplet, classification = (context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(value))
                                             for value in (loss, triplet, classification))
            labels, embeddings = parts["global_labels"], parts["global_embeddings"]
        for name, value in (("loss", loss), ("triplet_loss", triplet), ("classification_loss", classification)):
            self.trackers[name].update_state(value)
        self.update_statistics(labels, embeddings)
        return {metric.name: metric.result() for metric in self.metrics}

    def update_statistics(self, labels, embeddings) -> None:
        """Update the batch statistics, each set of them computed once for all the metrics that share its settings.

        Four :class:`~facetrip.losses.TripletStatistic` metrics calling the statistics each
        would build four distance matrices in a step (measured in ``docs/benchmarks.md``).
        """
        computed = {}
        for statistic in self.statistics:
            if not isinstance(statistic, TripletStatistic):
                statistic.update_state(labels, embeddings)
                continue
            settings = (statistic.margin, statistic.metric)
            if settings not in computed:
                computed[settings] = triplet_batch_statistics(labels, embeddings, margin=statistic.margin,
                                                              metric=statistic.metric)
            statistic.update_from(computed[settings])

    @property
    def metrics(self):
        return [*self.trackers.values(), *self.statistics]

