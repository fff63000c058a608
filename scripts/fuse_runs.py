"""Score fusion of several runs on the same identity split: do their errors cancel?

Averaging the (standardised) pair distances of several models trained on the same
split is an ensemble. If it scores much better than each model, the models' errors are
independent (variance: more seeds or an ensemble would help); if it scores about the
same, they make the same mistakes (bias: the recipe or the data is the limit). The
Fisherfaces baseline, fitted on the split's training identities, can join the fusion.

Each run is scored on all pairs of the split's test identities (``facetrip evaluate``'s
pairs, no sampling), with the run's own image size; fusion averages the distances after
standardising each set (zero mean, unit variance over the pairs).

Usage::

    python scripts/fuse_runs.py runs/compare/batch_hard_split1 runs/compare/semi_hard_split1 \\
        runs/compare/offline_split1 --fisherfaces
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def standardised(distances: np.ndarray) -> np.ndarray:
    """(M,) distances shifted and scaled to zero mean and unit variance (a constant set stays at 0)."""
    spread = distances.std()
    return (distances - distances.mean()) / (spread if spread > 0 else 1.0)


def fused(distance_sets: list[np.ndarray]) -> np.ndarray:
    """Mean of the standardised distance sets: (M,)."""
    return np.mean([standardised(np.asarray(distances, np.float64)) for distances in distance_sets], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories of one identity split")
    parser.add_argument("--fisherfaces", action="store_true", help="fuse the Fisherfaces baseline as well")
    parser.add_argument("--data-dir", default=None, help="tfds storage folder (default: tfds' own)")
    args = parser.parse_args()

    from facetrip.data import load_faces
    from facetrip.evaluation import distances_between, verification_metrics, verification_pairs
    from facetrip.evaluation.baselines import fit_fisherfaces
    from facetrip.evaluation.report import preprocess_images, run_split
    from facetrip.inference import Run
    from facetrip.runs import read_metadata

    splits = [run_split(run_dir, read_metadata(run_dir)) for run_dir in args.runs]
    if any(sorted(split["test"]) != sorted(splits[0]["test"]) or sorted(split["train"]) != sorted(splits[0]["train"])
           for split in splits):
        sys.exit("error: the runs were trained on different identity splits; fusion needs one split.")
    metadata = read_metadata(args.runs[0])
    faces = load_faces(metadata["source"], data_dir=args.data_dir)
    test = faces.restricted_to(splits[0]["test"])
    pairs = verification_pairs(test.labels)  # all pairs of a small split
    scores: dict[str, np.ndarray] = {}
    for run_dir in args.runs:
        run = Run.load(run_dir)
        embeddings = run.embed_images(preprocess_images(test, run.image_size, run.channels))
        scores[run_dir.name] = distances_between(embeddings[pairs.first], embeddings[pairs.second], read_metadata(run_dir)["metric"])
    if args.fisherfaces:
        run = Run.load(args.runs[0])
        train = faces.restricted_to(splits[0]["train"])
        baseline = fit_fisherfaces(preprocess_images(train, run.image_size, run.channels), train.labels)
        vectors = baseline.embed(preprocess_images(test, run.image_size, run.channels))
        scores["Fisherfaces"] = distances_between(vectors[pairs.first], vectors[pairs.second], baseline.metric)

    def row(label: str, distances: np.ndarray) -> str:
        metrics = verification_metrics(distances, pairs.same)
        return f"| {label} | {100 * metrics['eer']:.1f}% | {metrics['auc']:.3f} | {metrics['tar_at_far_1pct']:.2f} |"

    print(f"{pairs.num_same} same / {pairs.num_different} different pairs of {len(splits[0]['test'])} test identities\n")
    print("| scores | EER | AUC | TAR @ FAR=1% |\n|---|---|---|---|")
    for label, distances in scores.items():
        print(row(label, distances))
    models = [distances for label, distances in scores.items() if label != "Fisherfaces"]
    if len(models) > 1:
        print(row(f"fusion of the {len(models)} runs", fused(models)))
    if args.fisherfaces:
        print(row("fusion of the runs and Fisherfaces", fused([fused(models), scores["Fisherfaces"]])))


if __name__ == "__main__":
    main()
