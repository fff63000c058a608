"""Test-time augmentation views compared on the same trained models (a paired comparison).

For each run (its saved model, which may already average an image with its mirror image),
the test identities' images are embedded as they are, and again with the embeddings of
copies shifted by one pixel up, down, left and right added (``facetrip.models.resnet.Shift``, as
``model.tta_shift = 1`` does inside a saved model), and with copies zoomed 5% in and out
added. Every variant is scored on all pairs of the run's test identities; the table gives
the mean over runs. No retraining: the difference between rows is the views alone.

Usage::

    python scripts/compare_tta.py runs/compare/width_8__embedding_64_split{0,1,2,3,4}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--data-dir", default=None, help="tfds storage folder (default: tfds' own)")
    args = parser.parse_args()

    from facetrip.tf_runtime import import_tensorflow

    tf = import_tensorflow()
    from facetrip.data import load_faces
    from facetrip.evaluation import verification_metrics, verification_pairs
    from facetrip.evaluation.report import preprocess_images, run_split
    from facetrip.inference import Run
    from facetrip.models.tta import Shift, tta_offsets
    from facetrip.runs import read_metadata

    def zoomed(images: np.ndarray, factor: float) -> np.ndarray:
        """Images scaled by ``factor`` about their centre (bilinear, border mirrored)."""
        height, width = images.shape[1:3]
        transform = tf.constant([[1 / factor, 0, width / 2 * (1 - 1 / factor), 0, 1 / factor,
                                  height / 2 * (1 - 1 / factor), 0, 0]], tf.float32)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=tf.repeat(transform, len(images), 0), output_shape=[height, width],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT").numpy()

    results: dict[str, list[tuple[float, float, float]]] = {}
    faces = None
    for run_dir in args.runs:
        metadata = read_metadata(run_dir)
        faces = faces or load_faces(metadata["source"], data_dir=args.data_dir)
        test = faces.restricted_to(run_split(run_dir, metadata)["test"])
        pairs = verification_pairs(test.labels)
        run = Run.load(run_dir)
        images = preprocess_images(test, run.image_size, run.channels)
        as_saved = run.model.predict(images, verbose=0)  # (N, D)
        shifts = sum(run.model.predict(Shift(dy, dx)(images).numpy(), verbose=0) for dy, dx in tta_offsets(1)[1:])
        zooms = sum(run.model.predict(zoomed(images, factor), verbose=0) for factor in (1.05, 1 / 1.05))
        label = "the saved model" + (" (image + mirror)" if metadata.get("flip_tta") else "")
        for name, embeddings in ((label, as_saved), ("+ 1-pixel shifts", as_saved + shifts),
                                 ("+ 5% zoom in and out", as_saved + zooms)):
            embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
            distances = np.linalg.norm(embeddings[pairs.first] - embeddings[pairs.second], axis=1)
            metrics = verification_metrics(distances, pairs.same)
            results.setdefault(name, []).append((metrics["eer"], metrics["auc"], metrics["tar_at_far_1pct"]))
            print(f"{run_dir.name}: {name}: EER {100 * metrics['eer']:.1f}% AUC {metrics['auc']:.4f} "
                  f"TAR@1% {metrics['tar_at_far_1pct']:.3f}", flush=True)
    print(f"\n| test-time views (mean of {len(args.runs)} runs) | EER | AUC | TAR @ FAR=1% |\n|---|---|---|---|")
    for name, rows in results.items():
        eer, auc, tar = np.mean(rows, axis=0)
        print(f"| {name} | {100 * eer:.2f}% | {auc:.4f} | {tar:.3f} |")


if __name__ == "__main__":
    main()
