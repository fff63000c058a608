"""Benchmark training under MirroredStrategy with 1, 2 and 4 logical CPU replicas, and the all-gather's cost.

Reproduce (from the repository root; about a minute on 2 CPU cores)::

    .venv/bin/python scripts/bench_distributed.py --output docs/reports/bench_distributed.md
    .venv/bin/python scripts/bench_distributed.py --replicas 1 2 --steps 10   # quick check

For every replica count R a fresh worker process (this script, re-invoked with
``--worker R``; the CPU must be split before TensorFlow sets up its devices) builds the
from-scratch ResNet of ``tests/tiny.toml`` (width 8, 32 x 32 grey input, 64-D
embeddings) and its trainer under ``MirroredStrategy`` on R logical CPU devices, and
times global steps (``strategy.run`` of the trainer's replica step, batch-hard mined over
the global batch, the classification term, an AdamW update) on one fixed P x K = 16 x 4
batch: one warm-up step that traces, then N timed steps; median reported. It also times
the gather alone: ``all_gather`` of each replica's (64 / R, 64) embeddings and labels
inside ``strategy.run``, the collective that global-batch mining adds to a step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from benchmarking import log, markdown_table, report_from_worker, run_worker, timed_repeats, write_report

IDENTITIES, IMAGES_PER_IDENTITY, IMAGE_SIZE, EMBEDDING_DIM = 16, 4, (32, 32), 64


def measure(replicas: int, steps: int) -> dict:
    """Worker: median seconds of a global training step and of the all-gather alone, on ``replicas`` devices."""
    from benchmarking import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    from facetrip.training.distribute import create_strategy, replica_step_function

    strategy = create_strategy("mirrored", replicas)
    import keras
    import numpy as np

    from facetrip.losses import TripletLoss, triplet_metrics
    from facetrip.models import build_embedding_model
    from facetrip.training.embedding_trainer import EmbeddingTrainer

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    batch_size = IDENTITIES * IMAGES_PER_IDENTITY
    images = rng.random((batch_size, *IMAGE_SIZE, 1), np.float32)
    labels = np.repeat(np.arange(IDENTITIES), IMAGES_PER_IDENTITY).astype(np.int64)
    with strategy.scope():
        model = build_embedding_model(input_shape=(*IMAGE_SIZE, 1), embedding_dim=EMBEDDING_DIM,
                                      backbone="resnet_small", width=8, dropout=0.0, head="pool", freeze="none")
        trainer = EmbeddingTrainer(model, np.arange(IDENTITIES), TripletLoss("batch_hard"),
                                   statistics=triplet_metrics(), classification_weight=1.0)
        trainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
        trainer.optimizer.build(trainer.trainable_variables)
        trainer.set_epoch(0)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    batches = iter(strategy.experimental_distribute_dataset(dataset))
    batch = next(batches)
    step = replica_step_function(strategy, trainer)
    step_times, _ = timed_repeats(lambda: float(step(batch)["loss"]), steps, warmup=1)

    embeddings = strategy.experimental_distribute_values_from_function(
        lambda context: tf.random.normal((batch_size // replicas, EMBEDDING_DIM)))

    @tf.function
    def gather(local_embeddings, local_labels):
        def replica(values, names):
            context = tf.distribute.get_replica_context()
            return (tf.reduce_sum(context.all_gather(tf.identity(values), axis=0))
                    + tf.cast(tf.reduce_sum(context.all_gather(tf.identity(names), axis=0)), tf.float32))
        return strategy.experimental_local_results(strategy.run(replica, args=(local_embeddings, local_labels)))[0]

    gather_times, _ = timed_repeats(lambda: float(gather(embeddings, batch[1])), steps * 5, warmup=1)
    return {"step_s": statistics.median(step_times), "gather_s": statistics.median(gather_times),
            "replicas_in_sync": strategy.num_replicas_in_sync}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=30, help="timed global steps per replica count")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per worker")
    parser.add_argument("--output", type=Path, help="markdown report to write")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker is not None:
        report_from_worker(lambda: measure(arguments.worker, arguments.steps), {"replicas": arguments.worker})
        return

    rows, reference = [], None
    for replicas in arguments.replicas:
        log(f"{replicas} replica(s) ...")
        run = run_worker(__file__, ["--worker", str(replicas), "--steps", str(arguments.steps)], arguments.timeout)
        result = run.result
        if not result or not result.get("ok"):
            rows.append([replicas, "failed: " + (result or {}).get("error", run.exit_reason()), None, None, None])
            continue
        steps_per_second = 1.0 / result["step_s"]
        reference = reference or steps_per_second
        rows.append([replicas, f"{steps_per_second:.2f}", f"{steps_per_second * IDENTITIES * IMAGES_PER_IDENTITY:.0f}",
                     f"{steps_per_second / reference:.2f}x", f"{1000 * result['gather_s']:.2f} ms"])
    header = ["replicas", "global steps/s", "images/s", "vs first", "all-gather per step"]
    command = "python scripts/bench_distributed.py " + " ".join(sys.argv[1:])
    text = "\n".join([f"# Distributed training on logical CPU devices\n", f"`{command}`\n",
                      *markdown_table(header, rows, "rrrrr"), ""])
    print(text)
    write_report(arguments.output, text)


if __name__ == "__main__":
    main()
