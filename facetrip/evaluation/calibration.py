"""Calibrating a verification threshold to a target false accept rate.

Pure NumPy (and ``scipy.stats`` for the interval and the normal quantile); no TensorFlow,
no files.

A pair is accepted as "same person" when ``distance <= threshold``. Over ``N``
different-identity pairs with sorted distances ``d_(1) <= ... <= d_(N)``, a threshold ``t``
has the false accept rate

    FAR(t) = #{i : d_i <= t} / N

and ``FAR(t) <= target`` allows at most ``k = floor(target * N)`` false accepts. When
``k < MIN_FALSE_ACCEPTS`` (fewer than ``MIN_FALSE_ACCEPTS / target`` different pairs, so
one false accept moves the FAR by more than a third of the target) the empirical rule
says little about strangers, and the threshold comes from a normal fit of the
different-pair distances instead (:func:`threshold_for_far` says why).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

# With fewer allowed false accepts than this, the threshold comes from a normal tail fit.
MIN_FALSE_ACCEPTS = 3
# The most different-pair distances saved with a run (for `facetrip verify --far`).
MAX_SAVED_DISTANCES = 20_000
# Decimal digits the saved distances keep.
SAVED_DIGITS = 6
# Metadata key of the saved, sorted different-pair distances of the calibration pairs.
SAVED_DISTANCES_KEY = "calibration_different_distances"
# How the threshold of a run saved before calibration to a target FAR was chosen, by its
# threshold_source. Newer runs carry their rule in metadata["calibration"]["rule"].
THRESHOLD_RULES = {
    "dev": "equal error rate on dev identities",
    "train": "equal error rate on train identities (the run has no dev identities)",
}
# Margin when counting target * N false accepts (FAR values are ratios k / N).
_COUNT_TOLERANCE = 1e-9


class CalibrationError(ValueError):
    """A threshold that cannot be chosen as asked: one line saying why and what to do."""


class FarThreshold(NamedTuple):
    """A threshold chosen for a false accept rate.

    Attributes:
        threshold: accept a pair when its distance is at most this.
        rule: a short sentence saying how it was chosen.
        fallback: None for the empirical rule, else one line saying why and what was done instead.
    """

    threshold: float
    rule: str
    fallback: str | None


def check_target_far(target_far: float) -> float:
    """``target_far`` as a float; raises :class:`CalibrationError` unless ``0 < target_far < 1``."""
    try:
        value = float(target_far)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:  # also refuses NaN
        raise CalibrationError(
            f"A target false accept rate must lie strictly between 0 and 1 (0.01 = 1%), not {target_far!r}."
        )
    return value


def percent(rate: float) -> str:
    """A rate as a short percentage: 0.01 -> ``1%``, 0.0005 -> ``0.05%``."""
    return f"{rate * 100:.3g}%"


def allowed_false_accepts(target_far: float, num_different: int) -> int:
    """``k = floor(target_far * N)``: the most false accepts among N different pairs with FAR <= target_far."""
    return int(math.floor(target_far * num_different + _COUNT_TOLERANCE))


def pairs_needed(target_far: float) -> int:
    """The fewest different pairs whose empirical FAR can reach ``target_far`` with ``MIN_FALSE_ACCEPTS`` false accepts.

    ``N = ceil(MIN_FALSE_ACCEPTS / target_far)``: 300 pairs for a 1% target.
    """
    return int(math.ceil(MIN_FALSE_ACCEPTS / target_far - _COUNT_TOLERANCE))


def empirical_threshold(sorted_different: np.ndarray, target_far: float) -> float:
    """The largest different-pair distance that can be accepted with ``FAR <= target_far``.

    With ``k = floor(target_far * N)``, the pair at ``d_(k+1)`` (and every pair tied with
    it) must be rejected, so the threshold is the largest distance strictly below
    ``d_(k+1)``: ``d_(j)`` with ``j = #{i : d_i < d_(k+1)} <= k``, and ``FAR = j / N``.
    With ties at ``d_(k+1)``, ``j < k``. When no pair can be accepted (``j = 0``), it is
    the float just below ``d_(1)``.

    Any threshold in ``[d_(j), d_(k+1))`` gives the same FAR on these pairs; the lower end
    is taken because, for a new different pair from the same distribution, the chance
    that ``d <= d_(j)`` is ``j / (N + 1) <= target_far`` on average (order statistics),
    while just below ``d_(k+1)`` it is up to ``(k + 1) / (N + 1)``, above the target.

    Args:
        sorted_different: (N,) different-pair distances, ascending, N >= 1.
        target_far: in (0, 1).

    Returns:
        The threshold.
    """
    cutoff = sorted_different[allowed_false_accepts(target_far, len(sorted_different))]  # k < N since target_far < 1
    accepted = int(np.searchsorted(sorted_different, cutoff, side="left"))  # j
    return float(sorted_different[accepted - 1]) if accepted else float(np.nextafter(cutoff, -np.inf))


def normal_tail_threshold(different: np.ndarray, target_far: float) -> tuple[float, float, float]:
    """The ``target_far`` quantile of a normal fit of the different-pair distances.

    ``t = mean + sd * Phi^-1(target_far)``, with the sample standard deviation (ddof 1;
    0 for a single pair).

    Returns:
        ``(threshold, mean, sd)``.
    """
    from scipy.stats import norm

    mean = float(np.mean(different))
    sd = float(np.std(different, ddof=1)) if len(different) > 1 else 0.0
    return mean + sd * float(norm.ppf(target_far)), mean, sd


def threshold_for_far(different_distances, far: float, pairs_name: str = "") -> FarThreshold:
    """The threshold for a false accept rate, from different-identity pair distances.

    With at least :func:`pairs_needed` pairs (``floor(far * N) >= MIN_FALSE_ACCEPTS``), the
    empirical rule: :func:`empirical_threshold`, so the FAR on these pairs is at most ``far``.

    With fewer, one false accept moves the empirical FAR by more than ``far / 3`` and the
    empirical rule can only sit at one of the few smallest distances (often none can be
    accepted, so the threshold lands wherever the smallest stranger distance happens to
    be). A normal fit of all N distances uses the whole distribution to extrapolate into its
    lower tail: the threshold is :func:`normal_tail_threshold`, lowered to the empirical
    threshold when it would accept more than ``floor(far * N)`` of these pairs, so the FAR
    on them never exceeds ``far`` (the fit never contradicts what was observed). The
    equal-error threshold is no fallback: on a few well separated pairs it sits anywhere
    in the gap between the classes, whatever FAR that gives on strangers.

    Args:
        different_distances: (N,) different-identity pair distances, any order, N >= 1.
        far: the target false accept rate, in (0, 1).
        pairs_name: a word for the pairs in the rule (``dev``), or "".

    Returns:
        :class:`FarThreshold`.

    Raises:
        CalibrationError: ``far`` outside (0, 1), no distances, or a distance not finite.
    """
    far = check_target_far(far)
    different = np.sort(np.asarray(different_distances, np.float64).reshape(-1))
    if not len(different):
        raise CalibrationError("A threshold for a false accept rate needs different-identity pair distances; there are none.")
    if not np.all(np.isfinite(different)):
        raise CalibrationError("The different-identity pair distances hold NaN or infinite values: check the embeddings.")
    described = f"{len(different):,} {pairs_name + ' ' if pairs_name else ''}different-identity pairs"
    empirical = empirical_threshold(different, far)
    allowed = allowed_false_accepts(far, len(different))
    if allowed >= MIN_FALSE_ACCEPTS:
        return FarThreshold(empirical, f"largest distance accepting at most {percent(far)} of {described}", None)
    fitted, mean, sd = normal_tail_threshold(different, far)
    if fitted < different[allowed]:  # accepts at most `allowed` of these pairs
        lowered = ""
    elif allowed:
        lowered = f", lowered to {empirical:.4g} so that at most {allowed} of them are accepted"
    else:
        lowered = f", lowered below their smallest distance ({different[0]:.4g}) so that none of them is accepted"
    fallback = (
        f"only {described}: a {percent(far)} FAR allows {allowed} false accept{'' if allowed == 1 else 's'} there "
        f"({pairs_needed(far):,} pairs give {MIN_FALSE_ACCEPTS}), so the threshold is the {percent(far)} quantile of a normal "
        f"fit of their distances (mean {mean:.4g}, sd {sd:.4g}){lowered}"
    )
    return FarThreshold(empirical if lowered else fitted, f"{percent(far)} quantile of a normal fit of {described}", fallback)


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) confidence interval of a binomial proportion.

    With ``x`` successes in ``n`` trials and ``alpha = 1 - confidence``:
    ``low = Beta^-1(alpha / 2; x, n - x + 1)`` (0 when x = 0) and
    ``high = Beta^-1(1 - alpha / 2; x + 1, n - x)`` (1 when x = n).

    Returns:
        ``(low, high)``.
    """
    from scipy.stats import beta

    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def calibrate_to_far(distances, same, target_far: float = 0.01, confidence: float = 0.95,
                     pairs_name: str = "") -> dict[str, Any]:
    """A verification threshold whose false accept rate on these pairs is at most ``target_far``.

    The threshold is :func:`threshold_for_far` of the different-pair distances (the
    empirical rule with enough pairs, a normal tail fit with too few). On the same pairs:

        far = #{different, d <= t} / N     far_interval: Clopper-Pearson at ``confidence``
        frr = #{same, d > t} / P

    Args:
        distances: (M,) pair distances (smaller = more alike).
        same: (M,) bool, the pair shows one identity.
        target_far: the false accept rate to calibrate to, in (0, 1).
        confidence: of the FAR interval, in (0, 1).
        pairs_name: a word for the pairs in the rule (``dev``), or "".

    Returns:
        JSON-ready ``{"threshold", "rule", "target_far", "far", "far_interval": [low, high],
        "confidence", "false_accepts", "frr", "pairs": {"same", "different"}, "fallback"}``;
        ``fallback`` is None, or one line saying why the empirical rule was not used and
        what was done instead.

    Raises:
        CalibrationError (a ValueError): no same or no different pairs, a distance not
            finite, ``target_far`` or ``confidence`` outside (0, 1), or arrays of different lengths.
    """
    target_far = check_target_far(target_far)
    if not 0.0 < float(confidence) < 1.0:
        raise CalibrationError(f"The confidence of the FAR interval must lie strictly between 0 and 1, not {confidence!r}.")
    distances = np.asarray(distances, np.float64).reshape(-1)
    same = np.asarray(same, bool).reshape(-1)
    if len(distances) != len(same):
        raise CalibrationError(f"{len(distances)} distances but {len(same)} same-identity flags: give one flag per pair.")
    if not np.all(np.isfinite(distances)):
        raise CalibrationError("The pair distances hold NaN or infinite values: check the embeddings.")
    num_same, num_different = int(same.sum()), int((~same).sum())
    if not num_same or not num_different:
        raise CalibrationError(
            f"Calibrating a threshold needs same-identity and different-identity pairs, got {num_same} and {num_different}: "
            f"use at least two identities, one with two or more images."
        )
    chosen = threshold_for_far(distances[~same], target_far, pairs_name)
    false_accepts = int(np.sum(distances[~same] <= chosen.threshold))
    low, high = clopper_pearson(false_accepts, num_different, confidence)
    return {
        "threshold": chosen.threshold,
        "rule": chosen.rule,
        "target_far": target_far,
        "far": false_accepts / num_different,
        "far_interval": [low, high],
        "confidence": float(confidence),
        "false_accepts": false_accepts,
        "frr": float(np.mean(distances[same] > chosen.threshold)),
        "pairs": {"same": num_same, "different": num_different},
        "fallback": chosen.fallback,
    }


