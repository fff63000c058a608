"""Benchmark the P x K data pipeline against the training step it has to feed.

Reproduce (from the repository root; about 3 minutes on 2 idle CPU cores, up to about 10
when other processes keep the machine busy)::

    .venv/bin/python scripts/bench_data.py --output docs/reports/bench_data.md
    .venv/bin/python scripts/bench_data.py --quick                      # smoke test, about 1 minute

Everything runs in one process, one measurement after the other (never two at once),
with tfds writing into a temporary ``data_dir`` (nothing lands in ~/tensorflow_datasets):

1. Pipeline throughput: ``pk_dataset`` with P = 16, K = 4 (batch 64) at 32 x 26 x 1 (the
   from-scratch input), augmentation off and on (configs/scratch.toml: flip, shift, brightness,
   contrast, rotation, random erasing), on ORL
   (``load_faces("orl_faces")``, 6 batches an epoch, so ``epochs=range(N)``) and on a
   synthetic folder (5,000 identities x 4 JPEGs of 32 x 32, written with PIL and loaded
   with ``load_faces("folder:TMP")``; the time to prepare it through tfds is reported).
   Each run builds a fresh dataset, drops its first batches (warm-up) and times the
   rest: batches/s and images/s, median of the runs.
2. Training step: the from-scratch embedding model (``facetrip.models.resnet.build_embedding_model``
   with configs/scratch.toml's model settings), batch 64, one
   ``tf.function`` step of batch-hard triplet loss (margin 0.2) and Adam, float32,
   median of the timed steps after warm-up.
3. Ratio: pipeline batches/s over model steps/s; target >= 10x (PASS / FAIL).
4. Host-side index generation: ``PKSampler`` construction and ``epoch(0)`` for 100,000
   identities (1 to 20 images each, and exactly 10 each = 1M images); target < 5 s.

The machine may be shared: the script waits for other processes to go quiet before each
measurement, repeats measurements they disturbed, and reports their CPU use. The report
(markdown) goes to stdout and ``--output``; progress goes to stderr. Exit status 1 when a
target FAILs.
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # before TensorFlow is imported anywhere

import argparse
import contextlib
import datetime
import gc
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarking import (REPO_ROOT, QuietWaiter, add_quiet_machine_arguments, import_tensorflow_quietly, log,
                          markdown_table, ratio_cell, run_quietly, timed, timed_repeats, write_report)

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

IDENTITIES_PER_BATCH = 16  # P
IMAGES_PER_IDENTITY = 4  # K
BATCH_SIZE = IDENTITIES_PER_BATCH * IMAGES_PER_IDENTITY
SCRATCH_CONFIG = REPO_ROOT / "configs" / "scratch.toml"  # the from-scratch recipe (a learned backbone)
IMAGE_SIZE = (32, 26)  # its input (data.image_size of configs/scratch.toml)
CHANNELS = 1
MARGIN = 0.2
RATIO_TARGET = 10.0
SAMPLER_TARGET_SECONDS = 5.0
COMMAND = ".venv/bin/python scripts/bench_data.py --output docs/reports/bench_data.md"


# ================================================================================= results


@dataclass
class PipelineResult:
    """Throughput of one (source, augmentation) pair over several runs."""

    source: str
    augmentation: bool
    batches_per_epoch: int
    epochs: int
    batches_timed: int
    batches_per_second: list[float] = field(default_factory=list)
    first_batch_seconds: list[float] = field(default_factory=list)
    other_load: list[float] = field(default_factory=list)  # cores used by other processes, per run

    @property
    def median_batches_per_second(self) -> float:
        return statistics.median(self.batches_per_second)

    @property
    def median_images_per_second(self) -> float:
        return self.median_batches_per_second * BATCH_SIZE


@dataclass
class SourceInfo:
    """A loaded source and what it took to get it."""

    name: str
    faces: object
    prepare_seconds: float  # first load_faces: tfds prepare + read back
    reload_seconds: float | None = None  # second load_faces: already prepared
    generate_seconds: float | None = None  # writing the synthetic images


@dataclass
class ModelResult:
    """Timed training steps of one model."""

    name: str
    parameters: int
    input_shape: tuple
    step_seconds: list[float]
    other_load: float | None = None

    @property
    def median_step(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def steps_per_second(self) -> float:
        return 1.0 / self.median_step


@dataclass
class SamplerResult:
    """PKSampler timings for one label distribution."""

    case: str
    identities: int
    images: int
    usable_identities: int
    left_out: int
    batches_per_epoch: int
    construct_seconds: list[float]
    epoch_seconds: list[float]
    coverage: float  # distinct usable images in epoch(0) / usable images

    @property
    def total_median(self) -> float:
        return statistics.median(self.construct_seconds) + statistics.median(self.epoch_seconds)


# =============================================================================== set-up


def write_synthetic_folder(root: Path, identities: int, images_per_identity: int, size: int, seed: int = 0) -> int:
    """Write ``root/idNNNNN/K.jpg``: RGB JPEGs of ``size`` x ``size``, smooth random faces-ish blobs.

    Each identity gets a random low-resolution base pattern; its images are that pattern
    upsampled plus per-image noise, so JPEG sizes are realistic (not pure noise). Returns
    the number of images written.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    count = 0
    for identity in range(identities):
        folder = root / f"id{identity:05d}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(base).resize((size, size), Image.BILINEAR), np.int16)  # (size, size, 3)
        for index in range(images_per_identity):
            noise = rng.integers(-20, 21, base.shape, dtype=np.int16)
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{index}.jpg", quality=90)
            count += 1
    return count


