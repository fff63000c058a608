"""Training throughput of the default model: the real ORL pipeline vs in-memory tensors, float32 vs bf16.

Reproduce with::

    .venv/bin/python scripts/bench_train.py --output docs/bench_train.md

For each precision the same default model (``facetrip.model.build_embedding_model`` with
the defaults of ``facetrip.config``) is trained with ``model.fit`` and
``TripletLoss("batch_hard")`` on (a) P x K batches from ``pk_dataset`` over ORL with the
default augmentation, and (b) one fixed in-memory batch of the same shape repeated, so
the difference is what the input pipeline costs. Runs alternate (synthetic, ORL,
synthetic, ORL, ...) because this machine's speed swings over minutes; each run times
``--steps`` steps after ``--warmup`` warm-up steps. The offline-mining part of the
benchmark lives in ``scripts/bench_mining.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_model_and_data(precision: str, data_dir: str):
    import keras
    import tensorflow as tf

    from facetrip.config import Config
    from facetrip.data import Augmentation, PKSampler, load_faces, pk_dataset, split_identities
    from facetrip.losses import TripletLoss
    from facetrip.model import build_embedding_model

    config = Config()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    keras.utils.set_random_seed(0)
    model = build_embedding_model(
        input_shape=(*config.data.image_size, config.data.channels),
        embedding_dim=config.model.embedding_dim,
        width=config.model.width,
    )
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=TripletLoss("batch_hard", 0.2))
    keras.mixed_precision.set_global_policy("float32")

    faces = load_faces("orl_faces", data_dir=data_dir)
    split = split_identities(faces.identity_names, dev=config.split.dev, test=config.split.test, seed=0)
    train_faces = faces.restricted_to(split.train)
    sampler = PKSampler(train_faces.labels, config.sampler.identities_per_batch, config.sampler.images_per_identity, seed=0)
    real = pk_dataset(train_faces, sampler, tuple(config.data.image_size), config.data.channels,
                      epochs=range(10_000), augmentation=Augmentation())
    images, labels = next(iter(real))
    synthetic = tf.data.Dataset.from_tensors((images, labels)).repeat()
    return model, {"ORL pipeline": real, "in-memory tensors": synthetic}, sampler.batch_size


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
    batch_size = 0
    with tempfile.TemporaryDirectory() as data_dir:
        for precision in ("float32", "bf16"):
            model, datasets, batch_size = make_model_and_data(precision, data_dir)
            for repeat in range(args.repeats):
                for name, dataset in datasets.items():
                    seconds = timed_fit(model, dataset, args.warmup, args.steps)
                    results.setdefault((precision, name), []).append(seconds)
                    print(f"{precision:8s} {name:18s} run {repeat + 1}: {batch_size / seconds:7.1f} images/s", flush=True)

    lines = [
        "## Training-throughput benchmark",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `.venv/bin/python scripts/bench_train.py` - {os.cpu_count()} CPU cores; "
        f"default model and config, batch {batch_size}, batch_hard; {args.repeats} alternating runs of {args.steps} steps "
        f"after {args.warmup} warm-up steps; medians.",
        "",
        "| precision | input | images/s (median) | runs (images/s) | pipeline cost vs in-memory |",
        "|---|---|---:|---|---:|",
    ]
    verdicts = []
    for precision in ("float32", "bf16"):
        memory = statistics.median(results[(precision, "in-memory tensors")])
        for name in ("in-memory tensors", "ORL pipeline"):
            runs = results[(precision, name)]
            cost = statistics.median(runs) / memory - 1
            lines.append(
                f"| {precision} | {name} | {batch_size / statistics.median(runs):.1f} | "
                f"{', '.join(f'{batch_size / run:.1f}' for run in runs)} | {'' if name.startswith('in-memory') else f'{cost:+.1%}'} |"
            )
            if name == "ORL pipeline":
                verdicts.append(f"{'PASS' if cost <= 0.05 else 'FAIL'}  {precision}: the ORL pipeline costs {cost:+.1%} (target <= 5%)")
    speedup = statistics.median(results[("float32", "in-memory tensors")]) / statistics.median(results[("bf16", "in-memory tensors")])
    lines += ["", f"bf16 is {speedup:.2f}x the float32 speed on in-memory tensors.", "", "```", *verdicts, "```", ""]
    report = "\n".join(lines)
    print(report)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(report)


if __name__ == "__main__":
    main()
