"""Benchmark facetrip's triplet losses against the classic O(B^3) formulations.

Reproduce (from the repository root; the full run takes several minutes on 2 CPU cores)::

    .venv/bin/python scripts/bench_losses.py --output docs/reports/bench_losses.md   # or: make bench-losses
    .venv/bin/python scripts/bench_losses.py --sizes 64 256 --repeats 2          # quick check
    .venv/bin/python scripts/bench_losses.py --cases batch_all classic_batch_all --output bench.md

For every (case, batch size B) a fresh worker process (this script, re-invoked with
``--worker CASE B``) builds the same inputs, times forward + backward (the gradient of
the loss w.r.t. the embeddings, inside one ``tf.function``: one warm-up call that
traces, then N timed calls; median and min reported) and prints one JSON line with
its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) and its RSS right after the
TensorFlow import and input creation (the baseline, so the incremental cost shows).

The parent watches each worker with psutil and kills it when its RSS passes
``--memory-cap-gib`` or it runs longer than ``--timeout``; such runs are reported as
"killed at X GiB" / "timeout" in the table. The classic formulations build (B, B, B)
tensors (4 GiB each at B = 1024), so from B = 1024 on they are expected to be killed.

Cases:

- ``batch_all``, ``batch_hard``, ``semi_hard``: ``facetrip.losses``.
- ``classic_batch_all``: Olivier Moindrot's blog implementation of batch-all
  (``_pairwise_distances`` with the sqrt mask trick, a (B, B, B) triplet mask).
- ``classic_semi_hard``: TF Addons' ``triplet_semihard_loss`` (the distance matrix
  tiled to (B*B, B)).

Both baselines are re-implemented here in plain TensorFlow (TF Addons is not imported).
Inputs: 128-D embeddings drawn from a seeded standard normal and L2-normalised, labels
P x 4 (P = B / 4 identities of 4 images each), margin 0.2, euclidean distance.

Cross-batch memory (``--memory-sizes``): a separate run that times facetrip's three losses
with M memory rows (``memory_embeddings`` / ``memory_labels``) against the batch-only loss
(M = 0: no memory passed) at each B, and reports the ratios; the classic cases are not run::

    .venv/bin/python scripts/bench_losses.py --sizes 64 512 --memory-sizes 0 4096 65536 \
        --output docs/reports/bench_losses_memory.md

The memory is M further seeded 128-D unit embeddings; its labels are drawn uniformly from
P + M / 4 identities (the batch's P and M / 4 others), so each identity, the batch's
included, has about 4 memory rows: every anchor has positives and negatives in the memory.
The gradient is w.r.t. the batch's embeddings only (memory rows carry none). Repeats are
capped at 3 where B (B + M) > 8M entries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarking import (GIB, REPO_ROOT, current_rss_bytes, gib, markdown_table, peak_rss_bytes, ratio_cell,
                          report_from_worker, run_worker, timed, timed_repeats, write_report)

DEFAULT_SIZES = (64, 256, 512, 1024, 2048, 4096)
OURS = ("batch_all", "batch_hard", "semi_hard")
CLASSIC = ("classic_batch_all", "classic_semi_hard")
CASES = OURS + CLASSIC
BASELINE_OF = {"batch_all": "classic_batch_all", "semi_hard": "classic_semi_hard"}
EMBEDDING_DIM = 128
IMAGES_PER_IDENTITY = 4
MARGIN = 0.2


# =============================================================================== baselines
# Imported lazily (workers only) so that the parent process never loads TensorFlow.


def classic_pairwise_distances(embeddings, squared: bool = False):
    """Moindrot's ``_pairwise_distances``: |a|^2 - 2ab + |b|^2 with the sqrt mask trick."""
    import tensorflow as tf

    dot_product = tf.matmul(embeddings, tf.transpose(embeddings))  # (B, B)
    square_norm = tf.linalg.diag_part(dot_product)  # (B,)
    distances = tf.expand_dims(square_norm, 0) - 2.0 * dot_product + tf.expand_dims(square_norm, 1)  # (B, B)
    distances = tf.maximum(distances, 0.0)  # (B, B)
    if not squared:
        mask = tf.cast(tf.equal(distances, 0.0), tf.float32)  # (B, B)
        distances = distances + mask * 1e-16  # (B, B) keeps sqrt's gradient finite at 0
        distances = tf.sqrt(distances)  # (B, B)
        distances = distances * (1.0 - mask)  # (B, B)
    return distances


