"""LFW as a prepared face set: preparation speed, pairs.txt accuracy from it, PNG against JPEG chips, the ArcFace route.

Reproduce with::

    .venv/bin/python scripts/bench_prepared_lfw.py --output docs/reports/bench_prepared_lfw.md

1. ``facetrip prepare folder:LFW/images --workers 2`` with an empty chip cache: every one of
   the 13,233 photos decoded, its face detected (HOG, then the CNN detector where HOG finds
   none) and cut as a 150 x 150 chip, stored as PNG in ArrayRecord shards. Photos/s.
2. ``evaluate_run`` of the pretrained face network (flip averaging, the default run of
   ``scripts/bench_lfw.py --pretrained``) on the prepared set with ``pairs.txt``: the
   accuracy a user gets from the prepared set, against the 98.95% of the chip-cache path.
3. The same photos' chips stored other ways, embedded by the same model, scored on the
   same pairs and folds:
   - PNG, as prepared (lossless: the reference);
   - JPEG at quality 95 and 90 (bytes per chip, encoding time);
   - the ArcFace route: each chip cut into the 112 x 112 crop on insightface's ArcFace
     template (stored as JPEG 95, as insightface sets are), then mapped back onto the
     chip's geometry by ``data.aligned = arcface``'s fixed similarity transform. This is
     what training or evaluating from a ``rec:`` set costs against detecting the faces.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_lfw import DEFAULT_LFW, pretrained_run  # noqa: E402
from benchmarking import REPO_ROOT, markdown_table, write_report  # noqa: E402

FACETRIP = [sys.executable, "-c", "from facetrip.cli import app; app()"]


def prepare_lfw(lfw: Path, data_dir: Path, cache_dir: Path, workers: int) -> dict:
    """A cold ``facetrip prepare`` of LFW (fresh data dir, empty chip cache): seconds, photos/s and its face summary."""
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache_dir.mkdir(parents=True)
    started = time.monotonic()
    result = subprocess.run([*FACETRIP, "prepare", f"folder:{lfw / 'images'}", "--data-dir", str(data_dir),
                             "--workers", str(workers)], capture_output=True, text=True, cwd=REPO_ROOT,
                            env={**os.environ, "FACETRIP_CACHE_DIR": str(cache_dir), "COLUMNS": "200"})
    if result.returncode != 0:
        raise RuntimeError(f"prepare failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    found = re.search(r"time\W+([\d.]+) s", result.stdout)
    faces = re.search(r"│ faces\s+│\s*(.+?)\s*│", result.stdout)
    return {"seconds": float(found.group(1)), "command_seconds": time.monotonic() - started,
            "faces": faces.group(1) if faces else "", "output": result.stdout}


def reencoded(chips: list[bytes], encode) -> tuple[list[bytes], float]:
    """``encode(pixels)`` of every chip, and the milliseconds it took per chip."""
    import numpy as np
    from PIL import Image

    started = time.perf_counter()
    out = [encode(np.asarray(Image.open(io.BytesIO(chip)).convert("RGB"))) for chip in chips]
    return out, 1000 * (time.perf_counter() - started) / len(chips)


def jpeg(quality: int):
    from PIL import Image

    def encode(pixels) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()

    return encode


def png(pixels) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def arcface_route(pixels) -> bytes:
    """A chip -> its ArcFace crop, stored as JPEG 95 -> decoded -> mapped back onto the chip (PNG)."""
    import numpy as np
    from PIL import Image

    from facetrip.data.arcface_alignment import arcface_crop_from_chip, chip_from_arcface_crop

    crop = jpeg(95)(np.clip(np.rint(arcface_crop_from_chip(pixels)), 0, 255).astype(np.uint8))
    mapped = chip_from_arcface_crop(np.asarray(Image.open(io.BytesIO(crop)).convert("RGB")))
    return png(np.clip(np.rint(mapped), 0, 255).astype(np.uint8))


def pairs_accuracy(run, faces, pairs) -> dict:
    """10-fold accuracy (the file's folds) of ``run`` on ``pairs`` of ``faces``."""
    from facetrip.embedding import embed_faces
    from facetrip.evaluation.metrics import verification_metrics
    from facetrip.evaluation.pairs import distances_of_pairs

    embeddings = embed_faces(run.model, faces, run.image_size, run.channels)  # (U, D)
    distances = distances_of_pairs(embeddings.__getitem__, pairs.first, pairs.second, run.metadata["metric"])
    metrics = verification_metrics(distances, pairs.same, pairs.folds, 0)
    return {"mean": metrics["accuracy"]["mean"], "std": metrics["accuracy"]["std"], "auc": metrics["auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "runs" / "bench_prepared_lfw")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    pairs_file = args.lfw / "pairs.txt"
    if not pairs_file.is_file():
        sys.exit(f"LFW not found: {pairs_file} (set --lfw or FACETRIP_SHARED_DATA).")
    data_dir = args.work_dir / "tfds"

    print("preparing LFW (cold) ...", flush=True)
    prepared = prepare_lfw(args.lfw, data_dir, args.work_dir / "chip_cache", args.workers)
    print(prepared["output"], flush=True)

    import numpy as np

    from facetrip.data.records import load_model_faces
    from facetrip.evaluation.pairs_file import read_lfw_pairs
    from facetrip.evaluation.report import _compact, evaluate_run, pairs_from_file
    from facetrip.runs.loaded_run import Run

    run_dir = pretrained_run(args.work_dir, flip_tta=True)
    started = time.monotonic()
    report = evaluate_run(run_dir, pairs_file=pairs_file, data_source=f"folder:{args.lfw / 'images'}",
                          data_dir=str(data_dir), baselines=False)
    evaluated = {"mean": report["model"]["accuracy"]["mean"], "std": report["model"]["accuracy"]["std"],
                 "auc": report["model"]["auc"], "seconds": time.monotonic() - started}
    print(f"evaluate_run on the prepared set: {100 * evaluated['mean']:.2f}%", flush=True)

    run = Run.load(run_dir)
    faces, _ = load_model_faces(f"folder:{args.lfw / 'images'}", data_dir=str(data_dir), face_chips=True)
    used, pairs = _compact(faces, pairs_from_file(read_lfw_pairs(pairs_file), faces, pairs_file))
    chips = list(used.encoded)  # the prepared PNG chips of the photos the pairs use
    rows = []
    for name, encode in (("PNG (as prepared)", None), ("JPEG quality 95", jpeg(95)), ("JPEG quality 90", jpeg(90)),
                         ("ArcFace crop (JPEG 95), mapped back", arcface_route)):
        stored, milliseconds = (chips, float("nan")) if encode is None else reencoded(chips, encode)
        held = np.empty(len(stored), dtype=object)
        held[:] = stored
        variant = dataclasses.replace(used, encoded=held, file_names=np.asarray([""] * len(stored)))
        accuracy = pairs_accuracy(run, variant, pairs)
        rows.append((name, accuracy, float(np.mean([len(chip) for chip in stored])), milliseconds))
        print(f"{name}: {100 * accuracy['mean']:.2f}% ± {100 * accuracy['std']:.2f}", flush=True)

    reference = rows[0][1]["mean"]
    lines = ["# LFW as a prepared face set", "",
             f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores. Command: "
             f"`.venv/bin/python scripts/bench_prepared_lfw.py {' '.join(sys.argv[1:])}`", "",
             "## Preparation (cold: no chip cache)", ""]
    photos = len(faces)
    lines += markdown_table(["photos", "workers", "seconds", "photos/s", "photos/s per worker", "faces"],
                            [[f"{photos:,}", args.workers, f"{prepared['seconds']:.0f}",
                              f"{photos / prepared['seconds']:.1f}", f"{photos / prepared['seconds'] / args.workers:.1f}",
                              prepared["faces"]]], "rrrrrl")
    lines += ["", "## pairs.txt (10 folds), pretrained face network with flip averaging", "",
              f"`evaluate_run` on the prepared set: **{100 * evaluated['mean']:.2f}% ± {100 * evaluated['std']:.2f}** "
              f"(AUC {evaluated['auc']:.4f}, {evaluated['seconds']:.0f} s); the chip-cache path measured 98.95% ± 0.27.",
              "", f"The {len(used):,} photos the pairs use, their chips stored each way:", ""]
    lines += markdown_table(
        ["chips stored as", "accuracy", "against PNG", "AUC", "bytes per chip", "encoding ms per chip"],
        [[name, f"{100 * accuracy['mean']:.2f}% ± {100 * accuracy['std']:.2f}",
          f"{100 * (accuracy['mean'] - reference):+.2f} points", f"{accuracy['auc']:.4f}", f"{size:,.0f}",
          "-" if milliseconds != milliseconds else f"{milliseconds:.2f}"]
         for name, accuracy, size, milliseconds in rows], "lrrrrr")
    text = "\n".join(lines) + "\n"
    print(text)
    write_report(args.output, text)


if __name__ == "__main__":
    main()
