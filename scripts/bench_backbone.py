"""Benchmark the Keras face ResNet against dlib's own, on the same chips.

Reproduce (from the repository root)::

    .venv/bin/python scripts/bench_backbone.py --chips 256 --repeats 5 --output docs/reports/bench_backbone.md
    .venv/bin/python scripts/bench_backbone.py --chips 32 --repeats 2      # smoke test, about a minute

Measured in one process, one thing at a time:

1. Descriptors per second of ``facetrip.models.face_resnet.build_face_resnet()`` (dlib's
   weights) in batches of 32, under the float32 and the mixed_bfloat16 policies, against
   dlib's ``face_recognition_model_v1.compute_face_descriptor`` on the same list of
   aligned chips (its batch overload, dlib's fastest path). The chips are random 8-bit
   150 x 150 x 3 images: both networks cost the same whatever the pixels. The three run
   in ABBA order (A B C, C B A, ...) so that a machine that speeds up or slows down
   during the run favours none of them; each row reports the median over the repeats and
   its ratio to dlib.
2. Training images per second: forward, backward and an Adam update of the whole network
   (full fine-tuning, float32), batch 32, in a compiled ``tf.function``.

Each contender runs once untimed first (tracing, dlib's allocation). The report (markdown)
goes to stdout and ``--output``; progress goes to stderr.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

import argparse
import datetime
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarking import REPO_ROOT, abba_rounds, log, markdown_table, ratio_cell, timed, write_report

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

BATCH_SIZE = 32
LEARNING_RATE = 1e-4
COMMAND = ".venv/bin/python scripts/bench_backbone.py"


@dataclass
class Row:
    """One line of the report: a contender's throughput over the repeats."""

    name: str
    unit: str  # what is counted per second
    per_second: list[float] = field(default_factory=list)
    compared_to_dlib: bool = True

    @property
    def median(self) -> float:
        return statistics.median(self.per_second)


def random_chips(count: int, seed: int = 0) -> np.ndarray:
    """(count, 150, 150, 3) uint8 chips."""
    from facetrip.models.face_resnet import FACE_CHIP_SIZE

    return np.random.default_rng(seed).integers(0, 256, (count, FACE_CHIP_SIZE, FACE_CHIP_SIZE, 3), dtype=np.uint8)


def model_input_batches(chips: np.ndarray) -> list:
    """uint8 chips -> the model's float32 input in [0, 1], as (BATCH_SIZE, 150, 150, 3) tensors."""
    import tensorflow as tf

    starts = range(0, len(chips), BATCH_SIZE)
    return [tf.constant(chips[start : start + BATCH_SIZE].astype(np.float32) / 255.0) for start in starts]


# ============================================================================ contenders


def keras_descriptor_pass(policy: str, chips: np.ndarray) -> Callable[[], None]:
    """A pass of the Keras network over all chips, in batches, under a dtype policy."""
    import keras
    import tensorflow as tf

    from facetrip.models.face_resnet import build_face_resnet

    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_face_resnet()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    forward = tf.function(lambda batch: model(batch, training=False), jit_compile=False)
    batches = model_input_batches(chips)

    def run() -> None:
        for batch in batches:
            forward(batch).numpy()

    return run


def dlib_descriptor_pass(chips: np.ndarray) -> Callable[[], None]:
    """dlib's descriptors of all chips, through its batch overload (main thread only)."""
    import dlib

    from facetrip.models.face_resnet import face_resnet_weights_path

    recogniser = dlib.face_recognition_model_v1(str(face_resnet_weights_path()))
    chip_list = [np.ascontiguousarray(chip) for chip in chips]

    def run() -> None:
        recogniser.compute_face_descriptor(chip_list)

    return run