def classic_triplet_mask(labels):
    """Moindrot's ``_get_triplet_mask``: (B, B, B) bool, i != j != k, l[i] == l[j] != l[k]."""
    import tensorflow as tf

    indices_equal = tf.cast(tf.eye(tf.shape(labels)[0]), tf.bool)  # (B, B)
    indices_not_equal = tf.logical_not(indices_equal)  # (B, B)
    i_not_equal_j = tf.expand_dims(indices_not_equal, 2)  # (B, B, 1)
    i_not_equal_k = tf.expand_dims(indices_not_equal, 1)  # (B, 1, B)
    j_not_equal_k = tf.expand_dims(indices_not_equal, 0)  # (1, B, B)
    distinct_indices = tf.logical_and(tf.logical_and(i_not_equal_j, i_not_equal_k), j_not_equal_k)  # (B, B, B)

    label_equal = tf.equal(tf.expand_dims(labels, 0), tf.expand_dims(labels, 1))  # (B, B)
    i_equal_j = tf.expand_dims(label_equal, 2)  # (B, B, 1)
    i_equal_k = tf.expand_dims(label_equal, 1)  # (B, 1, B)
    valid_labels = tf.logical_and(i_equal_j, tf.logical_not(i_equal_k))  # (B, B, B)
    return tf.logical_and(distinct_indices, valid_labels)  # (B, B, B)


def classic_batch_all(labels, embeddings, margin: float, squared: bool = False):
    """Moindrot's ``batch_all_triplet_loss``: mean over the valid triplets with positive loss.

    Returns:
        ``(loss, fraction_positive_triplets)``.
    """
    import tensorflow as tf

    pairwise_dist = classic_pairwise_distances(embeddings, squared=squared)  # (B, B)
    anchor_positive_dist = tf.expand_dims(pairwise_dist, 2)  # (B, B, 1)
    anchor_negative_dist = tf.expand_dims(pairwise_dist, 1)  # (B, 1, B)
    triplet_loss = anchor_positive_dist - anchor_negative_dist + margin  # (B, B, B)

    mask = tf.cast(classic_triplet_mask(labels), tf.float32)  # (B, B, B)
    triplet_loss = tf.multiply(mask, triplet_loss)  # (B, B, B)
    triplet_loss = tf.maximum(triplet_loss, 0.0)  # (B, B, B)

    valid_triplets = tf.cast(tf.greater(triplet_loss, 1e-16), tf.float32)  # (B, B, B)
    num_positive_triplets = tf.reduce_sum(valid_triplets)  # ()
    num_valid_triplets = tf.reduce_sum(mask)  # ()
    fraction_positive_triplets = num_positive_triplets / (num_valid_triplets + 1e-16)  # ()
    triplet_loss = tf.reduce_sum(triplet_loss) / (num_positive_triplets + 1e-16)  # ()
    return triplet_loss, fraction_positive_triplets


def tfa_pairwise_distance(feature, squared: bool = False):
    """TF Addons' ``pairwise_distance``: off-diagonal euclidean distances, 0 where <= 0."""
    import tensorflow as tf

    pairwise_distances_squared = tf.math.add(
        tf.math.reduce_sum(tf.math.square(feature), axis=[1], keepdims=True),  # (B, 1)
        tf.math.reduce_sum(tf.math.square(tf.transpose(feature)), axis=[0], keepdims=True),  # (1, B)
    ) - 2.0 * tf.matmul(feature, tf.transpose(feature))  # (B, B)
    pairwise_distances_squared = tf.math.maximum(pairwise_distances_squared, 0.0)  # (B, B)
    error_mask = tf.math.less_equal(pairwise_distances_squared, 0.0)  # (B, B)
    if squared:
        pairwise_distances = pairwise_distances_squared  # (B, B)
    else:
        pairwise_distances = tf.math.sqrt(
            pairwise_distances_squared + tf.cast(error_mask, tf.float32) * 1e-16
        )  # (B, B)
    pairwise_distances = pairwise_distances * tf.cast(tf.math.logical_not(error_mask), tf.float32)  # (B, B)
    num_data = tf.shape(feature)[0]
    mask_offdiagonals = tf.ones_like(pairwise_distances) - tf.linalg.diag(tf.ones([num_data]))  # (B, B)
    return pairwise_distances * mask_offdiagonals  # (B, B)


