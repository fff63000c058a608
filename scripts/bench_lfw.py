"""LFW verification through facetrip's own path: the standard protocol, for the pretrained network and for runs.

The protocol of LFW's View 2: ``pairs.txt`` (6,000 pairs in 10 folds of 300 same + 300
different pairs), 10-fold accuracy with the threshold chosen on the other nine folds,
reported as mean +- standard deviation over the folds. Develop on View 1
(``pairsDevTrain.txt`` / ``pairsDevTest.txt``), report on ``pairs.txt``.

Every photo goes the way a user's photo goes (``facetrip evaluate RUN --data folder:LFW
--pairs FILE``): decoded at its own size, the face detected and aligned into a 150 x 150
chip (cached by content), embedded by the run's saved model. ``--pretrained`` first makes
the run of the pretrained face network without training (``facetrip train --epochs 0``,
threshold calibrated on ORL's dev people), with and without flip test-time augmentation.

Also reported: the false-accept and false-reject rates on LFW of the threshold each run
saved (calibrated on its own dev people to ``train.target_far``), against that target.

Usage::

    python scripts/bench_lfw.py --pretrained --pairs pairs.txt --output docs/reports/bench_lfw.md
    python scripts/bench_lfw.py --run runs/yaleb_split0 --pairs pairsDevTest.txt
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarking import write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LFW = Path(os.environ.get("FACETRIP_SHARED_DATA", REPO.parent / "shared" / "data")) / "lfw"
# Measured with dlib's own pipeline on this data (../shared/data/README.md).
DLIB_REFERENCE = {"pairs.txt": "98.65% ± 0.40 (98.83% ± 0.37 with flip averaging), AUC 0.9975",
                  "pairsDevTest.txt": "98.60% ± 1.28"}


def pretrained_run(work_dir: Path, flip_tta: bool) -> Path:
    """The pretrained face network as a run (no training), made once in ``work_dir``."""
    from facetrip.config import Config
    from facetrip.runs import METADATA_FILE
    from facetrip.training import prepare_run_dir, train

    run_dir = work_dir / ("pretrained_flip" if flip_tta else "pretrained")
    if (run_dir / METADATA_FILE).is_file():
        return run_dir
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    config = Config()
    config.set("train.epochs", 0)
    config.set("model.flip_tta", flip_tta)
    prepare_run_dir(config, run_dir)
    train(config, run_dir)
    return run_dir


def evaluate_on_lfw(run_dir: Path, lfw: Path, pairs: str) -> dict:
    from facetrip.evaluation.report import evaluate_run

    started = time.perf_counter()
    report = evaluate_run(run_dir, pairs_file=lfw / pairs, data_source=f"folder:{lfw / 'images'}", baselines=False)
    return {**report, "seconds": time.perf_counter() - started}


def markdown(rows: list[tuple[str, dict]], pairs: str, command: str = "") -> str:
    import datetime
    import os

    lines = [
        f"# LFW through facetrip ({pairs}, 10 folds)",
        "",
        f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPU cores. Command: `{command}`. An evaluation's time "
        "includes aligning the photos when the chip cache is cold (the first run).",
        "",
        f"| run | accuracy ({pairs}, 10 folds) | AUC | EER | TAR @ FAR=1% | saved threshold: FAR (target) | FRR | evaluation time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, report in rows:
        model, accuracy, threshold = report["model"], report["model"]["accuracy"], report.get("threshold") or {}
        target = threshold.get("target_far")
        lines.append(
            f"| {name} | {100 * accuracy['mean']:.2f}% ± {100 * accuracy['std']:.2f} | {model['auc']:.4f} "
            f"| {100 * model['eer']:.2f}% | {model['tar_at_far_1pct']:.3f} "
            f"| {100 * threshold.get('far', float('nan')):.1f}%" + (f" ({100 * target:g}%)" if target else "")
            + f" | {100 * threshold.get('frr', float('nan')):.1f}% | {report['seconds']:.0f} s |"
        )
    lines.append(f"\ndlib's own pipeline on the same photos: {DLIB_REFERENCE.get(pairs, 'not measured')}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", default=[], help="a run directory to evaluate (repeatable)")
    parser.add_argument("--pretrained", action="store_true", help="also the pretrained network without training (+ flip)")
    parser.add_argument("--pairs", default="pairsDevTest.txt", help="pairs.txt | pairsDevTrain.txt | pairsDevTest.txt")
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="LFW folder with images/ and the pairs files")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_lfw")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if not (args.lfw / args.pairs).is_file():
        print(f"LFW not found: {args.lfw / args.pairs} (set --lfw or FACETRIP_SHARED_DATA).", file=sys.stderr)
        return 2

    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    runs = [(str(run), run) for run in args.run]
    if args.pretrained:
        runs = [("pretrained face_resnet", pretrained_run(args.work_dir, flip_tta=False)),
                ("pretrained face_resnet + flip", pretrained_run(args.work_dir, flip_tta=True)), *runs]
    rows = []
    for name, run_dir in runs:
        report = evaluate_on_lfw(run_dir, args.lfw, args.pairs)
        accuracy = report["model"]["accuracy"]
        print(f"{name}: {100 * accuracy['mean']:.2f}% ± {100 * accuracy['std']:.2f}, AUC {report['model']['auc']:.4f}, "
              f"{report['seconds']:.0f} s", flush=True)
        rows.append((name, report))
    table = markdown(rows, args.pairs, ".venv/bin/python scripts/bench_lfw.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(table)
    write_report(args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