def load_source(source: str, data_dir: str, reload: bool = False) -> SourceInfo:
    """``load_faces(source)`` timed; with ``reload`` a second, already-prepared load is timed too."""
    from facetrip.data import load_faces

    with contextlib.redirect_stdout(sys.stderr):  # tfds prints "Downloading and preparing ..." to stdout
        prepare, faces = timed(lambda: load_faces(source, data_dir=data_dir))
        reload_seconds = None
        if reload:
            reload_seconds, faces = timed(lambda: load_faces(source, data_dir=data_dir))
    return SourceInfo(source, faces, prepare, reload_seconds)


# ============================================================================ measurements


def check_batch(images: np.ndarray, labels: np.ndarray) -> None:
    """Sanity check of one P x K batch: shape, range, and P distinct identities of K images each."""
    if images.shape != (BATCH_SIZE, *IMAGE_SIZE, CHANNELS) or not (0.0 <= images.min() and images.max() <= 1.0):
        raise RuntimeError(f"unexpected batch: shape {images.shape}, range [{images.min()}, {images.max()}]")
    groups = labels.reshape(IDENTITIES_PER_BATCH, IMAGES_PER_IDENTITY)  # (P, K)
    if not (groups == groups[:, :1]).all() or len(np.unique(groups[:, 0])) != IDENTITIES_PER_BATCH:
        raise RuntimeError(f"batch is not P x K: labels {labels.tolist()}")


def measure_pipeline(
    info: SourceInfo, augment: bool, repeats: int, min_batches: int, warmup_batches: int, waiter: QuietWaiter
) -> PipelineResult:
    """Iterate fresh ``pk_dataset`` s (one per run) over whole epochs; time all but the first batches.

    Enough epochs are asked for that at least ``min_batches`` batches are timed after the
    ``warmup_batches`` dropped ones. Run r uses sampler seed r.
    """
    from facetrip.data import PKSampler, pk_dataset

    faces = info.faces
    probe = PKSampler(faces.labels, IDENTITIES_PER_BATCH, IMAGES_PER_IDENTITY, seed=0)
    epochs = math.ceil((min_batches + warmup_batches) / probe.batches_per_epoch)
    result = PipelineResult(
        source=info.name,
        augmentation=augment,
        batches_per_epoch=probe.batches_per_epoch,
        epochs=epochs,
        batches_timed=epochs * probe.batches_per_epoch - warmup_batches,
    )
    label = f"{info.name} augmentation={on_off(augment)}"

    def one_run(seed: int) -> tuple[float, float]:
        """(batches/s after the warm-up, seconds to the first batch) of a fresh dataset."""
        sampler = PKSampler(faces.labels, IDENTITIES_PER_BATCH, IMAGES_PER_IDENTITY, seed=seed)
        dataset = pk_dataset(
            faces, sampler, IMAGE_SIZE, CHANNELS, epochs=range(epochs), augmentation=default_augmentation() if augment else None
        )
        start = time.perf_counter()
        first_batch, seen = None, 0
        for seen, (images, labels) in enumerate(dataset, start=1):
            if seen == 1:
                first_batch = time.perf_counter() - start
                check_batch(images.numpy(), labels.numpy())
            if seen == warmup_batches:
                start = time.perf_counter()
        elapsed = time.perf_counter() - start
        timed = seen - warmup_batches
        if timed != result.batches_timed:
            raise RuntimeError(f"{label}: timed {timed} batches, expected {result.batches_timed}")
        del dataset
        gc.collect()
        return timed / elapsed, first_batch

    for run in range(repeats):
        (rate, first_batch), other = run_quietly(lambda: one_run(run), waiter, f"{label} run {run + 1}")
        result.batches_per_second.append(rate)
        result.first_batch_seconds.append(first_batch)
        if other is not None:
            result.other_load.append(other)
        log(f"  {label} run {run + 1}: {rate:.1f} batches/s (other processes: {other if other is not None else float('nan'):.2f} cores)")
    return result


