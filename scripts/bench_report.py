"""What the HTML report page adds to an evaluation: time and page size, on LFW's pairs.txt.

Evaluates a run on LFW's 6,000 pairs (7,701 photos) as `facetrip evaluate RUN --data folder:LFW
--pairs pairs.txt` does, then writes its report page (`facetrip report`), timing each step in
the same process, and prints a table:

    python scripts/bench_report.py --run runs/pretrained [--lfw ../shared/data/lfw] [--out report.html]

The page's time is the time from the evaluation's result to the written file: the plots,
the thumbnails of the hardest errors and of the photos without a face, and the HTML.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="A run directory (its model is evaluated).")
    parser.add_argument("--lfw", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lfw")
    parser.add_argument("--out", type=Path, default=None, help="Where to write the page (default: a temporary file).")
    parser.add_argument("--no-baselines", action="store_true", help="Leave out raw pixels, Eigenfaces and Fisherfaces.")
    args = parser.parse_args()
    if not (args.lfw / "pairs.txt").is_file():
        print(f"No LFW at {args.lfw} (images/ and pairs.txt): nothing to measure.", file=sys.stderr)
        return 2

    from facetrip.tf_runtime import import_tensorflow

    import_tensorflow()
    from facetrip.cli.evaluation import write_report_page
    from facetrip.evaluation.report import evaluate_run

    seen: list = []
    started = time.perf_counter()
    report = evaluate_run(args.run, pairs_file=args.lfw / "pairs.txt", data_source=f"folder:{args.lfw / 'images'}",
                          baselines=not args.no_baselines, pairs_seen=seen.append)
    evaluated = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        target = args.out or Path(scratch) / "report.html"
        write_report_page(args.run, report, seen[0], target, overwrite=True)
        written = time.perf_counter()
        size = target.stat().st_size
    pairs = report["pairs"]
    print(f"| step | seconds |\n|---|---|\n| evaluation ({pairs['same'] + pairs['different']:,} pairs, "
          f"{pairs['images']:,} photos) | {evaluated - started:.1f} |\n| report page | {written - evaluated:.1f} |")
    print(f"\nPage: {size / 1e6:.2f} MB; {len(report['hardest_errors']['false_accepts'])} false accepts and "
          f"{len(report['hardest_errors']['false_rejects'])} false rejects shown; "
          f"{(report.get('faces') or {}).get('no_face', 0)} photos without a face.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
