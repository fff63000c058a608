"""What the benchmark scripts share: timing, ABBA order, other processes' load, peak memory,
worker processes and markdown tables.

The scripts run as ``python scripts/bench_X.py``, so this folder is on ``sys.path`` and they
``import benchmarking``. Nothing here imports TensorFlow at import time (bench_mining.py and the
parent process of bench_losses.py never load it); :func:`import_tensorflow_quietly` does, when
called.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
WORKER_RESULT_PREFIX = "BENCH_RESULT "

T = TypeVar("T")


# ================================================================================ set-up


def log(message: str) -> None:
    """Progress on stderr, prefixed with the script's name and the time (reports go to stdout)."""
    print(f"[{Path(sys.argv[0]).stem} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def import_tensorflow_quietly():
    """TensorFlow (through ``facetrip.tf_runtime``), with tfds' progress bars and absl / TF logging off.

    Returns:
        The ``tensorflow`` module.
    """
    import logging

    from facetrip.tf_runtime import import_tensorflow

    tf = import_tensorflow()
    import absl.logging
    import tensorflow_datasets as tfds

    absl.logging.set_verbosity(absl.logging.ERROR)
    tfds.disable_progress_bar()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return tf


def write_report(path: Path | str | None, text: str) -> None:
    """Write the markdown report to ``path`` (its folder made when missing); nothing when ``path`` is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ================================================================================ timing


def timed(function: Callable[[], T]) -> tuple[float, T]:
    """One call of ``function``, timed.

    Returns:
        ``(seconds, result)``: wall-clock seconds (``time.perf_counter``) and what it returned.
    """
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def timed_repeats(function: Callable[[], T], repeats: int, warmup: int = 0) -> tuple[list[float], T | None]:
    """``warmup`` untimed calls of ``function``, then ``repeats`` timed ones.

    Args:
        function: the work to time; it must finish its work before it returns (call ``.numpy()``).
        repeats: timed calls.
        warmup: untimed calls first (tracing, allocation, caches).

    Returns:
        ``(seconds of each timed call, result of the last call)``; the result is None without calls.
    """
    result = None
    for _ in range(warmup):
        result = function()
    times = []
    for _ in range(repeats):
        seconds, result = timed(function)
        times.append(seconds)
    return times, result


def abba_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order of round ``round_index``: forwards on even rounds, backwards on odd (A B C, C B A, ...).

    A machine whose speed drifts during the benchmark then favours no variant: each one's
    mean position over two rounds is the same.
    """
    return list(names) if round_index % 2 == 0 else list(names)[::-1]


def abba_rounds(
    variants: Mapping[str, Callable[[], T]],
    rounds: int,
    warmup: bool = False,
    report: Callable[[int, str, T], None] | None = None,
) -> dict[str, list[T]]:
    """Call every variant once per round, in :func:`abba_order`.

    Args:
        variants: name -> a call that measures it once and returns the measurement.
        rounds: rounds (each variant is called once per round).
        warmup: call every variant once, untimed and unrecorded, before the first round.
        report: called as ``report(round_index, name, measurement)`` after each call (progress).

    Returns:
        name -> its measurements, one per round, in round order.
    """
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    results: dict[str, list[T]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in abba_order(names, round_index):
            results[name].append(variants[name]())
            if report is not None:
                report(round_index, name, results[name][-1])
    return results


# ========================================================== other processes on the machine


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes on the machine have been busy since boot (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as stat:
            values = [int(value) for value in stat.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its children that have finished."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class OtherLoad:
    """CPU use of *other* processes between ``start()`` and ``stop()``, in cores.

    other = (machine busy seconds - this process's and its finished children's CPU seconds) / wall seconds.
    """

    def start(self) -> "OtherLoad":
        self._machine, self._own, self._wall = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
        return self

    def stop(self) -> float | None:
        """Cores other processes used since ``start()``; None where the machine's busy time is unknown."""
        machine = machine_busy_seconds()
        if machine is None or self._machine is None:
            return None
        wall = time.perf_counter() - self._wall
        return max(0.0, (machine - self._machine) - (own_cpu_seconds() - self._own)) / max(wall, 1e-9)


class QuietWaiter:
    """Keeps other processes' CPU use out of the timings, as far as a bounded run time allows.

    Before each measurement :meth:`wait` waits until other processes use under ``threshold``
    cores (all waits together capped at ``budget`` seconds, after which it measures regardless);
    :func:`run_quietly` repeats a measurement during which they used more, up to ``retries``
    times, and keeps the quietest attempt.
    """

    def __init__(self, threshold: float, budget: float, retries: int = 0, sample_seconds: float = 2.0):
        self.threshold, self.budget, self.retries, self.sample_seconds = threshold, budget, retries, sample_seconds
        self.waited = 0.0  # seconds waited, all calls together
        self.repeated = 0  # measurements repeated by run_quietly

    def wait(self) -> float:
        """Sample other processes' load every ``sample_seconds`` until it is low or the budget is spent.

        Returns:
            The seconds this call waited.
        """
        waited_before = self.waited
        while self.waited < self.budget:
            monitor = OtherLoad().start()
            time.sleep(self.sample_seconds)
            load = monitor.stop()
            if load is None or load < self.threshold:
                break
            self.waited += self.sample_seconds
            log(f"  other processes use {load:.2f} cores: waiting ({self.waited:.0f} of {self.budget:.0f} s)")
        return self.waited - waited_before


def run_quietly(measure: Callable[[], T], waiter: QuietWaiter, label: str) -> tuple[T, float | None]:
    """The quietest attempt of ``measure()`` (see :class:`QuietWaiter`).

    Returns:
        ``(measurement, cores other processes used during it)``; the cores are None where unknown.
    """
    best = None
    for attempt in range(1 + waiter.retries):
        waiter.wait()
        monitor = OtherLoad().start()
        value = measure()
        other = monitor.stop()
        if best is None or (other is not None and other < best[1]):
            best = (value, other)
        if other is None or other < waiter.threshold:
            break
        if attempt < waiter.retries:
            waiter.repeated += 1
            log(f"  {label}: other processes used {other:.2f} cores during attempt {attempt + 1}: measuring again")
    return best


def add_quiet_machine_arguments(parser: argparse.ArgumentParser, threshold: float, wait: float, wait_scope: str,
                                retries: int | None = None) -> None:
    """``--quiet-threshold``, ``--wait-quiet`` and (with a default for it) ``--retries``, for a :class:`QuietWaiter`.

    Args:
        wait_scope: what the wait budget covers, for the help: "in total" or "per run".
    """
    parser.add_argument("--quiet-threshold", type=float, default=threshold,
                        help="before each measurement wait until other processes use fewer cores than this")
    parser.add_argument("--wait-quiet", type=float, default=wait,
                        help=f"seconds to wait for a quiet machine {wait_scope}, at most")
    if retries is not None:
        parser.add_argument("--retries", type=int, default=retries,
                            help="repeat a measurement during which other processes used more cores, at most this often")


# ================================================================================ memory


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``getrusage(RUSAGE_SELF).ru_maxrss``; Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    """Resident set size of this process now (psutil)."""
    import psutil

    return psutil.Process().memory_info().rss


def gib(value_bytes: int | float | None) -> str:
    """Bytes as GiB with 2 decimals for a table cell; '' for None."""
    return "" if value_bytes is None else f"{value_bytes / GIB:.2f}"


# ======================================================================= worker processes


def error_summary(error: Exception) -> str:
    """A one-line reason for a failure; for TensorFlow's errors, whose first line is often just "Graph execution error:",
    the allocation that ran out of memory, or the first line that is neither traceback nor boilerplate, with the node."""
    text = str(error)
    oom = re.search(r"OOM when allocating tensor with (shape\[[^\]]*\] and type \w+)", text)
    if oom:
        return f"OOM allocating {oom.group(1)}"
    node = re.search(r"Detected at node (\S+)", text)
    skip = ("Graph execution error", "Detected at node", "[[", "Hint:", "dtype:", "tensor_shape", "}")
    # Indented lines are the Python traceback of the node, not the reason.
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line[0].isspace() and not line.startswith(skip)]
    message = lines[0][:120] if lines else type(error).__name__
    dims = re.findall(r"dim \{\s*size: (\d+)", text)
    if dims:  # e.g. "Cannot parse tensor from proto" followed by the tensor's shape
        message += f" [shape ({', '.join(dims)})]"
    return f"{message} at node {node.group(1)}" if node else message


def report_from_worker(measure: Callable[[], dict], identity: dict) -> None:
    """Worker side: run ``measure()`` and print its result as one prefixed JSON line, also on failure.

    Args:
        measure: the measurement; returns a JSON-serialisable dict.
        identity: what was measured (e.g. case and size), put in front of the result.

    The line is ``identity + {"ok": True} + measure()``, or on an exception ``identity +
    {"ok": False, "error": one line, "error_type": class name, "peak_rss": bytes}``.
    """
    try:
        result = {**identity, "ok": True, **measure()}
    except Exception as error:  # noqa: BLE001 - every failure becomes a result line
        result = {**identity, "ok": False, "error": error_summary(error), "error_type": type(error).__name__,
                  "peak_rss": peak_rss_bytes()}
    print(WORKER_RESULT_PREFIX + json.dumps(result), flush=True)


@dataclass
class WorkerRun:
    """What a worker process left behind."""

    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    max_rss_seen: int  # the largest RSS the parent saw (0 without a memory cap: not watched)
    stopped: str | None  # "killed at X GiB" / "timeout (N s)" when the parent stopped it, else None
    result: dict | None  # the last result line of report_from_worker, if any

    def exit_reason(self) -> str:
        """How the process ended: why the parent stopped it, or its signal or exit code."""
        if self.stopped:
            return self.stopped
        code = self.returncode
        if code is not None and code < 0:
            return f"signal {-code}" + (", likely the kernel OOM killer" if code == -9 else "")
        return f"exit code {code}"

    def last_stderr_line(self) -> str:
        """The last line the process wrote to stderr (at most 200 characters), '' for none."""
        lines = self.stderr.strip().splitlines()
        return lines[-1][:200] if lines else ""


def run_worker(script: Path | str, arguments: Sequence[str], timeout_s: float, memory_cap: int | None = None) -> WorkerRun:
    """Run ``python SCRIPT ARGUMENTS`` in the repository root (a benchmark re-invoking itself as a worker).

    The parent polls it every 50 ms and kills it after ``timeout_s`` or, with ``memory_cap``
    (bytes), once its RSS passes the cap (psutil).

    Returns:
        The :class:`WorkerRun`; ``result`` holds the worker's last result line, parsed.
    """
    watch_memory = memory_cap is not None
    if watch_memory:
        import psutil
    command = [sys.executable, str(Path(script).resolve()), *arguments]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=str(REPO_ROOT))
        watched = psutil.Process(process.pid) if watch_memory else None
        max_rss, stopped = 0, None
        while process.poll() is None:
            if watch_memory:
                try:
                    rss = watched.memory_info().rss
                except psutil.Error:
                    rss = 0
                max_rss = max(max_rss, rss)
                if rss > memory_cap:
                    stopped = f"killed at {memory_cap / GIB:.1f} GiB"
            if stopped is None and time.perf_counter() - start > timeout_s:
                stopped = f"timeout ({timeout_s:.0f} s)"
            if stopped:
                process.kill()
                process.wait()
                break
            time.sleep(0.05)
        wall_s = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        out_text, err_text = stdout.read(), stderr.read()
    lines = [line for line in out_text.splitlines() if line.startswith(WORKER_RESULT_PREFIX)]
    result = json.loads(lines[-1][len(WORKER_RESULT_PREFIX):]) if lines and not stopped else None
    return WorkerRun(process.returncode, out_text, err_text, wall_s, max_rss, stopped, result)


# ================================================================================ tables


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str) -> list[str]:
    """The lines of a markdown table.

    Args:
        header: the column names.
        rows: one sequence of cells per row (None -> empty cell, anything else ``str()``).
        align: one letter per column: ``l`` (text) or ``r`` (numbers).

    Returns:
        Header line, alignment line, one line per row.
    """
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} must give l or r for each of the {len(header)} columns")
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if letter == "r" else "---|" for letter in align)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row of {len(row)} cells in a table of {len(header)} columns: {row}")
        lines.append("| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |")
    return lines


