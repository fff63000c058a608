"""Benchmark offline triplet mining (``facetrip.mining``) over a whole split.

Reproduce (from the repository root; about 2 to 4 minutes on 2 idle CPU cores)::

    .venv/bin/python scripts/bench_mining.py
    .venv/bin/python scripts/bench_mining.py --sizes 10000 --repeats 1          # quick check
    .venv/bin/python scripts/bench_mining.py --cases mine count --output docs/reports/bench_mining.md

Inputs: N random 128-D embeddings (seeded standard normal, L2-normalised, float32),
10 images per identity (N / 10 identities), margin 0.2, euclidean distance.

Cases (each run in a fresh worker process: this script re-invoked with ``--worker``):

- ``mine``: ``mine_triplets(embeddings, labels, 0.2)``, which counts every valid
  triplet exactly (easy / semi-hard / hard) and draws 100,000 hard + semi-hard ones;
  this is "count + mine" and carries the target.
- ``count``: ``count_triplets`` alone (optional).

Each worker reports its wall time and CPU time for the call, its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``, the whole process: interpreter, NumPy, inputs)
and its RSS before the call. Target for N = 100,000: under 60 s wall and under 2 GiB
peak RSS (PASS / FAIL; exit status 1 on FAIL). The best of ``--repeats`` runs is
judged; all are listed.

The machine may be shared: before each run the script waits (up to ``--wait-quiet``
seconds) until other processes use under ``--quiet-threshold`` cores, and it reports
how many cores other processes used during each run. TensorFlow is not imported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarking import (GIB, REPO_ROOT, OtherLoad, QuietWaiter, add_quiet_machine_arguments, gib, log, markdown_table,
                          peak_rss_bytes, report_from_worker, run_worker, timed, write_report)

DEFAULT_SIZES = (10_000, 100_000)
CASES = ("mine", "count")
EMBEDDING_DIM = 128
IMAGES_PER_IDENTITY = 10
MARGIN = 0.2
METRIC = "euclidean"
MAX_TRIPLETS = 100_000
TARGET_SIZE = 100_000
TARGET_SECONDS = 60.0
TARGET_RSS_BYTES = 2 * GIB


# ================================================================================ worker


def measure_case(case: str, size: int, seed: int) -> dict:
    """Build the inputs and run one case in this process; returns the measurements."""
    sys.path.insert(0, str(REPO_ROOT))
    import numpy as np

    from facetrip.mining import count_triplets, mine_triplets

    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((size, EMBEDDING_DIM), dtype=np.float32)  # (N, 128)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = np.repeat(np.arange(size // IMAGES_PER_IDENTITY), IMAGES_PER_IDENTITY)  # (N,)
    baseline_rss = peak_rss_bytes()
    cpu = time.process_time()
    if case == "mine":
        wall, result = timed(lambda: mine_triplets(embeddings, labels, MARGIN, metric=METRIC,
                                                   max_triplets=MAX_TRIPLETS, seed=seed))
        counts, mined = result.counts, len(result.triplets)
    else:
        wall, counts = timed(lambda: count_triplets(embeddings, labels, MARGIN, metric=METRIC))
        mined = None
    cpu = time.process_time() - cpu
    return {"seconds": wall, "cpu_seconds": cpu, "peak_rss": peak_rss_bytes(), "baseline_rss": baseline_rss,
            "counts": counts, "mined": mined}


# ================================================================================ parent


@dataclass
class Run:
    case: str
    size: int
    seconds: float
    cpu_seconds: float
    peak_rss: int
    baseline_rss: int
    counts: dict
    mined: int | None
    other_cores: float | None  # cores used by other processes during the run


def measure(case: str, size: int, seed: int, timeout: float) -> Run:
    """One worker process; raises on failure or timeout."""
    monitor = OtherLoad().start()
    run = run_worker(__file__, ["--worker", case, str(size), "--seed", str(seed)], timeout)
    other = monitor.stop()  # the machine's busy CPU time minus the worker's own (and ours), per second of the run
    if run.result is None or not run.result["ok"]:
        reason = run.exit_reason() if run.result is None else run.result["error"]
        raise RuntimeError(f"worker {case} N={size} failed ({reason}):\n{run.stderr[-2000:]}")
    data = run.result
    return Run(case=case, size=size, seconds=data["seconds"], cpu_seconds=data["cpu_seconds"],
               peak_rss=data["peak_rss"], baseline_rss=data["baseline_rss"], counts=data["counts"],
               mined=data["mined"], other_cores=other)


def judge(runs: list[Run]) -> str:
    """PASS / FAIL for the N = 100,000 target on the best run (fastest), '-' for other sizes."""
    if runs[0].size != TARGET_SIZE:
        return "-"
    best = min(runs, key=lambda run: run.seconds)
    return "PASS" if best.seconds < TARGET_SECONDS and best.peak_rss < TARGET_RSS_BYTES else "FAIL"


def render(results: dict, args) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        "# Offline triplet mining benchmark",
        "",
        f"`scripts/bench_mining.py`: random unit {EMBEDDING_DIM}-D float32 embeddings, {IMAGES_PER_IDENTITY} images "
        f"per identity, margin {MARGIN}, {METRIC}; `mine` = `mine_triplets` (exact counts + {MAX_TRIPLETS:,} "
        f"hard/semi-hard triplets), `count` = `count_triplets`. Target at N = {TARGET_SIZE:,}: "
        f"< {TARGET_SECONDS:.0f} s and < {TARGET_RSS_BYTES / GIB:.0f} GiB peak RSS (best of {args.repeats}).",
        f"Machine: {platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}.",
        "",
    ]
    rows = []
    for (case, size), runs in results.items():
        best = min(runs, key=lambda run: run.seconds)
        median = statistics.median(run.seconds for run in runs)
        counts = best.counts
        other = ", ".join("?" if run.other_cores is None else f"{run.other_cores:.1f}" for run in runs)
        rows.append([case, f"{size:,}", f"{size * size:.1e}", f"{best.seconds:.1f} / {median:.1f}",
                     f"{best.cpu_seconds:.1f}", f"{best.seconds / size**2 * 1e9:.2f}", f"{gib(best.peak_rss)} GiB",
                     f"{gib(best.baseline_rss)} GiB", f"{counts['easy']:,} / {counts['semi_hard']:,} / {counts['hard']:,}",
                     "-" if best.mined is None else f"{best.mined:,}", other, judge(runs)])
    lines += markdown_table(["case", "N", "pairs N^2", "wall s (best / median)", "CPU s", "ns per pair (wall)", "peak RSS",
                             "RSS before call", "easy / semi-hard / hard", "mined", "other load (cores)", "target"],
                            rows, "lrrrrrrrlrrl")
    lines += ["", "All runs (wall s): " + "; ".join(
        f"{case} N={size:,}: " + ", ".join(f"{run.seconds:.1f}" for run in runs) for (case, size), runs in results.items())]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="numbers of embeddings N")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=["mine"], help="what to time (default: mine)")
    parser.add_argument("--repeats", type=int, default=2, help="worker runs per case (best is judged)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and of the selection")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a worker is killed")
    add_quiet_machine_arguments(parser, threshold=0.3, wait=120.0, wait_scope="per run")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        case, size = args.worker[0], int(args.worker[1])
        report_from_worker(lambda: measure_case(case, size, args.seed), {"case": case, "size": size})
        return 0
    results: dict = {}
    for size in args.sizes:
        for case in args.cases:
            runs = []
            for repeat in range(args.repeats):
                waited = QuietWaiter(args.quiet_threshold, args.wait_quiet).wait()
                log(f"{case} N={size:,} run {repeat + 1}/{args.repeats} (waited {waited:.0f} s for quiet)")
                run = measure(case, size, args.seed, args.timeout)
                log(f"  {run.seconds:.1f} s, CPU {run.cpu_seconds:.1f} s, peak RSS {run.peak_rss / GIB:.2f} GiB, "
                    f"other load {run.other_cores if run.other_cores is None else round(run.other_cores, 1)} cores")
                runs.append(run)
            results[(case, size)] = runs
    report = render(results, args)
    print(report)
    write_report(args.output, report)
    return 1 if any(judge(runs) == "FAIL" for runs in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