def warm_up_runtime(faces, batches: int = 20) -> None:
    """Pull a few augmented batches once, untimed, so one-off TensorFlow start-up costs (thread pools,
    kernel registration, first decode) do not land in the first measured run."""
    from facetrip.data import PKSampler, pk_dataset

    sampler = PKSampler(faces.labels, IDENTITIES_PER_BATCH, IMAGES_PER_IDENTITY, seed=99)
    epochs = math.ceil(batches / sampler.batches_per_epoch)
    for _ in pk_dataset(faces, sampler, IMAGE_SIZE, CHANNELS, epochs=range(epochs), augmentation=default_augmentation()):
        pass
    gc.collect()


def default_augmentation():
    """The from-scratch recipe's training augmentation (configs/scratch.toml; the pretrained default has none)."""
    from facetrip.config import Config
    from facetrip.training import training_augmentation

    return training_augmentation(Config.from_toml(SCRATCH_CONFIG))


def default_model():
    """``(model, description)``: the embedding model of the from-scratch recipe (configs/scratch.toml)."""
    from facetrip.config import Config
    from facetrip.models import build_embedding_model

    model = Config.from_toml(SCRATCH_CONFIG).model
    return build_embedding_model(
        (*IMAGE_SIZE, CHANNELS), model.embedding_dim, model.backbone, model.width, model.dropout, head=model.head,
    ), f"facetrip.models.resnet.build_embedding_model, configs/scratch.toml (width {model.width}, embedding {model.embedding_dim}, {model.head} head)"


def measure_train_step(steps: int, warmup_steps: int, waiter: QuietWaiter, seed: int = 0) -> ModelResult:
    """Median time of one ``tf.function`` train step (batch-hard loss, Adam) on a fixed random batch."""
    import keras
    import tensorflow as tf

    from facetrip.losses import batch_hard_triplet_loss

    keras.utils.set_random_seed(seed)
    model, description = default_model()
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    shape = tuple(model.input_shape[1:]) if model.input_shape and None not in model.input_shape[1:] else (*IMAGE_SIZE, CHANNELS)
    images = tf.random.stateless_uniform((BATCH_SIZE, *shape), seed=[seed, 1], dtype=tf.float32)
    labels = tf.constant(np.repeat(np.arange(IDENTITIES_PER_BATCH), IMAGES_PER_IDENTITY), tf.int64)

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            embeddings = model(images, training=True)  # (B, D)
            loss = batch_hard_triplet_loss(labels, embeddings, MARGIN)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    def step():
        return train_step(images, labels).numpy()

    timed_repeats(step, 0, warmup=warmup_steps)  # once, not again when run_quietly repeats the timed steps

    def timed_steps() -> list[float]:
        times, loss = timed_repeats(step, steps)
        if not np.isfinite(loss):
            raise RuntimeError(f"train step gave a non-finite loss {loss}")
        return times

    times, other = run_quietly(timed_steps, waiter, "training step")
    log(f"  model: {statistics.median(times):.3f} s/step (other processes: {other if other is not None else float('nan'):.2f} cores)")
    return ModelResult(description, int(model.count_params()), shape, times, other)