def keras_training_pass(chips: np.ndarray) -> Callable[[], None]:
    """Training steps (forward, backward, Adam) over all chips, float32, nothing frozen."""
    import keras
    import tensorflow as tf

    from facetrip.models.face_resnet import DESCRIPTOR_DIM, build_face_resnet

    model = build_face_resnet()
    optimizer = keras.optimizers.Adam(learning_rate=LEARNING_RATE)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(batch, target):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(batch, training=True) - target))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    batches = model_input_batches(chips)
    target = tf.zeros((BATCH_SIZE, DESCRIPTOR_DIM))

    def run() -> None:
        for batch in batches:
            step(batch, target[: len(batch)]).numpy()

    return run


# ========================================================================== measurement


def abba_rates(contenders: dict[str, Callable[[], None]], items: int, repeats: int) -> dict[str, list[float]]:
    """Items per second of each contender's pass, over ``repeats`` rounds in ABBA order, after one untimed pass each."""

    def rate_of(work: Callable[[], None]) -> Callable[[], float]:
        return lambda: items / timed(work)[0]

    def report(round_index: int, name: str, rate: float) -> None:
        log(f"  round {round_index + 1}/{repeats}  {name}: {rate:.1f}/s")

    return abba_rounds({name: rate_of(work) for name, work in contenders.items()}, repeats, warmup=True, report=report)


def descriptor_rows(chips: np.ndarray, repeats: int) -> list[Row]:
    log(f"descriptors: {len(chips)} chips, {repeats} ABBA rounds")
    contenders = {
        f"Keras face ResNet, float32, batch {BATCH_SIZE}": keras_descriptor_pass("float32", chips),
        f"Keras face ResNet, mixed_bfloat16, batch {BATCH_SIZE}": keras_descriptor_pass("mixed_bfloat16", chips),
        "dlib compute_face_descriptor (batch overload)": dlib_descriptor_pass(chips),
    }
    rates = abba_rates(contenders, len(chips), repeats)
    return [Row(name, "chips/s", per_second) for name, per_second in rates.items()]


def training_rows(chips: np.ndarray, repeats: int) -> list[Row]:
    log(f"training: {len(chips)} chips, {repeats} rounds")
    name = f"Keras face ResNet training (forward + backward + Adam), float32, batch {BATCH_SIZE}"
    rates = abba_rates({name: keras_training_pass(chips)}, len(chips), repeats)
    return [Row(name, "images/s", rates[name], compared_to_dlib=False)]


# ------------------------------------------------------------------- end-to-end rows

