"""Training throughput with the cross-batch memory (``loss.memory_size``, ``--memory``) on and off.

Reproduce (from the repository root)::

    .venv/bin/python scripts/bench_memory_training.py --memory-sizes 0 4096 16384 --steps 60 --repeats 8
    .venv/bin/python scripts/bench_memory_training.py --model face --memory-sizes 0 4096 16384 --steps 10 \\
        --warmup 2 --repeats 4

(about 3.5 and 2.5 minutes on 2 CPU cores; docs/reports/bench_memory_training.md holds both
tables, each run's report being what ``--output FILE`` writes).

``facetrip train --memory N`` refuses a memory larger than the training set (ORL's training
split holds a few hundred photos), so this script builds the trainer directly
(``EmbeddingTrainer(..., memory_size=M)``) and times ``fit``:

- ``--model scratch`` (default): the from-scratch model of ``configs/scratch.toml`` (ResNet-18-like,
  32 x 26 grey), trained on 64 of the ORL pipeline's own P x K batches (batch 64, the recipe's
  augmentation) computed before timing and cycled from memory, as ``scripts/bench_train.py``'s
  reference. This model's step is short, so the memory's share shows most.
- ``--model face``: the default recipe's face network (``configs/default.toml``: face_resnet,
  150 x 150 x 3 chips, freeze none), on 8 random-pixel batches of P x K labels of ORL's training
  identities (the network costs the same whatever the pixels; no face detection needed).

Both train with the recipe's loss (batch-hard triplet loss + classification term) and AdamW.
Before timing, each memory is filled to its capacity with unit embeddings labelled with the
training identities (as after M / B steps of training), so every timed step mines against all
M rows and pushes a batch: the steady state. Variants run in ABBA order (the machine's speed
drifts over minutes), each run ``--steps`` steps after ``--warmup`` untimed ones; the table gives
median images/s and the ratio to M = 0, as the median over repeats of the paired runs' ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarking import REPO_ROOT, abba_rounds, markdown_table, write_report  # noqa: E402
from bench_train import timed_fit  # noqa: E402

CONFIGS = {"scratch": REPO_ROOT / "configs" / "scratch.toml", "face": REPO_ROOT / "configs" / "default.toml"}
MEMORY_BATCHES = {"scratch": 64, "face": 8}


def make_batches(model_kind: str, config, data_dir: str):
    """(dataset of (images, labels) batches cycled from memory, training labels, batch size)."""
    import numpy as np
    import tensorflow as tf

    from facetrip.data import PKSampler, load_faces, pk_dataset, split_identities
    from facetrip.training import training_augmentation

    config_for_data = config
    if model_kind == "face":  # only the labels are read: whole images, no face detection
        from facetrip.config import Config

        config_for_data = Config.from_toml(CONFIGS["scratch"])
    faces = load_faces("orl_faces", data_dir=data_dir)
    split = split_identities(faces.identity_names, dev=config.split.dev, test=config.split.test, seed=0)
    train_faces = faces.restricted_to(split.train)
    sampler = PKSampler(train_faces.labels, config.sampler.identities_per_batch, config.sampler.images_per_identity,
                        seed=0)
    batches = MEMORY_BATCHES[model_kind]
    pipeline = pk_dataset(train_faces, sampler, tuple(config_for_data.data.image_size), config_for_data.data.channels,
                          epochs=range(10_000), augmentation=training_augmentation(config_for_data))
    images, labels = next(iter(pipeline.batch(batches)))  # (N, B, H, W, C), (N, B)
    if model_kind == "face":
        rng = np.random.default_rng(0)
        shape = (batches, sampler.batch_size, *config.data.image_size, config.data.channels)
        images = tf.constant(rng.random(shape, dtype=np.float32))  # (N, B, 150, 150, 3) in [0, 1)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).repeat()
    return dataset, np.asarray(train_faces.labels), sampler.batch_size


def make_trainer(config, train_labels, memory_size: int):
    import keras

    from facetrip.losses import TripletLoss
    from facetrip.models import build_embedding_model
    from facetrip.training.embedding_trainer import EmbeddingTrainer

    keras.utils.set_random_seed(0)
    embedder = build_embedding_model(
        input_shape=(*config.data.image_size, config.data.channels), embedding_dim=config.model.embedding_dim,
        backbone=config.model.backbone, width=config.model.width, dropout=config.model.dropout,
        head=config.model.head, freeze=config.model.freeze,
    )
    trainer = EmbeddingTrainer(embedder, train_labels, TripletLoss(config.loss.strategy, config.loss.margin),
                               classification_weight=config.train.classification_weight, memory_size=memory_size)
    trainer.compile(optimizer=keras.optimizers.AdamW(config.train.learning_rate,
                                                     weight_decay=config.train.weight_decay))
    return trainer


def fill_memory(trainer, train_labels, seed: int = 0) -> None:
    """Fill the trainer's memory to capacity: unit embeddings, labels drawn from the training labels."""
    import numpy as np

    memory = trainer.cross_batch_memory
    if memory is None:
        return
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((memory.capacity, memory.embedding_dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    memory.memory_embeddings.assign(embeddings)
    memory.memory_labels.assign(rng.choice(np.unique(train_labels), memory.capacity).astype(np.int64))
    memory.pushed.assign(memory.capacity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="scratch", help="which recipe's network")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[0, 4096], help="M (0 = off, the reference)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    parser.add_argument("--repeats", type=int, default=4, help="alternating runs per memory size")
    parser.add_argument("--output", help="also write the markdown report here")
    args = parser.parse_args()

    from facetrip.config import Config

    config = Config.from_toml(CONFIGS[args.model])
    memory_sizes = sorted(set(args.memory_sizes) | {0})
    with tempfile.TemporaryDirectory() as data_dir:
        dataset, train_labels, batch_size = make_batches(args.model, config, data_dir)
    trainers = {}
    for memory_size in memory_sizes:
        trainers[memory_size] = make_trainer(config, train_labels, memory_size)
        fill_memory(trainers[memory_size], train_labels)

    def run(memory_size: int):
        return lambda: timed_fit(trainers[memory_size], dataset, args.warmup, args.steps)

    def report(round_index: int, name: str, seconds: float) -> None:
        print(f"M={name:>6} run {round_index + 1}: {batch_size / seconds:7.1f} images/s", flush=True)

    runs = abba_rounds({str(m): run(m) for m in memory_sizes}, args.repeats, report=report)
    for memory_size, trainer in trainers.items():  # the memory really was in use
        if trainer.cross_batch_memory is not None:
            pushed = int(trainer.cross_batch_memory.pushed.numpy())
            assert pushed > memory_size, (memory_size, pushed)

    reference = runs["0"]
    rows = []
    for memory_size in memory_sizes:
        seconds = runs[str(memory_size)]
        speed = [batch_size / s for s in seconds]
        ratio = paired = ""
        if memory_size:
            ratio = f"{statistics.median(reference) / statistics.median(seconds):.3f}"
            paired = f"{statistics.median(base / s for s, base in zip(seconds, reference)):.3f}"
        rows.append([f"{memory_size:,}" if memory_size else "0 (off)", f"{statistics.median(speed):.1f}",
                     ", ".join(f"{v:.1f}" for v in speed), ratio, paired])
    model_text = {"scratch": "the from-scratch model of configs/scratch.toml (resnet_small, 32 x 26 grey) on 64 of the "
                             "ORL pipeline's batches cycled from memory",
                  "face": "the default recipe's face network (configs/default.toml: face_resnet, 150 x 150 x 3, "
                          "freeze none) on 8 random-pixel batches with ORL training labels"}[args.model]
    command = (f".venv/bin/python scripts/bench_memory_training.py --model {args.model} --memory-sizes "
               f"{' '.join(map(str, args.memory_sizes))} --steps {args.steps} --warmup {args.warmup} "
               f"--repeats {args.repeats}" + (f" --output {args.output}" if args.output else ""))
    lines = [
        f"### Cross-batch memory: training throughput ({args.model})",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `{command}` - {os.cpu_count()} CPU cores, float32; "
        f"{model_text}; batch {batch_size} (P x K = {config.sampler.identities_per_batch} x "
        f"{config.sampler.images_per_identity}), {config.loss.strategy} triplet loss + classification term "
        f"(weight {config.train.classification_weight:g}), AdamW. `EmbeddingTrainer(memory_size=M)` with the memory "
        f"filled to M rows before timing (steady state: every step mines against M rows and pushes the batch). "
        f"{args.repeats} alternating runs (ABBA order) of {args.steps} steps after {args.warmup} warm-up steps.",
        "",
        *markdown_table(["M", "images/s (median)", "runs (images/s)", "speed vs M=0: ratio of medians",
                         "speed vs M=0: median of paired runs"], rows, "lrlrr"),
        "",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    if args.output:
        write_report(args.output, text)


if __name__ == "__main__":
    main()
