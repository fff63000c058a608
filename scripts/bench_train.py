"""Training throughput of the from-scratch model: the real ORL pipeline vs batches in memory, float32 vs bf16.

Reproduce with::

    .venv/bin/python scripts/bench_train.py --steps 60 --repeats 8 --output docs/reports/bench_train_default.md

For each precision the from-scratch training model (``facetrip.models.build_embedding_model``
and ``facetrip.training.embedding_trainer.EmbeddingTrainer`` with ``configs/scratch.toml``: the batch-hard
triplet loss plus the classification term) is trained with ``fit`` on (the face network's
training speed is in docs/benchmarks.md)

- the ORL pipeline: P x K batches from ``pk_dataset`` with the recipe's augmentation;
- in-memory batches (the reference): 64 of those batches computed before timing and
  cycled from memory, so the difference is what producing batches during training costs;
- one batch repeated: a single in-memory batch. This is faster than varied batches
  for reasons of its own (about 4-9% here), so it overstates the pipeline's cost if
  used as the reference, as earlier versions of this script did.

The pipeline's own throughput (iterated alone, no model) is measured too: on 2 cores its
work comes out of the training step's CPU time. Runs alternate in ABBA order because this
machine's speed swings over minutes; each run times ``--steps`` steps after ``--warmup``
warm-up steps; the cost is the median over repeats of the paired ratio (the runs of one
repeat are seconds apart). The offline-mining part of the benchmark lives in
``scripts/bench_mining.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarking import REPO_ROOT, abba_rounds, markdown_table, timed, write_report  # noqa: E402

SCRATCH_CONFIG = REPO_ROOT / "configs" / "scratch.toml"  # the from-scratch recipe


REAL = "ORL pipeline"
MEMORY = "in-memory batches"  # the reference: the pipeline's own batches, computed before timing
ONE_BATCH = "one batch repeated"
MEMORY_BATCHES = 64


def make_model_and_data(precision: str, data_dir: str):
    import keras
    import tensorflow as tf

    from facetrip.config import Config
    from facetrip.data import PKSampler, load_faces, pk_dataset, split_identities
    from facetrip.losses import TripletLoss
    from facetrip.models import build_embedding_model
    from facetrip.training.embedding_trainer import EmbeddingTrainer
    from facetrip.training import training_augmentation

    config = Config.from_toml(SCRATCH_CONFIG)  # a learned backbone: the pretrained default trains only a head
    faces = load_faces("orl_faces", data_dir=data_dir)
    split = split_identities(faces.identity_names, dev=config.split.dev, test=config.split.test, seed=0)
    train_faces = faces.restricted_to(split.train)

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    keras.utils.set_random_seed(0)
    embedder = build_embedding_model(
        input_shape=(*config.data.image_size, config.data.channels), embedding_dim=config.model.embedding_dim,
        backbone=config.model.backbone, width=config.model.width, dropout=config.model.dropout, head=config.model.head,
    )
    keras.mixed_precision.set_global_policy("float32")
    model = EmbeddingTrainer(embedder, train_faces.labels, TripletLoss(config.loss.strategy, config.loss.margin),
                             classification_weight=config.train.classification_weight)
    model.compile(optimizer=keras.optimizers.AdamW(config.train.learning_rate, weight_decay=config.train.weight_decay))

    sampler = PKSampler(train_faces.labels, config.sampler.identities_per_batch, config.sampler.images_per_identity, seed=0)
    real = pk_dataset(train_faces, sampler, tuple(config.data.image_size), config.data.channels,
                      epochs=range(10_000), augmentation=training_augmentation(config))
    images, labels = next(iter(real.batch(MEMORY_BATCHES)))  # (64, B, H, W, C), (64, B)
    return model, {
        REAL: real,
        MEMORY: tf.data.Dataset.from_tensor_slices((images, labels)).repeat(),
        ONE_BATCH: tf.data.Dataset.from_tensors((images[0], labels[0])).repeat(),
    }, sampler.batch_size


def pipeline_images_per_second(dataset, batch_size: int, batches: int = 200) -> float:
    """Images per second of iterating ``dataset`` alone (after one untimed batch)."""
    iterator = iter(dataset)
    next(iterator)

    def pull_batches() -> None:
        for _ in range(batches):
            next(iterator)

    seconds, _ = timed(pull_batches)
    return batches * batch_size / seconds


def timed_fit(model, dataset, warmup: int, steps: int) -> float:
    """Seconds per step over ``steps`` steps of ``model.fit``, after ``warmup`` steps."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == warmup:
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.elapsed = time.perf_counter() - self.start

    timer = StepTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
    return timer.elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per (precision, input)")
    parser.add_argument("--output", help="also write the markdown report here")
    args = parser.parse_args()

    results: dict[tuple[str, str], list[float]] = {}
    pipeline_alone: list[float] = []
    batch_size = 0
    with tempfile.TemporaryDirectory() as data_dir:
        for precision in ("float32", "bf16"):
            model, datasets, batch_size = make_model_and_data(precision, data_dir)
            for _ in range(2):
                pipeline_alone.append(pipeline_images_per_second(datasets[REAL], batch_size))
                print(f"ORL pipeline alone: {pipeline_alone[-1]:7.0f} images/s", flush=True)

            def fit_on(dataset):
                return lambda: timed_fit(model, dataset, args.warmup, args.steps)

            def print_run(round_index: int, name: str, seconds: float) -> None:
                print(f"{precision:8s} {name:18s} run {round_index + 1}: {batch_size / seconds:7.1f} images/s", flush=True)

            runs = abba_rounds({name: fit_on(dataset) for name, dataset in datasets.items()}, args.repeats, report=print_run)
            results.update({(precision, name): seconds for name, seconds in runs.items()})

    lines = [
        "## Training-throughput benchmark",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `.venv/bin/python scripts/bench_train.py --steps {args.steps} "
        f"--repeats {args.repeats}` - {os.cpu_count()} CPU cores; from-scratch training model of configs/scratch.toml "
        f"(batch-hard triplet loss + classification term) and its augmentation, batch {batch_size}; {args.repeats} alternating runs (ABBA order) of "
        f"{args.steps} steps after {args.warmup} warm-up steps; medians. The pipeline's cost is measured against "
        f"*{MEMORY}*: {MEMORY_BATCHES} of the pipeline's own batches computed before timing and cycled from memory.",
        "",
    ]
    rows, verdicts = [], []
    for precision in ("float32", "bf16"):
        reference = results[(precision, MEMORY)]
        for name in (MEMORY, REAL, ONE_BATCH):
            runs = results[(precision, name)]
            # each repeat ran the inputs back to back: their ratio is free of the slow drift
            paired = statistics.median(run / base - 1 for run, base in zip(runs, reference))
            cost = statistics.median(runs) / statistics.median(reference) - 1
            costs = ["", ""] if name == MEMORY else [f"{cost:+.1%}", f"{paired:+.1%}"]
            rows.append([precision, name, f"{batch_size / statistics.median(runs):.1f}",
                         ", ".join(f"{batch_size / run:.1f}" for run in runs), *costs])
            if name == REAL:
                verdicts.append(f"{'PASS' if paired <= 0.05 else 'FAIL'}  {precision}: the ORL pipeline costs {paired:+.1%} "
                                f"(median of paired runs; ratio of medians {cost:+.1%}; target <= 5%)")
    lines += markdown_table(["precision", "input", "images/s (median)", "runs (images/s)",
                             f"vs {MEMORY}: ratio of medians", f"vs {MEMORY}: median of paired runs"], rows, "llrlrr")
    speedup = statistics.median(results[("float32", MEMORY)]) / statistics.median(results[("bf16", MEMORY)])
    lines += ["", f"The ORL pipeline alone (no model, the recipe's augmentation) delivers "
                  f"{statistics.median(pipeline_alone):,.0f} images/s (runs: {', '.join(f'{run:,.0f}' for run in pipeline_alone)})."]
    lines += ["", f"bf16 is {speedup:.2f}x the float32 speed on {MEMORY}.", "", "```", *verdicts, "```", ""]
    report = "\n".join(lines)
    print(report)
    write_report(args.output, report)


if __name__ == "__main__":
    main()