def ratio_cell(value: float, reference: float, digits: int = 2) -> str:
    """``value / reference`` as a table cell, e.g. ``38.31x``."""
    return f"{value / reference:.{digits}f}x"


def train_and_evaluate_run(data: str, split: int, epochs: int, output: Path, settings: Mapping[str, object] = {},
                           callbacks: Sequence[object] = ()) -> dict:
    """An experiment's run: the default config on ``data`` with ``settings``, trained into ``output``, then evaluated.

    Args:
        data: the data source; split: ``split.seed``; epochs: ``train.epochs``.
        output: the new run directory.
        settings: further ``section.key`` -> value config settings.
        callbacks: extra Keras callbacks for ``fit``.

    Returns:
        the evaluation report of the run's test people (no baselines); its EER is printed.
    """
    from facetrip.config import Config
    from facetrip.evaluation.report import evaluate_run
    from facetrip.training import prepare_run_dir, train

    config = Config()
    config.set("data.source", data)
    config.set("split.seed", split)
    config.set("train.epochs", epochs)
    for key, value in settings.items():
        config.set(key, value)
    prepare_run_dir(config, output)
    train(config, output, callbacks=callbacks)
    report = evaluate_run(output, baselines=False)
    print(f"{output}: test EER {100 * report['model']['eer']:.2f}%, AUC {report['model']['auc']:.4f}")
    return report
