"""An experiment against forgetting: fine-tune while keeping other people's faces where the pretrained network put them.

Every training step adds a feature-distillation term on a batch of anchor photos that
are not in the training set (the embedded ORL faces by default, all 40 people):

    loss = loss_facetrip + weight * mean_i || f(x_i) - f_0(x_i) ||^2

with f the network being trained, f_0 the pretrained network (its embeddings of the
anchors computed once, before the first step, for each chip and its mirror) and x_i a
random anchor chip, mirrored at random. The run is an ordinary facetrip run otherwise
(``train.weight_interpolation`` still applies at the end); it is evaluated on its test
people, and can be scored on LFW with ``scripts/bench_lfw.py --run OUT``. Measured on
Yale B in docs/quality.md#extended-yale-b.

Usage::

    python scripts/distill_from_pretrained.py --data folder:../shared/data/yaleb/images --split 0 \\
        --epochs 10 --weight 10 -o runs/yaleb_distill_split0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def anchor_chips(source: str, image_size, channels: int):
    """(N, H, W, C) float32 chips in [0, 1] of every photo of ``source``, through facetrip's own alignment."""
    import numpy as np

    from facetrip.data import image_dataset, load_faces
    from facetrip.data.model_input import prepare_faces

    faces, _ = prepare_faces(load_faces(source), face_chips=True)
    batches = [images.numpy() for images, _ in image_dataset(faces, tuple(image_size), channels, batch_size=100)]
    return np.concatenate(batches).astype(np.float32)  # (N, H, W, C)


def distilling_trainer_class(anchors, weight: float, anchors_per_step: int):
    """A subclass of EmbeddingTrainer whose single-device step adds the module's distillation term."""
    import keras
    import numpy as np
    import tensorflow as tf

    from facetrip.training.embedding_trainer import EmbeddingTrainer

    class DistillingTrainer(EmbeddingTrainer):
        def __init__(self, embedder, *args, **kwargs):
            super().__init__(embedder, *args, **kwargs)
            mirrored = anchors[:, :, ::-1, :]
            views = np.concatenate([anchors, mirrored])  # (2N, H, W, C)
            teacher = np.asarray(embedder.predict(views, batch_size=100, verbose=0), np.float32)  # (2N, D)
            self._anchor_views = tf.constant(views)
            self._teacher = tf.constant(teacher)
            self.trackers["distillation_loss"] = keras.metrics.Mean(name="distillation_loss")

        def train_step(self, data):
            images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
            classification_weight, triplet_weight = self.loss_weights_now[0], self.loss_weights_now[1]
            picks = tf.random.uniform([anchors_per_step], 0, tf.shape(self._teacher)[0], tf.int32)  # (m,)
            with tf.GradientTape() as tape:
                embeddings = tf.cast(self.embedder(images, training=True), tf.float32)  # (B, D)
                student = tf.cast(self.embedder(tf.gather(self._anchor_views, picks), training=True), tf.float32)  # (m, D)
                distillation = tf.reduce_mean(tf.reduce_sum(tf.square(student - tf.gather(self._teacher, picks)), axis=1))
                triplet = self.triplet_loss(labels, embeddings)
                classification = self.classification_loss(labels, embeddings)
                loss = classification_weight * classification + triplet_weight * triplet + weight * distillation
                if self.embedder.losses:
                    loss += tf.add_n(self.embedder.losses)
            variables = self.trainable_variables
            self.optimizer.apply(tape.gradient(loss, variables), variables)
            for name, value in (("loss", loss), ("triplet_loss", triplet), ("classification_loss", classification),
                                ("distillation_loss", distillation)):
                self.trackers[name].update_state(value)
            for statistic in self.statistics:
                statistic.update_state(labels, embeddings)
            return {metric.name: metric.result() for metric in self.metrics}

    return DistillingTrainer


def only_matching_layers_train(pattern: str) -> None:
    """Make every face ResNet that facetrip builds from now on train only its layers whose names match ``pattern``."""
    import re

    import facetrip.models as models

    build = models.build_embedding_model

    def build_partly_trainable(*args, **kwargs):
        model = build(*args, **kwargs)
        for layer in model.get_layer("face_resnet").layers:
            layer.trainable = layer.trainable and re.search(pattern, layer.name) is not None
        return model

    models.build_embedding_model = build_partly_trainable


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data source, e.g. folder:../shared/data/yaleb/images")
    parser.add_argument("--anchors", default="orl_faces", help="the source of the anchor photos (never trained on)")
    parser.add_argument("--split", type=int, default=0, help="split.seed")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--weight", type=float, default=10.0, help="weight of the distillation term")
    parser.add_argument("--anchors-per-step", type=int, default=32)
    parser.add_argument("--train-only", default="", metavar="REGEX",
                        help="train only the face ResNet's layers whose names match (the head still trains)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another config setting")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the new run directory")
    args = parser.parse_args(argv)

    import facetrip.training.embedding_trainer as embedding_trainer
    from benchmarking import train_and_evaluate_run
    from facetrip.config import Config

    settings = {}
    for setting in args.set:
        key, value = setting.split("=", 1)
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value  # a string
    config = Config()
    anchors = anchor_chips(args.anchors, config.data.image_size, config.data.channels)
    print(f"{len(anchors)} anchor chips from {args.anchors}")
    if args.train_only:
        only_matching_layers_train(args.train_only)
    embedding_trainer.EmbeddingTrainer = distilling_trainer_class(anchors, args.weight, args.anchors_per_step)
    train_and_evaluate_run(args.data, args.split, args.epochs, args.output, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
