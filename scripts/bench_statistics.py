"""The batch statistics in a training step: four metrics, each asking for all four statistics, against one call.

Reproduce::

    .venv/bin/python scripts/bench_statistics.py --output docs/reports/bench_statistics.md

:func:`facetrip.losses.triplet_metrics` gives four Keras metrics, and each calls
:func:`facetrip.losses.triplet_batch_statistics` (a distance matrix, masks, hardest
distances) and keeps its own value. Inside a compiled step TensorFlow's graph optimizer
merges identical subgraphs, so the question is what the four calls cost at run time.
For each batch size B (P x 4 labels, 128-D unit embeddings, margin 0.2, euclidean) it times,
in alternating (ABBA) rounds, the median milliseconds of:

- ``four calls``: the four statistics taken from four calls, in one ``tf.function``;
- ``one call``: the four taken from one call;
- a step of the training model (:class:`~facetrip.training.embedding_trainer.EmbeddingTrainer`
  on a one-layer embedder, batch-hard loss) with the four metrics each computing the
  statistics (``update_state``), with the statistics computed once for all four
  (``update_statistics``, what training does), and with no metrics.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarking import abba_order, import_tensorflow_quietly, markdown_table, write_report  # noqa: E402


def median_milliseconds(functions: dict, rounds: int, calls: int) -> dict[str, float]:
    """Median over ``rounds`` ABBA rounds of the mean time of ``calls`` calls of each function."""
    times = {name: [] for name in functions}
    for function in functions.values():
        function()  # traced once, before timing
    for round_index in range(rounds):
        for name in abba_order(list(functions), round_index):
            started = time.perf_counter()
            for _ in range(calls):
                functions[name]()
            times[name].append((time.perf_counter() - started) / calls * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    tf = import_tensorflow_quietly()
    import keras

    from facetrip.losses import STATISTICS, TripletLoss, triplet_batch_statistics, triplet_metrics
    from facetrip.training.embedding_trainer import EmbeddingTrainer

    rows = []
    for size in args.sizes:
        rng = np.random.default_rng(0)
        embeddings = rng.normal(size=(size, 128)).astype(np.float32)
        embeddings = tf.constant(embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True))
        labels = tf.constant(np.repeat(np.arange(size // 4), 4))

        @tf.function
        def four_calls():
            return [triplet_batch_statistics(labels, embeddings, margin=0.2)[name] for name in STATISTICS]

        @tf.function
        def one_call():
            values = triplet_batch_statistics(labels, embeddings, margin=0.2)
            return [values[name] for name in STATISTICS]

        images = tf.constant(rng.random((size, 32)).astype(np.float32))

        class EachMetricComputes(EmbeddingTrainer):  # each metric computes all the statistics itself
            def update_statistics(self, labels, embeddings):
                for statistic in self.statistics:
                    statistic.update_state(labels, embeddings)

        def trainer(with_statistics: bool, model_class=EmbeddingTrainer):
            keras.utils.set_random_seed(0)
            inputs = keras.Input((32,))
            embedder = keras.Model(inputs, keras.layers.UnitNormalization()(keras.layers.Dense(128)(inputs)))
            model = model_class(embedder, np.arange(size // 4), TripletLoss("batch_hard", 0.2),
                                statistics=triplet_metrics(0.2) if with_statistics else ())
            model.compile(optimizer=keras.optimizers.SGD(0.01))
            return lambda: model.train_on_batch(images, labels)

        timed = median_milliseconds({"four calls": four_calls, "one call": one_call,
                                     "step, each metric computes": trainer(True, EachMetricComputes),
                                     "step, computed once": trainer(True), "step, no metrics": trainer(False)},
                                    args.rounds, args.calls)
        each, once, none = (timed["step, each metric computes"], timed["step, computed once"],
                            timed["step, no metrics"])
        rows.append([size, f"{timed['four calls']:.3f}", f"{timed['one call']:.3f}", f"{each:.2f}", f"{once:.2f}",
                     f"{none:.2f}", f"{once / each:.2f}"])
        print(rows[-1], flush=True)
    lines = ["# Batch statistics in a training step", "", f"`{' '.join(['scripts/bench_statistics.py', *sys.argv[1:]])}`",
             "", *markdown_table(["B", "four calls (ms)", "one call (ms)", "step, each metric computes (ms)",
                                  "step, computed once (ms)", "step, no metrics (ms)", "once / each"], rows,
                                 "rrrrrrr")]
    text = "\n".join(lines) + "\n"
    print(text)
    write_report(args.output, text)


if __name__ == "__main__":
    main()