def spread_labels(identities: int, low: int, high: int, seed: int = 0) -> np.ndarray:
    """Labels of ``identities`` identities with a seeded uniform number in [low, high] of images each."""
    counts = np.random.default_rng(seed).integers(low, high + 1, identities)
    return np.repeat(np.arange(identities), counts)


def measure_sampler(case: str, labels: np.ndarray, repeats: int) -> SamplerResult:
    """``PKSampler`` construction and ``epoch(0)`` times (each run a fresh sampler), plus epoch coverage."""
    from facetrip.data import PKSampler

    logging.getLogger("facetrip.data.sampler").setLevel(logging.ERROR)  # the left-out warning; counted below
    construct, epoch_times = [], []
    for _ in range(repeats):
        seconds, sampler = timed(lambda: PKSampler(labels, IDENTITIES_PER_BATCH, IMAGES_PER_IDENTITY, seed=0))
        construct.append(seconds)
        seconds, batches = timed(lambda: sampler.epoch(0))
        epoch_times.append(seconds)
    usable_images = int(sampler.group_sizes.sum())
    coverage = len(np.unique(batches)) / usable_images
    log(f"  sampler {case}: construct {statistics.median(construct):.3f} s, epoch(0) {statistics.median(epoch_times):.3f} s")
    return SamplerResult(
        case=case,
        identities=len(np.unique(labels)),
        images=len(labels),
        usable_identities=sampler.num_identities,
        left_out=sampler.num_left_out,
        batches_per_epoch=sampler.batches_per_epoch,
        construct_seconds=construct,
        epoch_seconds=epoch_times,
        coverage=coverage,
    )


# ================================================================================= report