def saved_distances(different_distances, max_values: int = MAX_SAVED_DISTANCES, digits: int = SAVED_DIGITS) -> list[float]:
    """A compact sorted sample of different-pair distances to save with a run.

    All of them when there are at most ``max_values``; otherwise ``max_values`` evenly
    spaced order statistics ``d_(round(i (N - 1) / (max_values - 1)))``, i = 0 .. max_values - 1
    (the smallest and largest kept), so FAR resolution is ``1 / max_values``. Rounded to
    ``digits`` decimals.

    Returns:
        An ascending list of floats (JSON-ready).
    """
    ordered = np.sort(np.asarray(different_distances, np.float64).reshape(-1))
    if len(ordered) > max_values:
        ordered = ordered[np.round(np.linspace(0, len(ordered) - 1, max_values)).astype(np.int64)]
    return np.round(ordered, digits).tolist()


def saved_threshold_rule(metadata: dict) -> str:
    """How the threshold saved with a run was chosen, from its metadata (old runs: :data:`THRESHOLD_RULES`)."""
    calibration = metadata.get("calibration") or {}
    if calibration.get("rule"):
        return str(calibration["rule"])
    source = metadata.get("threshold_source", "dev")
    return THRESHOLD_RULES.get(source, f"equal error rate on {source} identities")