def _masked_maximum(data, mask, dim: int = 1):
    """TF Addons: per-row maximum of ``data`` over ``mask`` (keepdims)."""
    import tensorflow as tf

    axis_minimums = tf.math.reduce_min(data, dim, keepdims=True)  # (N, 1)
    return tf.math.reduce_max((data - axis_minimums) * mask, dim, keepdims=True) + axis_minimums  # (N, 1)


def _masked_minimum(data, mask, dim: int = 1):
    """TF Addons: per-row minimum of ``data`` over ``mask`` (keepdims)."""
    import tensorflow as tf

    axis_maximums = tf.math.reduce_max(data, dim, keepdims=True)  # (N, 1)
    return tf.math.reduce_min((data - axis_maximums) * mask, dim, keepdims=True) + axis_maximums  # (N, 1)


def classic_semi_hard(labels, embeddings, margin: float):
    """TF Addons' ``triplet_semihard_loss`` (L2 distance), with its (B*B, B) tiling.

    For each (anchor, positive) pair the negative is the closest one farther than the
    positive; where there is none, the farthest negative. Mean hinge over all positive
    pairs.
    """
    import tensorflow as tf

    labels = tf.reshape(labels, [-1, 1])  # (B, 1)
    pdist_matrix = tfa_pairwise_distance(embeddings, squared=False)  # (B, B)
    adjacency = tf.math.equal(labels, tf.transpose(labels))  # (B, B)
    adjacency_not = tf.math.logical_not(adjacency)  # (B, B)
    batch_size = tf.size(labels)

    # Row k*B + a of the tile is D[a, :]; it is compared with D[a, k] (positive k).
    pdist_matrix_tile = tf.tile(pdist_matrix, [batch_size, 1])  # (B*B, B)
    mask = tf.math.logical_and(
        tf.tile(adjacency_not, [batch_size, 1]),  # (B*B, B)
        tf.math.greater(pdist_matrix_tile, tf.reshape(tf.transpose(pdist_matrix), [-1, 1])),  # (B*B, B)
    )  # (B*B, B)
    mask_final = tf.reshape(
        tf.math.greater(tf.math.reduce_sum(tf.cast(mask, tf.float32), 1, keepdims=True), 0.0),  # (B*B, 1)
        [batch_size, batch_size],
    )  # (B, B) [k, a]
    mask_final = tf.transpose(mask_final)  # (B, B) [a, k]

    adjacency_not = tf.cast(adjacency_not, tf.float32)  # (B, B)
    mask = tf.cast(mask, tf.float32)  # (B*B, B)
    negatives_outside = tf.reshape(_masked_minimum(pdist_matrix_tile, mask), [batch_size, batch_size])  # (B, B)
    negatives_outside = tf.transpose(negatives_outside)  # (B, B) [a, k]
    negatives_inside = tf.tile(_masked_maximum(pdist_matrix, adjacency_not), [1, batch_size])  # (B, B)
    semi_hard_negatives = tf.where(mask_final, negatives_outside, negatives_inside)  # (B, B)

    loss_mat = tf.math.add(margin, pdist_matrix - semi_hard_negatives)  # (B, B)
    mask_positives = tf.cast(adjacency, tf.float32) - tf.linalg.diag(tf.ones([batch_size]))  # (B, B)
    num_positives = tf.math.reduce_sum(mask_positives)  # ()
    return tf.math.truediv(
        tf.math.reduce_sum(tf.math.maximum(loss_mat * mask_positives, 0.0)), num_positives
    )  # ()


# ================================================================================= worker