def seconds(value: float | None) -> str:
    """A duration for the tables: 3 decimals below 10 s, 1 above; '' for None."""
    if value is None:
        return ""
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def pass_fail(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


def on_off(augmentation: bool) -> str:
    """The augmentation column: on or off."""
    return "on" if augmentation else "off"


def render_report(args, sources: dict, pipelines: list[PipelineResult], model: ModelResult, samplers: list[SamplerResult]) -> tuple[str, list[str]]:
    """The markdown report and its PASS / FAIL lines."""
    import keras
    import tensorflow as tf

    verdicts = []
    lines = [
        "## Data-pipeline benchmark",
        "",
        f"Measured {datetime.date.today().isoformat()} with `{COMMAND}`"
        + (" (here with `--quick`: reduced sizes, not the reference numbers)" if args.quick else "")
        + f" - TensorFlow {tf.__version__}, Keras {keras.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores, no GPU; tfds data_dir in a temporary folder; "
        f"1-minute load average {args.load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after.",
        "",
        f"P = {IDENTITIES_PER_BATCH} identities x K = {IMAGES_PER_IDENTITY} images = batch {BATCH_SIZE}, "
        f"images {IMAGE_SIZE[0]} x {IMAGE_SIZE[1]} x {CHANNELS}, float32. "
        "**Every measurement ran on its own, sequentially in one process: the pipeline throughput was measured "
        "while nothing else of the benchmark ran (no model, no training step), and the training step while no "
        "pipeline ran.** The machine is shared: before each measurement the script waited until other processes "
        f"used under {args.quiet_threshold:g} cores (at most {args.wait_quiet:g} s in total; it waited {args.waited:.0f} s), "
        f"repeated a measurement during which they used more (at most {args.retries}x each; repeated: {args.repeated}) and kept "
        "the quietest attempt. The *other load* columns give the cores other processes used during each reported "
        "measurement (from /proc/stat minus this process; 0.00 = the machine was ours).",
        "",
        "### Sources",
        "",
        *markdown_table(
            ["source", "images", "identities", "tfds prepare + load (s)", "load again, prepared (s)", "writing the images (s)"],
            [[info.name, f"{len(info.faces):,}", f"{len(info.faces.identity_names):,}", seconds(info.prepare_seconds),
              seconds(info.reload_seconds), seconds(info.generate_seconds)] for info in sources.values()],
            "lrrrrr",
        ),
        "",
        f"Synthetic folder: {args.folder_identities:,} identities x {args.folder_images} RGB JPEGs of "
        f"{args.folder_size} x {args.folder_size} (quality 90, seeded), written with PIL into a temporary folder and "
        f"read with `load_faces(\"folder:TMP\")`; prepare = builder fingerprint + tfds `download_and_prepare` + reading back.",
        "",
        "### 1. Pipeline throughput (`pk_dataset`, measured alone)",
        "",
        f"Each run: a fresh `PKSampler` (seed = run) and `pk_dataset(..., epochs=range(N))`; the first "
        f"{args.warmup_batches} batches are dropped, the rest timed. Median of {args.repeats} runs.",
        "",
        *markdown_table(
            ["source", "augmentation", "batches/epoch", "epochs", "batches timed", "batches/s (median)",
             "images/s (median)", "runs (batches/s)", "first batch (s, median)", "other load (cores, per run)"],
            [[result.source, on_off(result.augmentation), result.batches_per_epoch, result.epochs, result.batches_timed,
              f"{result.median_batches_per_second:.1f}", f"{result.median_images_per_second:,.0f}",
              ", ".join(f"{value:.1f}" for value in result.batches_per_second),
              f"{statistics.median(result.first_batch_seconds):.3f}",
              ", ".join(f"{value:.2f}" for value in result.other_load)] for result in pipelines],
            "llrrrrrlrl",
        ),
        "",
        "### 2. Training step (measured alone)",
        "",
        f"Model: **{model.name}**. "
        f"One `tf.function` step: forward (training=True), `batch_hard_triplet_loss(margin={MARGIN})`, gradients, Adam; "
        f"a fixed random batch of {BATCH_SIZE} x {' x '.join(map(str, model.input_shape))}, float32. "
        f"{args.model_warmup} warm-up steps, median of {args.model_steps}.",
        "",
        *markdown_table(
            ["model", "parameters", "batch", "step median (s)", "step min (s)", "steps/s", "other load (cores)"],
            [["facetrip from-scratch (configs/scratch.toml)", f"{model.parameters:,}", BATCH_SIZE,
              f"{model.median_step:.3f}", f"{min(model.step_seconds):.3f}", f"{model.steps_per_second:.2f}",
              None if model.other_load is None else f"{model.other_load:.2f}"]],
            "lrrrrrr",
        ),
        "",
        f"### 3. Pipeline vs training step (target: the pipeline delivers batches >= {RATIO_TARGET:g}x faster than a step consumes them)",
        "",
        "Ratio = pipeline batches/s (section 1, measured alone) / model steps/s (section 2, measured alone). "
        "Both were measured alone; in training they share the same 2 cores, so the ratio is an upper bound "
        "on the head-room, not a measurement of a concurrent run.",
        "",
    ]
    rows = []
    for result in pipelines:
        ratio = ratio_cell(result.median_batches_per_second, model.steps_per_second, 1)
        verdict = pass_fail(result.median_batches_per_second / model.steps_per_second >= RATIO_TARGET)
        rows.append([result.source, on_off(result.augmentation), f"{result.median_batches_per_second:.1f}",
                     f"{model.steps_per_second:.2f}", ratio, f">= {RATIO_TARGET:g}x", verdict])
        verdicts.append(
            f"{verdict}: pipeline/step ratio {ratio} >= {RATIO_TARGET:g}x "
            f"({result.source}, augmentation {on_off(result.augmentation)})"
        )
    lines += markdown_table(["source", "augmentation", "pipeline batches/s", "model steps/s", "ratio", "target", "result"],
                            rows, "llrrrrl")
    lines += [
        "",
        f"### 4. Host-side index generation (`PKSampler`, target: construction + `epoch(0)` < {SAMPLER_TARGET_SECONDS:g} s)",
        "",
        f"Median of {args.repeats} runs, each a fresh `PKSampler(labels, P={IDENTITIES_PER_BATCH}, K={IMAGES_PER_IDENTITY}, seed=0)`. "
        "Coverage = distinct images in `epoch(0)` / images of usable identities (identities with one image are left out).",
        "",
    ]
    rows = []
    for result in samplers:
        verdict = pass_fail(result.total_median < SAMPLER_TARGET_SECONDS)
        rows.append([result.case, f"{result.identities:,}", f"{result.images:,}", f"{result.usable_identities:,}",
                     f"{result.batches_per_epoch:,}", f"{statistics.median(result.construct_seconds):.3f}",
                     f"{statistics.median(result.epoch_seconds):.3f}", f"{result.total_median:.3f}",
                     f"{result.coverage:.1%}", verdict])
        verdicts.append(f"{verdict}: PKSampler construction + epoch(0) {result.total_median:.2f} s < {SAMPLER_TARGET_SECONDS:g} s ({result.case})")
    lines += markdown_table(["labels", "identities", "images", "usable identities", "batches/epoch", "construction (s)",
                             "epoch(0) (s)", "total (s)", "epoch coverage", "result"], rows, "lrrrrrrrrl")
    lines += ["", "### Verdicts", "", *[f"- {verdict}" for verdict in verdicts]]
    return "\n".join(lines), verdicts


# =================================================================================== main


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks every size for a smoke test."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here (e.g. docs/reports/bench_data.md)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pipeline / sampler measurement (median reported)")
    parser.add_argument("--min-batches", type=int, default=120, help="at least this many batches timed per pipeline run")
    parser.add_argument("--warmup-batches", type=int, default=5, help="batches dropped at the start of each pipeline run")
    parser.add_argument("--model-steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--model-warmup", type=int, default=3, help="untimed training steps first (the first one traces)")
    parser.add_argument("--folder-identities", type=int, default=5000, help="identities in the synthetic folder")
    parser.add_argument("--folder-images", type=int, default=4, help="images per identity in the synthetic folder")
    parser.add_argument("--folder-size", type=int, default=32, help="side of the synthetic JPEGs")
    parser.add_argument("--sampler-identities", type=int, default=100_000, help="identities for the PKSampler timing")
    add_quiet_machine_arguments(parser, threshold=0.25, wait=120.0, wait_scope="in total", retries=2)
    parser.add_argument("--quick", action="store_true", help="smoke test: small sizes, 1 run (numbers not representative)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.min_batches, args.model_steps, args.model_warmup = 1, 20, 3, 1
        args.folder_identities, args.sampler_identities = 200, 10_000
    return args


def main(argv=None) -> int:
    """Run every measurement in order, print the report (and write it with ``--output``)."""
    args = parse_args(argv)
    started = time.perf_counter()
    args.load_before = os.getloadavg()[0]
    import_tensorflow_quietly()

    with tempfile.TemporaryDirectory(prefix="bench_data_") as scratch:
        data_dir = str(Path(scratch) / "tfds")
        folder = Path(scratch) / "faces"

        log("loading ORL through tfds")
        sources = {"orl": load_source("orl_faces", data_dir, reload=True)}

        log(f"writing {args.folder_identities} x {args.folder_images} synthetic JPEGs")
        generate_seconds, _ = timed(
            lambda: write_synthetic_folder(folder, args.folder_identities, args.folder_images, args.folder_size))
        log("preparing the synthetic folder through tfds")
        sources["folder"] = load_source(f"folder:{folder}", data_dir, reload=True)
        sources["folder"].name = f"synthetic folder ({args.folder_identities:,} x {args.folder_images})"
        sources["folder"].generate_seconds = generate_seconds

        warm_up_runtime(sources["orl"].faces)
        waiter = QuietWaiter(args.quiet_threshold, args.wait_quiet, args.retries)
        pipelines = []
        for key in ("orl", "folder"):
            for augment in (False, True):
                log(f"pipeline: {sources[key].name}, augmentation {on_off(augment)}")
                pipelines.append(
                    measure_pipeline(sources[key], augment, args.repeats, args.min_batches, args.warmup_batches, waiter)
                )

    gc.collect()
    log("training step")
    model = measure_train_step(args.model_steps, args.model_warmup, waiter)

    log("PKSampler index generation")
    identities = args.sampler_identities
    samplers = [
        measure_sampler("1-20 images each (uniform, seed 0)", spread_labels(identities, 1, 20), args.repeats),
        measure_sampler("exactly 10 images each", np.repeat(np.arange(identities), 10), args.repeats),
    ]

    args.waited, args.repeated = waiter.waited, waiter.repeated
    report, verdicts = render_report(args, sources, pipelines, model, samplers)
    report += f"\n\nTotal benchmark time: {time.perf_counter() - started:.0f} s.\n"
    print(report)
    if args.output:
        write_report(args.output, report)
        log(f"wrote {args.output}")
    return 0 if all(verdict.startswith("PASS") for verdict in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