SHARED_DATA = Path(os.environ.get("FACETRIP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def lfw_photos(count: int) -> list[Path]:
    """``count`` LFW photos spread over the whole set (every k-th of the sorted files), or [] without LFW."""
    images = SHARED_DATA / "lfw" / "images"
    if not images.is_dir():
        return []
    paths = sorted(images.glob("*/*.jpg"))
    return paths[:: max(1, len(paths) // count)][:count]


def facetrip_embed_pass(paths: list[Path], cold_cache: bool) -> Callable[[], None]:
    """What ``facetrip embed PHOTOS`` does after loading the run: photos -> face chips -> network (with flip TTA).

    With ``cold_cache`` every round starts from an empty chip cache (detection, landmarks
    and chips are computed, in worker processes as the product does for many photos).
    """
    import tempfile

    from facetrip.data import chip_cache, face_chips
    from facetrip.data.sources import FaceImages
    from facetrip.data.model_input import decode_inputs
    from facetrip.models.face_embedder import build_face_embedder
    from facetrip.models.tta import with_flip_averaging

    model = with_flip_averaging(build_face_embedder())
    faces = FaceImages(encoded=np.asarray([path.read_bytes() for path in paths], dtype=object),
                       labels=np.zeros(len(paths), np.int64), identity_names=["lfw"],
                       file_names=np.asarray([path.name for path in paths]), channels=3, source="lfw")

    def run() -> None:
        if cold_cache:
            os.environ["FACETRIP_CACHE_DIR"] = tempfile.mkdtemp(prefix="facetrip-bench-chips-")
            chip_cache._memo.clear()
        chips, _ = face_chips.chip_faces(faces)
        inputs = decode_inputs(list(chips.encoded), (150, 150), 3)  # (N, 150, 150, 3)
        model.predict(inputs, batch_size=BATCH_SIZE, verbose=0)

    return run


def dlib_photo_pass(paths: list[Path]) -> Callable[[], None]:
    """dlib's own pipeline on the same photos: HOG detector (upsampling 1), 5 landmarks, compute_face_descriptor."""
    import dlib
    import face_recognition_models
    from PIL import Image

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    recogniser = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    def run() -> None:
        for path in paths:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            faces = detector(rgb, 1)
            box = max(faces, key=lambda face: face.area()) if len(faces) else dlib.rectangle(0, 0, rgb.shape[1] - 1,
                                                                                          rgb.shape[0] - 1)
            recogniser.compute_face_descriptor(rgb, predictor(rgb, box))

    return run


def end_to_end_rows(photo_count: int, repeats: int) -> list[Row]:
    """Photos/s from photo files to descriptors: facetrip's path (cold and warm chip cache) vs dlib's pipeline."""
    paths = lfw_photos(photo_count)
    if not paths:
        log(f"end to end: skipped, no LFW photos in {SHARED_DATA / 'lfw'}")
        return []
    log(f"end to end: {len(paths)} LFW photos, {repeats} ABBA rounds")
    contenders = {
        f"facetrip embed path, cold chip cache: photos -> chips -> Keras network with flip ({len(paths)} LFW photos)":
            facetrip_embed_pass(paths, cold_cache=True),
        "facetrip embed path, chips cached": facetrip_embed_pass(paths, cold_cache=False),
        "dlib pipeline: detector + landmarks + compute_face_descriptor (no flip)": dlib_photo_pass(paths),
    }
    rates = abba_rates(contenders, len(paths), repeats)
    return [Row(name, "photos/s", per_second) for name, per_second in rates.items()]


# ================================================================================ report


def render(rows: list[Row], chips: int, repeats: int, photos: int = 0) -> str:
    import dlib
    import keras
    import tensorflow as tf

    def dlib_median_of(unit: str):
        medians = [row.median for row in rows if row.name.startswith("dlib") and row.unit == unit]
        return medians[0] if medians else None

    photos_flag = f" --photos {photos}" if photos else ""
    lines = [
        "# Face ResNet: Keras vs dlib",
        "",
        f"{datetime.date.today().isoformat()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, dlib {dlib.__version__}. "
        f"{chips} random 150 x 150 chips, {repeats} rounds (ABBA order), median per row.",
        f"Command: `{COMMAND} --chips {chips} --repeats {repeats}{photos_flag}`",
        "",
    ]
    cells = []
    for row in rows:
        dlib_median = dlib_median_of(row.unit)
        ratio = ratio_cell(row.median, dlib_median) if row.compared_to_dlib and dlib_median else "-"
        runs = ", ".join(f"{rate:.1f}" for rate in row.per_second)
        cells.append([row.name, f"{row.median:.1f} {row.unit}", runs, ratio])
    lines += markdown_table(["measurement", "median", "runs", "vs dlib"], cells, "lrlr")
    return "\n".join(lines) + "\n"


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", type=int, default=256, help="chips per timed pass (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per contender (default 5)")
    parser.add_argument("--photos", type=int, default=128, help="LFW photos of the end-to-end rows (default 128; 0 skips them)")
    parser.add_argument("--output", type=Path, help="also write the markdown report to this file")
    arguments = parser.parse_args(argv)
    if arguments.chips < 1 or arguments.repeats < 1:
        parser.error("--chips and --repeats must be at least 1")
    return arguments


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    chips = random_chips(arguments.chips)
    rows = descriptor_rows(chips, arguments.repeats)
    rows += training_rows(chips, arguments.repeats)
    if arguments.photos > 0:
        rows += end_to_end_rows(arguments.photos, arguments.repeats)
    report = render(rows, arguments.chips, arguments.repeats, arguments.photos)
    print(report)
    write_report(arguments.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