def verification_threshold(metadata: dict, threshold: float | None = None, far: float | None = None) -> tuple[float | None, str]:
    """The threshold a verification uses: one given, one for a false accept rate, or the run's.

    Args:
        metadata: the run's metadata.
        threshold: use this threshold.
        far: use :func:`threshold_for_far` of the run's saved different-pair distances
            (``metadata[SAVED_DISTANCES_KEY]``) at this false accept rate.

    Returns:
        ``(threshold, rule)``: the threshold (None when neither is given and the run has
        none) and a short sentence saying how it was chosen.

    Raises:
        CalibrationError: both given, ``far`` outside (0, 1), a threshold not finite, or
            ``far`` for a run that saved no distances.
    """
    if threshold is not None and far is not None:
        raise CalibrationError("Give a threshold or a false accept rate, not both.")
    if threshold is not None:
        if not math.isfinite(float(threshold)):
            raise CalibrationError(f"A threshold must be a finite distance, not {threshold!r}.")
        return float(threshold), f"given threshold {float(threshold):g}"
    if far is not None:
        far = check_target_far(far)
        distances = metadata.get(SAVED_DISTANCES_KEY)
        if not distances:
            raise CalibrationError(
                "This run's metadata.json saved no calibration distances, so no threshold can be set for a false accept "
                "rate: give a threshold (--threshold X) or train the run again with this facetrip version."
            )
        chosen = threshold_for_far(distances, far, f"saved {metadata.get('threshold_source', 'dev')}")
        return chosen.threshold, chosen.fallback or chosen.rule
    saved = metadata.get("threshold")
    return (None, "the run has no calibrated threshold") if saved is None else (float(saved), saved_threshold_rule(metadata))