def make_memory(batch_size: int, memory_size: int, seed: int):
    """Seeded (memory labels (M,) int32, L2-normalised memory embeddings (M, 128) float32), numpy.

    Labels are uniform over P + M / 4 identities (ids 0 .. P - 1 are the batch's).
    """
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    embeddings = rng.standard_normal((memory_size, EMBEDDING_DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    pool = batch_size // IMAGES_PER_IDENTITY + memory_size // IMAGES_PER_IDENTITY
    labels = rng.integers(0, pool, size=memory_size).astype(np.int32)
    return labels, embeddings


def make_inputs(batch_size: int, seed: int):
    """Seeded (labels (B,) int32, L2-normalised embeddings (B, 128) float32) as numpy arrays."""
    import numpy as np

    if batch_size % IMAGES_PER_IDENTITY:
        raise ValueError(f"B = {batch_size} is not a multiple of {IMAGES_PER_IDENTITY}.")
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((batch_size, EMBEDDING_DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = np.repeat(np.arange(batch_size // IMAGES_PER_IDENTITY, dtype=np.int32), IMAGES_PER_IDENTITY)
    return labels, embeddings


def loss_function(case: str, memory=None):
    """A function ``(labels, embeddings) -> (loss, fraction or None)`` for one case.

    ``memory``: optional ``{"memory_embeddings": ..., "memory_labels": ...}`` for facetrip's losses.
    """
    from facetrip import losses

    memory = memory or {}
    if memory and case not in OURS:
        raise ValueError(f"{case} takes no cross-batch memory.")
    if case == "batch_all":
        return lambda labels, embeddings: losses.batch_all_triplet_loss(labels, embeddings, MARGIN, **memory)
    if case == "batch_hard":
        return lambda labels, embeddings: (losses.batch_hard_triplet_loss(labels, embeddings, MARGIN, **memory), None)
    if case == "semi_hard":
        return lambda labels, embeddings: (
            losses.batch_semi_hard_triplet_loss(labels, embeddings, MARGIN, **memory), None)
    if case == "classic_batch_all":
        return lambda labels, embeddings: classic_batch_all(labels, embeddings, MARGIN)
    if case == "classic_semi_hard":
        return lambda labels, embeddings: (classic_semi_hard(labels, embeddings, MARGIN), None)
    raise ValueError(f"Unknown case {case!r}: choose from {', '.join(CASES)}.")


def measure_case(case: str, batch_size: int, repeats: int, seed: int, memory_size: int = 0) -> dict:
    """Time forward + backward of one case at one B (with M = ``memory_size`` memory rows) in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO_ROOT))
    import numpy as np
    import tensorflow as tf

    memory = None
    if memory_size > 0:
        memory_labels_np, memory_embeddings_np = make_memory(batch_size, memory_size, seed)
        memory = {"memory_embeddings": tf.constant(memory_embeddings_np),  # (M, 128)
                  "memory_labels": tf.constant(memory_labels_np)}  # (M,)
    loss_fn = loss_function(case, memory)
    labels_np, embeddings_np = make_inputs(batch_size, seed)
    labels = tf.constant(labels_np)  # (B,)
    embeddings = tf.constant(embeddings_np)  # (B, 128)
    baseline_rss = current_rss_bytes()

    @tf.function
    def forward_backward(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss, fraction = loss_fn(labels, embeddings)
        gradient = tape.gradient(loss, embeddings)  # (B, 128)
        fraction = tf.constant(float("nan")) if fraction is None else fraction
        return loss, fraction, gradient

    def call():
        loss, fraction, gradient = forward_backward(labels, embeddings)
        return loss, fraction, gradient.numpy()  # .numpy() forces completion

    warmup_s, _ = timed(call)  # the call that traces
    times, (loss, fraction, gradient_np) = timed_repeats(call, repeats)
    fraction_value = float(fraction.numpy())
    return {
        "loss": float(loss.numpy()),
        "fraction": None if np.isnan(fraction_value) else fraction_value,
        "gradient_norm": float(np.linalg.norm(gradient_np)),
        "gradient_finite": bool(np.isfinite(gradient_np).all()),
        "warmup_s": warmup_s,
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "baseline_rss": baseline_rss,
        "peak_rss": peak_rss_bytes(),
        "tf_version": tf.__version__,
    }


# ================================================================================= parent


@dataclass
class Outcome:
    """One (case, B) measurement, or why there is none."""

    case: str
    batch_size: int
    status: str  # "ok", "killed at X GiB", "timeout", "OOM (...)", "error ..."
    result: dict = field(default_factory=dict)
    max_rss_seen: int = 0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def killed_at_cap(self) -> bool:
        """True when the parent killed the worker for passing the RSS cap."""
        return self.status.startswith("killed at")


def default_repeats(batch_size: int) -> int:
    """Timed repeats: 5 up to B = 512, 3 up to B = 2048, 2 above."""
    if batch_size <= 512:
        return 5
    if batch_size <= 2048:
        return 3
    return 2


def run_case(case: str, batch_size: int, repeats: int, seed: int, memory_cap: int, timeout_s: float,
             memory_size: int = 0) -> Outcome:
    """Run one worker subprocess, killing it past ``memory_cap`` bytes of RSS or ``timeout_s``."""
    arguments = ["--worker", case, str(batch_size), "--repeats", str(repeats), "--seed", str(seed)]
    if memory_size:
        arguments += ["--worker-memory", str(memory_size)]
    run = run_worker(__file__, arguments, timeout_s, memory_cap)
    outcome = Outcome(case, batch_size, status="", max_rss_seen=run.max_rss_seen, wall_s=run.wall_s)
    if run.result is None:
        outcome.status = run.stopped or f"error ({run.exit_reason()})"
        outcome.result = {} if run.stopped else {"error": run.last_stderr_line()}
        return outcome
    outcome.result = run.result
    if outcome.result.get("ok"):
        outcome.status = "ok"
    elif outcome.result.get("error_type") == "ResourceExhaustedError":
        outcome.status = f"OOM: {outcome.result['error'].removeprefix('OOM allocating ')}"
    else:
        outcome.status = f"{outcome.result.get('error_type', 'error')}: {outcome.result.get('error', '')}"
    return outcome


# ================================================================================ report


def _seconds(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if value < 1 else f"{value:.2f}"


def comparison(ours: Outcome, classic: Outcome | None) -> tuple[str, str]:
    """(speed-up = classic time / ours, memory = ours peak / classic peak) as table cells."""
    if classic is None or not ours.ok:
        return "", ""
    if classic.ok:
        memory = ours.result["peak_rss"] / classic.result["peak_rss"]
        return ratio_cell(classic.result["median_s"], ours.result["median_s"], 1), f"{memory:.3f}"
    if classic.killed_at_cap:
        # The classic run was stopped before finishing: its peak was at least the RSS seen.
        bound = max(classic.max_rss_seen, classic.result.get("peak_rss", 0))
        memory = f"< {ours.result['peak_rss'] / bound:.3f}" if bound else "n/a"
        return "n/a (classic killed)", memory
    return "n/a (classic failed)", "n/a"


def results_table(outcomes: dict[tuple[str, int], Outcome], sizes, cases) -> str:
    """The markdown table of all runs."""
    rows = []
    for batch_size in sizes:
        for case in cases:
            outcome = outcomes.get((case, batch_size))
            if outcome is None:
                continue
            result = outcome.result
            classic = outcomes.get((BASELINE_OF.get(case, ""), batch_size))
            speedup, memory = comparison(outcome, classic) if case in BASELINE_OF else ("", "")
            if outcome.ok:
                incremental = result["peak_rss"] - result["baseline_rss"]
                peak = gib(result["peak_rss"])
                cells = [_seconds(result["median_s"]), _seconds(result["min_s"]), peak, gib(incremental),
                         f"{result['loss']:.6g}"]
                status = "ok" if result.get("gradient_finite", True) else "ok (NON-FINITE GRADIENT)"
            else:
                if outcome.killed_at_cap:
                    peak = f">= {gib(outcome.max_rss_seen)}"
                else:  # failed by itself: its own peak is known
                    peak = gib(outcome.result.get("peak_rss") or outcome.max_rss_seen or None)
                cells = ["", "", peak, "", ""]
                status = outcome.status
            rows.append([batch_size, case, status, *cells, speedup, memory])
    header = ["B", "case", "status", "fwd+bwd median (s)", "min (s)", "peak RSS (GiB)", "incr. RSS (GiB)", "loss",
              "vs classic: speed-up", "vs classic: peak-RSS ratio"]
    return "\n".join(markdown_table(header, rows, "rllrrrrrrr"))


def agreement_table(outcomes, sizes) -> str:
    """Loss values of ours next to the classic one on the same inputs, with the relative difference."""
    rows = []
    for batch_size in sizes:
        for ours_case, classic_case in BASELINE_OF.items():
            ours, classic = outcomes.get((ours_case, batch_size)), outcomes.get((classic_case, batch_size))
            if ours is None or classic is None:
                continue
            if not (ours.ok and classic.ok):
                status = classic.status if ours.ok else ours.status
                rows.append([batch_size, ours_case, _loss(ours), classic_case, _loss(classic),
                             f"n/a ({status.split(':')[0]})", ""])
                continue
            a, b = ours.result["loss"], classic.result["loss"]
            relative = abs(a - b) / max(abs(b), 1e-30)
            fractions = ""
            if ours.result.get("fraction") is not None and classic.result.get("fraction") is not None:
                fractions = f"{ours.result['fraction']:.6f} / {classic.result['fraction']:.6f}"
            rows.append([batch_size, ours_case, f"{a:.8g}", classic_case, f"{b:.8g}", f"{relative:.2e}", fractions])
    header = ["B", "ours", "loss (ours)", "classic", "loss (classic)", "relative diff", "fraction ours / classic"]
    return "\n".join(markdown_table(header, rows, "rlrlrrl"))


def _loss(outcome: Outcome) -> str:
    return f"{outcome.result['loss']:.8g}" if outcome.ok else ""


def target_checks(outcomes) -> list[str]:
    """PASS / FAIL / SKIP lines for the performance targets."""
    lines = []

    def get(case, batch_size):
        return outcomes.get((case, batch_size))

    # B = 512: batch_all >= 10x faster than classic_batch_all with <= 1/4 of its peak RSS.
    ours, classic = get("batch_all", 512), get("classic_batch_all", 512)
    name = "B=512 batch_all >= 10x faster than classic_batch_all, <= 1/4 of its peak RSS"
    if ours is None or classic is None:
        lines.append(f"SKIP  {name} (not run)")
    elif not ours.ok:
        lines.append(f"FAIL  {name}: batch_all {ours.status}")
    elif not classic.ok:
        bound = max(classic.max_rss_seen, classic.result.get("peak_rss", 0))
        verdict = "PASS" if classic.killed_at_cap and ours.result["peak_rss"] <= bound / 4 else "FAIL"
        lines.append(f"{verdict}  {name}: classic {classic.status} (speed-up not measurable)")
    else:
        speedup = classic.result["median_s"] / ours.result["median_s"]
        ratio = ours.result["peak_rss"] / classic.result["peak_rss"]
        verdict = "PASS" if speedup >= 10 and ratio <= 0.25 else "FAIL"
        ours_incremental = ours.result["peak_rss"] - ours.result["baseline_rss"]
        classic_incremental = classic.result["peak_rss"] - classic.result["baseline_rss"]
        lines.append(f"{verdict}  {name}: speed-up {speedup:.1f}x, peak-RSS ratio {ratio:.3f} "
                     f"({gib(ours.result['peak_rss'])} vs {gib(classic.result['peak_rss'])} GiB; "
                     f"incremental {gib(ours_incremental)} vs {gib(classic_incremental)} GiB, "
                     f"ratio {ours_incremental / max(classic_incremental, 1):.3f}, for information)")

    # B = 4096: batch_all and semi_hard fwd+bwd <= 5 s and <= 2.5 GiB peak RSS.
    for case in ("batch_all", "semi_hard"):
        outcome = get(case, 4096)
        name = f"B=4096 {case} fwd+bwd <= 5 s and peak RSS <= 2.5 GiB"
        if outcome is None:
            lines.append(f"SKIP  {name} (not run)")
        elif not outcome.ok:
            lines.append(f"FAIL  {name}: {outcome.status}")
        else:
            median, peak = outcome.result["median_s"], outcome.result["peak_rss"]
            verdict = "PASS" if median <= 5 and peak <= 2.5 * GIB else "FAIL"
            lines.append(f"{verdict}  {name}: {median:.2f} s, {gib(peak)} GiB")

    # B = 4096: batch_hard < 1 s.
    outcome = get("batch_hard", 4096)
    name = "B=4096 batch_hard fwd+bwd < 1 s"
    if outcome is None:
        lines.append(f"SKIP  {name} (not run)")
    elif not outcome.ok:
        lines.append(f"FAIL  {name}: {outcome.status}")
    else:
        median = outcome.result["median_s"]
        lines.append(f"{'PASS' if median < 1 else 'FAIL'}  {name}: {median:.3f} s")
    return lines


# =================================================================================== main


# ======================================================================= cross-batch memory


def memory_repeats(batch_size: int, memory_size: int, requested: int | None) -> int:
    """Timed repeats with a memory: as requested (default as without one), at most 3 past 8M entries."""
    repeats = requested or default_repeats(batch_size)
    return min(repeats, 3) if batch_size * (batch_size + memory_size) > 8_000_000 else repeats


def memory_table(outcomes: dict[tuple[str, int, int], Outcome], sizes, memory_sizes, cases) -> str:
    """The markdown table of the memory run: each (B, case, M) with its ratios to M = 0 (batch-only)."""
    rows = []
    for batch_size in sizes:
        for case in cases:
            reference = outcomes.get((case, batch_size, 0))
            for memory_size in memory_sizes:
                outcome = outcomes.get((case, batch_size, memory_size))
                if outcome is None:
                    continue
                result = outcome.result
                if not outcome.ok:
                    peak = (f">= {gib(outcome.max_rss_seen)}" if outcome.killed_at_cap
                            else gib(result.get("peak_rss") or outcome.max_rss_seen or None))
                    rows.append([batch_size, case, f"{memory_size:,}", outcome.status, "", "", peak, "", "", "", ""])
                    continue
                time_ratio = memory_ratio = incremental_ratio = ""
                incremental = result["peak_rss"] - result["baseline_rss"]
                if reference is not None and reference.ok and memory_size:
                    ref = reference.result
                    time_ratio = f"{result['median_s'] / ref['median_s']:.2f}x"
                    memory_ratio = f"{result['peak_rss'] / ref['peak_rss']:.2f}x"
                    incremental_ratio = f"{incremental / max(ref['peak_rss'] - ref['baseline_rss'], 1):.1f}x"
                status = "ok" if result.get("gradient_finite", True) else "ok (NON-FINITE GRADIENT)"
                rows.append([batch_size, case, f"{memory_size:,}" if memory_size else "0 (batch-only)", status,
                             _seconds(result["median_s"]), _seconds(result["min_s"]), gib(result["peak_rss"]),
                             gib(incremental), time_ratio, memory_ratio, incremental_ratio])
    header = ["B", "case", "M", "status", "fwd+bwd median (s)", "min (s)", "peak RSS (GiB)", "incr. RSS (GiB)",
              "time vs M=0", "peak RSS vs M=0", "incr. RSS vs M=0"]
    return "\n".join(markdown_table(header, rows, "rlllrrrrrrr"))


def memory_main(args) -> int:
    """The ``--memory-sizes`` run: facetrip's losses with a cross-batch memory vs the batch-only loss."""
    memory_cap = int(args.memory_cap_gib * GIB)
    cases = [case for case in OURS if case in args.cases]
    memory_sizes = sorted(set(args.memory_sizes) | {0})  # M = 0 is the reference
    outcomes: dict[tuple[str, int, int], Outcome] = {}
    for batch_size in args.sizes:
        for case in cases:
            for memory_size in memory_sizes:
                repeats = memory_repeats(batch_size, memory_size, args.repeats)
                outcome = run_case(case, batch_size, repeats, args.seed, memory_cap, args.timeout, memory_size)
                outcomes[(case, batch_size, memory_size)] = outcome
                detail = (f"median {outcome.result['median_s']:.4f} s, peak {gib(outcome.result['peak_rss'])} GiB, "
                          f"loss {outcome.result['loss']:.6g}") if outcome.ok else outcome.result.get("error", "")
                print(f"[{outcome.wall_s:6.1f} s] B={batch_size:<5} M={memory_size:<6} {case:<11} "
                      f"{outcome.status:<10} {detail}", file=sys.stderr, flush=True)

    tf_version = next((o.result["tf_version"] for o in outcomes.values() if o.ok), "?")
    command = (f".venv/bin/python scripts/bench_losses.py --sizes {' '.join(map(str, args.sizes))} "
               f"--memory-sizes {' '.join(map(str, args.memory_sizes))}"
               + (f" --repeats {args.repeats}" if args.repeats else "")
               + (f" --output {args.output}" if args.output else ""))
    report = "\n".join([
        "## Triplet-loss benchmark: cross-batch memory",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `{command}` - TensorFlow {tf_version}, {os.cpu_count()} CPU "
        f"cores, embeddings {EMBEDDING_DIM}-D L2-normalised (seed {args.seed}), labels P x {IMAGES_PER_IDENTITY}, "
        f"margin {MARGIN}, euclidean. M memory rows: further {EMBEDDING_DIM}-D unit embeddings, labels uniform over "
        f"P + M / {IMAGES_PER_IDENTITY} identities (the batch's included), passed as `memory_embeddings` / "
        "`memory_labels`; M = 0 is the batch-only loss (no memory passed). Forward + backward (gradient w.r.t. the "
        "batch's embeddings) in a tf.function, one process per row, one warm-up call then timed calls "
        f"({args.repeats or 5} at B <= 512, at most 3 where B (B + M) > 8M); memory cap {args.memory_cap_gib:g} GiB, "
        f"timeout {args.timeout:g} s.",
        "Peak RSS is the whole process (`ru_maxrss`); incremental = peak - RSS after the TF import and input creation "
        "(the memory's inputs included in that baseline). Ratios are to the same case and B with M = 0.",
        "",
        memory_table(outcomes, args.sizes, memory_sizes, cases),
    ])
    print(report, flush=True)
    write_report(args.output, report + "\n")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="batch sizes B")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="losses to run")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats after the warm-up (default: 5 for B <= 512, 3 for B <= 2048, else 2)")
    parser.add_argument("--memory-cap-gib", type=float, default=8.0, help="kill a worker past this RSS")
    parser.add_argument("--timeout", type=float, default=300.0, help="kill a worker after this many seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the embeddings")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=None,
                        help="cross-batch memory run: M memory rows per case (0 = batch-only, the reference); "
                             "runs batch_all, batch_hard, semi_hard only")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "B"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-memory", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        case, batch_size = args.worker[0], int(args.worker[1])
        repeats = args.repeats or default_repeats(batch_size)
        if args.worker_memory:
            repeats = memory_repeats(batch_size, args.worker_memory, args.repeats)
        report_from_worker(lambda: measure_case(case, batch_size, repeats, args.seed, args.worker_memory),
                           {"case": case, "B": batch_size, "M": args.worker_memory})
        return 0
    if args.memory_sizes is not None:
        return memory_main(args)

    memory_cap = int(args.memory_cap_gib * GIB)
    cases = [case for case in CASES if case in args.cases]
    outcomes: dict[tuple[str, int], Outcome] = {}
    for batch_size in args.sizes:
        for case in cases:
            repeats = args.repeats or default_repeats(batch_size)
            outcome = run_case(case, batch_size, repeats, args.seed, memory_cap, args.timeout)
            outcomes[(case, batch_size)] = outcome
            detail = (f"median {outcome.result['median_s']:.4f} s, peak {gib(outcome.result['peak_rss'])} GiB, "
                      f"loss {outcome.result['loss']:.6g}") if outcome.ok else outcome.result.get("error", "")
            print(f"[{outcome.wall_s:6.1f} s] B={batch_size:<5} {case:<18} {outcome.status:<24} {detail}",
                  file=sys.stderr, flush=True)

    tf_version = next((o.result["tf_version"] for o in outcomes.values() if o.ok), "?")
    report = "\n".join([
        "## Triplet-loss benchmark",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `.venv/bin/python scripts/bench_losses.py` (or `make bench-losses`) - "
        f"TensorFlow {tf_version}, {os.cpu_count()} CPU cores, "
        f"embeddings {EMBEDDING_DIM}-D L2-normalised (seed {args.seed}), labels P x {IMAGES_PER_IDENTITY}, "
        f"margin {MARGIN}, euclidean; forward + backward in a tf.function, one process per row, "
        f"memory cap {args.memory_cap_gib:g} GiB, timeout {args.timeout:g} s.",
        "Peak RSS is the whole process (`ru_maxrss`); incremental = peak - RSS after the TF import and input creation.",
        "Speed-up = classic median / ours; peak-RSS ratio = ours / classic (< 1 is better).",
        "",
        results_table(outcomes, args.sizes, cases),
        "",
        "### Agreement with the classic formulations (same inputs)",
        "",
        agreement_table(outcomes, args.sizes),
        "",
        "### Targets",
        "",
        "```",
        *target_checks(outcomes),
        "```",
    ])
    print(report, flush=True)
    write_report(args.output, report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
