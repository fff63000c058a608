"""Training on prepared face sets at 10^4 .. 10^6 photos: preparation speed, peak memory, time to the first step.

Reproduce with::

    .venv/bin/python scripts/bench_scale.py --sizes 10000 100000 1000000 --workdir /tmp/scale \\
        --output docs/reports/bench_scale.md

For each size the script generates a synthetic set of aligned 150 x 150 JPEG photos, 10
per identity (smooth random faces: each identity a low-resolution pattern, each photo
that pattern with its own noise and shift), both as a folder and as an insightface
RecordIO set (``train.rec`` + ``train.idx``), and measures, each command in its own process:

- ``facetrip prepare`` (``--aligned dlib``: no detection) with 1 and 2 workers, and on
  Apache Beam's local runner: seconds and photos/s per worker;
- ``facetrip train`` of the face network for ``--steps`` steps: peak RSS and the time from
  the process's start to the end of the first training step; again with the triplet loss
  only (no classifier over the training identities, whose state grows with their number);
  and, where the training identities outnumber ``train.classifier_sample``, with the full
  classifier (``train.classifier_sample = 0``) beside the default sampled one;
- ``facetrip embed --data ... --split test``: peak RSS;
- batches/s of the random-access P x K pipeline against the in-memory pipeline (the
  photos' bytes held in a lookup table), at the smallest size, alternating runs.

Peak RSS is the process's own maximum resident set (``/usr/bin/time -v``). With
``--gpu-check`` (scripts/gpu_check.sh) it prepares, then instead of the memory rows
measures the face network's training images/s at ``--batch-size`` in float32 and bf16,
fed from the prepared set and from one batch repeated from memory, and under a mirrored
strategy on one GPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarking import REPO_ROOT, markdown_table, write_report  # noqa: E402

FACETRIP = [sys.executable, "-c", "from facetrip.cli import app; app()"]
PHOTOS_PER_IDENTITY = 10
DEFAULT_SAMPLE_SIZE = 8192  # train.classifier_sample's default (facetrip/config.py)


def synthetic_photo(identity: int, index: int) -> bytes:
    """A 150 x 150 JPEG: the identity's smooth pattern, shifted and with its own noise."""
    import numpy as np
    from PIL import Image

    base = np.random.default_rng(identity).integers(40, 215, (6, 6, 3)).astype(np.uint8)
    pattern = np.asarray(Image.fromarray(base).resize((170, 170), Image.Resampling.BICUBIC), np.int16)
    rng = np.random.default_rng((identity, index))
    top, left = rng.integers(0, 20, 2)
    pixels = pattern[top : top + 150, left : left + 150] + rng.integers(-12, 13, (150, 150, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _numbered_photo(number: int) -> bytes:
    return synthetic_photo(number // PHOTOS_PER_IDENTITY, number % PHOTOS_PER_IDENTITY)


def make_sets(workdir: Path, photos: int) -> tuple[Path, Path]:
    """``(folder, rec folder)`` of ``photos`` synthetic photos, generated once per size (on every core)."""
    from multiprocessing import get_context

    from facetrip.data.recordio_writer import write_record_set

    folder, rec = workdir / f"folder_{photos}", workdir / f"rec_{photos}"
    done = workdir / f".generated_{photos}"
    if done.exists():
        return folder, rec

    def items(pool):
        for number, data in enumerate(pool.imap(_numbered_photo, range(photos), chunksize=256)):
            identity, index = divmod(number, PHOTOS_PER_IDENTITY)
            person = folder / f"p{identity:07d}"
            if index == 0:
                person.mkdir(parents=True, exist_ok=True)
            (person / f"{index}.jpg").write_bytes(data)
            yield float(identity), data

    with get_context("spawn").Pool(os.cpu_count()) as pool:
        write_record_set(rec, items(pool))
    done.touch()
    return folder, rec


def measured(command: list[str], env: dict | None = None) -> dict:
    """Run a command under ``/usr/bin/time -v``: seconds, peak RSS (bytes) and its output."""
    started = time.monotonic()
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, cwd=REPO_ROOT,
                            env={**os.environ, **(env or {})})
    seconds = time.monotonic() - started
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed ({result.returncode}): {result.stderr[-2000:]}")
    return {"seconds": seconds, "peak_rss": int(peak.group(1)) * 1024 if peak else None, "output": result.stdout}


def prepared_seconds(output: str) -> float:
    """The preparation's own seconds (listing and preparing, not Python's and TensorFlow's start) from its table."""
    found = re.search(r"time\W+([\d.]+) s", output)
    if not found:
        raise RuntimeError(f"no time in the output of prepare:\n{output}")
    return float(found.group(1))


def prepare_rows(source: str, rec_source: str, photos: int, workdir: Path, workers: list[int], beam: bool,
                 beam_options: str = "") -> list[dict]:
    """One fresh preparation per way of running it, each in its own process and data dir.

    The folder with each worker count and on Beam's local runner, and the same photos as a
    RecordIO set (``rec:``) with the most workers.
    """
    ways = [(f"folder, {count} worker{'s' if count > 1 else ''}", source, f"w{count}", ["--workers", str(count)], count)
            for count in workers]
    if beam:
        beam_workers = int((re.search(r"direct_num_workers=(\d+)", beam_options) or [0, 1])[1])
        ways.append((f"folder, Beam DirectRunner {beam_options}".strip(), source, "beam",
                     ["--beam-runner", "DirectRunner", "--beam-options", beam_options], beam_workers))
    most = max(workers)
    ways.append((f"rec:, {most} workers", rec_source, f"rec_w{most}", ["--workers", str(most)], most))
    rows = []
    for how, prepared_source, tag, options, processes in ways:
        data_dir = workdir / f"prepared_{photos}_{tag}"
        shutil.rmtree(data_dir, ignore_errors=True)
        run = measured([*FACETRIP, "prepare", prepared_source, "--data-dir", str(data_dir), "--aligned", "dlib",
                        *options])
        seconds = prepared_seconds(run["output"])
        rows.append({"how": how, "seconds": seconds, "command_seconds": run["seconds"],
                     "per_worker": photos / seconds / processes, "peak_rss": run["peak_rss"]})
        if tag != f"w{most}":
            shutil.rmtree(data_dir, ignore_errors=True)  # disk: only the folder's sets are read again
    return rows


TRAIN_PROBE = """
import json, os, sys, time
started = time.monotonic()
import keras
from facetrip.config import Config
from facetrip.training import train
from pathlib import Path
Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
config = Config()
for key, value in json.loads(sys.argv[1]).items():
    config.set(key, value)
if os.environ.get("BENCH_ONE_BATCH_FROM_MEMORY"):  # the same batch again and again: no input pipeline
    import facetrip.data as data
    real_pk_dataset = data.pk_dataset
    def one_batch_repeated(*arguments, **options):
        dataset = real_pk_dataset(*arguments, **options)
        return dataset.take(1).cache().repeat(int(dataset.cardinality()))
    data.pk_dataset = one_batch_repeated
ends = []
class StepTimes(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        ends.append(time.monotonic() - started)
train(config, sys.argv[2], callbacks=[StepTimes()])
steady = (len(ends) - 2) / (ends[-1] - ends[1]) if len(ends) > 2 else None  # steps/s after the first two
print(json.dumps({"first_step_seconds": ends[0] if ends else None, "steps_per_second": steady}))
"""


def train_row(source: str, data_dir: Path, run_dir: Path, steps: int, batch_size: int = 64,
              extra: dict | None = None, env: dict | None = None) -> dict:
    """One ``train`` of the face network for ``steps`` steps: seconds, peak RSS, first step, steady images/s."""
    settings = {"data.source": source, "data.data_dir": str(data_dir), "data.aligned": "dlib", "train.epochs": 1,
                "train.steps_per_epoch": steps, "split.test": 2, "split.dev": 2, "train.stranger_check": "",
                "train.weight_interpolation": 1.0, "sampler.identities_per_batch": batch_size // 4, **(extra or {})}
    shutil.rmtree(run_dir, ignore_errors=True)
    run = measured([sys.executable, "-c", TRAIN_PROBE, json.dumps(settings), str(run_dir)], env=env)
    probe = json.loads(run["output"].strip().splitlines()[-1])
    rate = probe["steps_per_second"]
    return {"seconds": run["seconds"], "peak_rss": run["peak_rss"], "first_step": probe["first_step_seconds"],
            "images_per_second": None if rate is None else rate * batch_size}


def gpu_rows(source: str, data_dir: Path, workdir: Path, steps: int, batch_size: int) -> list[list[str]]:
    """The face network's training images/s on the GPU: float32 and bf16 from the prepared set, one batch
    repeated from memory (no input pipeline), and under a mirrored strategy on one GPU."""
    variants = [("float32, from the prepared set", {"train.precision": "float32"}, None),
                ("bf16, from the prepared set", {"train.precision": "bf16"}, None),
                ("float32, one batch repeated from memory", {"train.precision": "float32"},
                 {"BENCH_ONE_BATCH_FROM_MEMORY": "1"}),
                ("bf16, one batch repeated from memory", {"train.precision": "bf16"}, {"BENCH_ONE_BATCH_FROM_MEMORY": "1"}),
                ("float32, mirrored strategy (1 GPU)", {"train.precision": "float32", "train.distribute": "mirrored"},
                 None)]
    rows = []
    for name, extra, env in variants:
        row = train_row(source, data_dir, workdir / "gpu_run", steps, batch_size, extra, env)
        rate = row["images_per_second"]
        rows.append([name, "-" if rate is None else f"{rate:.0f}", f"{row['first_step']:.1f} s", gib(row["peak_rss"])])
        print(rows[-1], flush=True)
    return rows


def embed_row(run_dir: Path, source: str, data_dir: Path, output: Path) -> dict:
    run = measured([*FACETRIP, "embed", "--run", str(run_dir), "--data", source, "--data-dir", str(data_dir),
                    "--split", "test", "-o", str(output)])
    return {"seconds": run["seconds"], "peak_rss": run["peak_rss"]}


def evaluate_row(run_dir: Path, data_dir: Path, baselines: bool) -> dict:
    """``facetrip evaluate RUN`` on the run's test identities: seconds and peak RSS."""
    run = measured([*FACETRIP, "evaluate", str(run_dir), "--data-dir", str(data_dir),
                    "--baselines" if baselines else "--no-baselines"])
    return {"seconds": run["seconds"], "peak_rss": run["peak_rss"]}


def pipeline_rate(source: str, data_dir: Path, batches: int, repeats: int) -> dict:
    """Batches/s of the random-access pipeline and of the in-memory one over the same photos, alternating."""
    import numpy as np

    from facetrip.data import Augmentation, PKSampler, pk_dataset
    from facetrip.data.records import load_model_faces

    faces, _ = load_model_faces(source, data_dir=str(data_dir), aligned="dlib")
    held = faces.take(np.arange(len(faces)))
    encoded = np.empty(len(faces), dtype=object)
    encoded[:] = list(faces.encoded)  # the same chips, held in memory as today's loader holds photos
    import dataclasses

    held = dataclasses.replace(held, encoded=encoded, file_names=np.asarray([""] * len(faces)), model_input=None)
    sampler = PKSampler(faces.labels, 16, 4, seed=0, steps_per_epoch=batches)
    rates = {"random access": [], "in memory": []}
    for round_index in range(repeats):
        order = ["random access", "in memory"] if round_index % 2 == 0 else ["in memory", "random access"]
        for name in order:
            dataset = pk_dataset(faces if name == "random access" else held, sampler, (150, 150), 3, epochs=1,
                                 augmentation=Augmentation())
            iterator = iter(dataset)
            next(iterator)  # the first batch builds the pipeline
            started = time.monotonic()
            count = sum(1 for _ in iterator)
            rates[name].append(count / (time.monotonic() - started))
    return {name: float(np.median(values)) for name, values in rates.items()}


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, required=True, help="where the synthetic sets and prepared sets go")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-beam", action="store_true", help="skip Beam's local runner")
    parser.add_argument("--beam-options", default="", help="options of Beam's DirectRunner, as prepare takes them")
    parser.add_argument("--steps", type=int, default=50, help="training steps of the face network")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pipeline-batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--memory-only", action="store_true",
                        help="skip the preparation rows and the pipeline rate: the memory rows, read from the "
                             "prepared sets an earlier run left in --workdir (prepared when missing)")
    parser.add_argument("--train-only", action="store_true", help="with --memory-only: the train rows only")
    parser.add_argument("--gpu-check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    lines = ["# Prepared face sets at scale", "", f"`{' '.join(['scripts/bench_scale.py', *sys.argv[1:]])}`", ""]
    prepare_table, memory_table, train_peaks = [], [], []
    for photos in args.sizes:
        print(f"[{photos:,} photos] generating ...", flush=True)
        folder, rec = make_sets(args.workdir, photos)
        data_dir = args.workdir / f"prepared_{photos}_w{args.workers[-1]}"
        print(f"[{photos:,} photos] preparing ...", flush=True)
        rows = [] if args.memory_only else prepare_rows(f"folder:{folder}", f"rec:{rec}", photos, args.workdir,
                                                        args.workers, not args.no_beam, args.beam_options)
        for row in rows:
            prepare_table.append([f"{photos:,}", row["how"], f"{row['seconds']:.1f}", f"{row['command_seconds']:.1f}",
                                  f"{row['per_worker']:.0f}", gib(row["peak_rss"])])
            print(prepare_table[-1], flush=True)
        if args.gpu_check:
            lines += [f"## The face network's training on the GPU, {photos:,} photos, batch {args.batch_size}", ""]
            lines += markdown_table(["input", "training images/s", "first step", "peak RSS"],
                                    gpu_rows(f"folder:{folder}", data_dir, args.workdir, args.steps, args.batch_size),
                                    "lrrr")
            lines += [""]
            continue
        print(f"[{photos:,} photos] training ...", flush=True)
        run_dir = args.workdir / f"run_{photos}"
        shutil.rmtree(args.workdir / f"embed_{photos}", ignore_errors=True)
        trained = train_row(f"folder:{folder}", data_dir, run_dir, args.steps, args.batch_size)
        print(f"[{photos:,} photos] training, triplet loss only ...", flush=True)
        triplet_only = train_row(f"folder:{folder}", data_dir, args.workdir / f"run_{photos}_triplet", args.steps,
                                 args.batch_size, {"train.classification_weight": 0.0, "train.warmup_epochs": 0})
        full = None  # above the sample size the default classifier is sampled: the full one beside it
        if photos // PHOTOS_PER_IDENTITY > DEFAULT_SAMPLE_SIZE:
            print(f"[{photos:,} photos] training, full classifier ...", flush=True)
            full = train_row(f"folder:{folder}", data_dir, args.workdir / f"run_{photos}_full", args.steps,
                             args.batch_size, {"train.classifier_sample": 0})
        embedded = evaluated = None
        if not args.train_only:
            embedded = embed_row(run_dir, f"folder:{folder}", data_dir, args.workdir / f"embed_{photos}")
            evaluated = evaluate_row(run_dir, data_dir, baselines=True)
        train_peaks.append((photos, trained["peak_rss"], triplet_only["peak_rss"]))
        memory_table.append([f"{photos:,}", gib(trained["peak_rss"]), gib(triplet_only["peak_rss"]),
                             "-" if full is None else gib(full["peak_rss"]),
                             f"{trained['first_step']:.1f} s ({triplet_only['first_step']:.1f} s)",
                             f"{trained['seconds']:.0f} s", "-" if embedded is None else gib(embedded["peak_rss"]),
                             "-" if evaluated is None else gib(evaluated["peak_rss"])])
        print(memory_table[-1], flush=True)
    if prepare_table:
        lines += ["## Preparation (`--aligned dlib`, no detection)", ""]
        lines += markdown_table(["photos", "how", "seconds", "command seconds", "photos/s per worker", "peak RSS"],
                                prepare_table, "rlrrrr")
    if args.gpu_check:
        text = "\n".join(lines) + "\n"
        print(text)
        write_report(args.output, text)
        return
    lines += ["", f"## Training ({args.steps} steps of the face network, batch {args.batch_size}) and embedding", ""]
    lines += markdown_table(["photos", "train peak RSS", "train peak RSS, triplet loss only",
                             "train peak RSS, full classifier", "first step (triplet loss only)", "train total",
                             "embed --split test peak RSS", "evaluate peak RSS"], memory_table, "rrrrrrrr")
    if len(train_peaks) > 1:
        (first, default_first, triplet_first), (last, default_last, triplet_last) = train_peaks[0], train_peaks[-1]
        lines += ["", f"Train peak RSS at {last:,} photos against {first:,}: {default_last / default_first:.2f}x "
                      f"(the default recipe, with its classifier over the training identities), "
                      f"{triplet_last / triplet_first:.2f}x (triplet loss only: train.classification_weight = 0, "
                      f"train.warmup_epochs = 0)."]
    if args.memory_only:
        text = "\n".join(lines) + "\n"
        print(text)
        write_report(args.output, text)
        return
    smallest = min(args.sizes)
    folder, _ = make_sets(args.workdir, smallest)
    rates = pipeline_rate(f"folder:{folder}", args.workdir / f"prepared_{smallest}_w{args.workers[-1]}",
                          args.pipeline_batches, args.repeats)
    lines += ["", f"## P x K pipeline at {smallest:,} photos (16 x 4 chips, augmented; median of {args.repeats})", ""]
    lines += markdown_table(["pipeline", "batches/s", "ratio"],
                            [[name, f"{rate:.2f}", f"{rate / rates['in memory']:.2f}"] for name, rate in rates.items()],
                            "lrr")
    text = "\n".join(lines) + "\n"
    print(text)
    write_report(args.output, text)


if __name__ == "__main__":
    main()
