"""Threshold calibration to a target false accept rate, and the threshold `facetrip verify` decides with.

The pair sets are small enough to work out by hand; each docstring holds the derivation.
"""

import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from conftest import run_cli
from facetrip.evaluation.calibration import (
    MAX_SAVED_DISTANCES,
    MIN_FALSE_ACCEPTS,
    SAVED_DISTANCES_KEY,
    CalibrationError,
    calibrate_to_far,
    clopper_pearson,
    empirical_threshold,
    pairs_needed,
    saved_distances,
    saved_threshold_rule,
    threshold_for_far,
    verification_threshold,
)


def pairs(different, same_distances):
    """(distances, same) with the different pairs first."""
    distances = np.concatenate([np.asarray(different, float), np.asarray(same_distances, float)])
    return distances, np.r_[np.zeros(len(different), bool), np.ones(len(same_distances), bool)]


# ----------------------------------------------------------------------------- the empirical rule


def test_threshold_at_one_percent_by_hand():
    """400 different pairs at 0.01, 0.02, ..., 4.00 (shuffled); same pairs at 0.005, 0.03, 0.04, 0.045, 0.1.

    k = floor(0.01 * 400) = 4 false accepts are allowed, so the 5th smallest different
    distance (0.05) must be rejected and the threshold is the 4th, 0.04: FAR = 4/400 = 1%.
    Same pairs 0.045 and 0.1 lie above it (0.04 itself is accepted: d <= t), so FRR = 2/5.
    """
    different = np.random.default_rng(0).permutation(np.arange(1, 401) / 100)
    calibration = calibrate_to_far(*pairs(different, [0.005, 0.03, 0.04, 0.045, 0.1]), target_far=0.01)
    assert calibration["threshold"] == 0.04
    assert (calibration["far"], calibration["false_accepts"], calibration["frr"]) == (0.01, 4, 0.4)
    assert calibration["pairs"] == {"same": 5, "different": 400} and calibration["fallback"] is None
    assert calibration["rule"] == "largest distance accepting at most 1% of 400 different-identity pairs"
    assert calibration["target_far"] == 0.01 and calibration["confidence"] == 0.95


def test_ties_at_the_cut_are_all_rejected():
    """Different distances 1, 2, 3, 4, 4, 4, 5, 6, ..., 398 (400 pairs), target 1%: k = 4.

    The 5th smallest is a 4, so every 4 must be rejected (accepting one accepts all three,
    6 false accepts): the threshold is 3 and FAR = 3/400. A same pair at exactly 3 is accepted.
    """
    different = np.r_[1, 2, 3, 4, 4, 4, np.arange(5, 399)]
    assert len(different) == 400
    calibration = calibrate_to_far(*pairs(different, [3.0, 3.5]), target_far=0.01)
    assert calibration["threshold"] == 3.0
    assert (calibration["false_accepts"], calibration["far"], calibration["frr"]) == (3, 3 / 400, 0.5)


def test_ties_below_the_cut_are_all_accepted():
    """Different distances 1, 1, 1, 1, 2, 3, ... (400 pairs), target 1%: k = 4, the 5th smallest is 2, so the threshold is 1."""
    different = np.r_[1, 1, 1, 1, np.arange(2, 398)]
    assert empirical_threshold(np.sort(different.astype(float)), 0.01) == 1.0


def test_no_different_pair_can_be_accepted_when_the_smallest_is_tied_too_often():
    """Five different pairs at 0.5 among 400, k = 4: none can be accepted; the threshold is just below 0.5."""
    different = np.sort(np.r_[np.full(5, 0.5), np.linspace(1, 2, 395)])
    threshold = empirical_threshold(different, 0.01)
    assert threshold < 0.5 and threshold == np.nextafter(0.5, 0)


@pytest.mark.parametrize("seed", range(6))
def test_far_never_exceeds_the_target_and_the_threshold_is_the_largest_such_distance(seed):
    """Random sizes, targets and coarse (tied) distances: FAR <= target, and accepting the next
    larger different distance would exceed it."""
    rng = np.random.default_rng(seed)
    target = float(rng.choice([0.001, 0.01, 0.05, 0.1, 0.25]))
    num_different = int(rng.integers(pairs_needed(target), pairs_needed(target) + 3000))
    different = np.round(rng.gamma(4.0, 0.25, num_different), int(rng.integers(1, 4)))  # rounding makes ties
    calibration = calibrate_to_far(*pairs(different, rng.uniform(0, 1, 50)), target_far=target)
    assert calibration["fallback"] is None
    assert calibration["far"] <= target + 1e-12
    larger = different[different > calibration["threshold"]]
    assert np.mean(different <= larger.min()) > target


def test_the_rule_is_unbiased_for_new_strangers():
    """For N normal distances, the k-th order statistic's population FAR averages k / (N + 1) <= target."""
    population_fars = [
        norm.cdf(threshold_for_far(np.random.default_rng(seed).normal(0, 1, 1000), 0.01).threshold) for seed in range(200)
    ]
    assert np.mean(population_fars) == pytest.approx(10 / 1001, rel=0.08)


# ----------------------------------------------------------------------------- the interval


@pytest.mark.parametrize(("successes", "trials"), [(0, 40), (1, 40), (4, 400), (10, 1000), (40, 40), (7, 13)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipys_exact_binomial_interval(successes, trials, confidence):
    reference = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="exact")
    low, high = clopper_pearson(successes, trials, confidence)
    assert low == pytest.approx(reference.low, abs=1e-12) and high == pytest.approx(reference.high, abs=1e-12)


def test_calibration_reports_the_interval_of_its_false_accepts():
    different = np.arange(1, 401) / 100
    calibration = calibrate_to_far(*pairs(different, [0.1]), target_far=0.01, confidence=0.9)
    reference = binomtest(4, 400).proportion_ci(confidence_level=0.9, method="exact")
    assert calibration["far_interval"] == pytest.approx([reference.low, reference.high])
    assert calibration["far_interval"][0] <= calibration["far"] <= calibration["far_interval"][1]


# ----------------------------------------------------------------------------- too few pairs


def test_too_few_pairs_fall_back_to_a_normal_tail_fit_and_say_so():
    """40 different pairs, 20 at 0.9 and 20 at 1.1, target 1%: k = floor(0.4) = 0 < 3 (300 pairs would allow 3).

    Normal fit: mean 1, sd = sqrt(40 * 0.01 / 39) = 0.1 * sqrt(40/39); threshold =
    1 + sd * Phi^-1(0.01) = 1 - 2.3263 * 0.10127 = 0.7644, below the smallest distance
    (0.9), so no different pair is accepted.
    """
    different = np.r_[np.full(20, 0.9), np.full(20, 1.1)]
    calibration = calibrate_to_far(*pairs(different, [0.2, 0.8]), target_far=0.01)
    expected = 1 + 0.1 * math.sqrt(40 / 39) * norm.ppf(0.01)
    assert calibration["threshold"] == pytest.approx(expected) and calibration["threshold"] == pytest.approx(0.7644, abs=1e-4)
    assert (calibration["far"], calibration["frr"]) == (0.0, 0.5)
    assert calibration["fallback"] == (
        "only 40 different-identity pairs: a 1% FAR allows 0 false accepts there (300 pairs give 3), so the threshold is "
        "the 1% quantile of a normal fit of their distances (mean 1, sd 0.1013)"
    )
    assert calibration["rule"] == "1% quantile of a normal fit of 40 different-identity pairs"
    assert pairs_needed(0.01) == 300 and MIN_FALSE_ACCEPTS == 3


def test_the_fit_is_lowered_when_the_data_contradict_it():
    """39 different pairs at 1 and one at 0.2, target 5%: k = floor(2) = 2 < 3.

    Normal fit: mean 0.98, sum of squared deviations 39 * 0.02^2 + 0.78^2 = 0.624, so
    sd = sqrt(0.624 / 39) = 0.8 / sqrt(40) = 0.1265; 5% quantile = 0.98 - 1.6449 * 0.1265
    = 0.7719, which accepts the pair at 0.2 (1 of 40 = 2.5%, within the target) and no
    other: the fit stands. At 1% (k = 0) the fit, 0.98 - 2.3263 * 0.1265 = 0.686, would
    accept the 0.2 pair, more than allowed, so it is lowered below 0.2.
    """
    different = np.r_[np.full(39, 1.0), 0.2]
    at_five = threshold_for_far(different, 0.05)
    assert at_five.threshold == pytest.approx(0.98 + 0.8 / math.sqrt(40) * norm.ppf(0.05))
    assert at_five.threshold == pytest.approx(0.7719, abs=1e-4)
    assert "lowered" not in at_five.fallback and "allows 2 false accepts" in at_five.fallback
    at_one = threshold_for_far(different, 0.01)
    assert at_one.threshold == np.nextafter(0.2, 0)
    assert at_one.fallback.endswith("lowered below their smallest distance (0.2) so that none of them is accepted")


def test_the_fallback_is_near_the_target_on_strangers():
    """60 distances from N(1, 0.1) per draw, target 1%: the fitted threshold's FAR on the whole
    distribution is 1% on average (within the estimate's noise), where the empirical rule
    (no pair may be accepted) would sit at the smallest of 60, about 1 / 61 = 1.6% on average."""
    population_fars = [
        norm.cdf((threshold_for_far(np.random.default_rng(seed).normal(1, 0.1, 60), 0.01).threshold - 1) / 0.1)
        for seed in range(300)
    ]
    assert 0.007 < np.mean(population_fars) < 0.014


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("target", [0, 1, -0.1, 1.5, float("nan"), "x"])
def test_targets_outside_zero_to_one_are_refused(target):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        calibrate_to_far(*pairs([1.0, 2.0], [0.5]), target_far=target)
    with pytest.raises(CalibrationError, match="strictly between 0 and 1"):
        threshold_for_far([1.0, 2.0], target)


def test_one_class_of_pairs_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="got 0 and 2: use at least two identities"):
        calibrate_to_far([1.0, 2.0], [False, False])
    with pytest.raises(ValueError, match="got 2 and 0"):
        calibrate_to_far([1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="3 distances but 2 same-identity flags"):
        calibrate_to_far([1.0, 2.0, 3.0], [True, False])
    with pytest.raises(ValueError, match="NaN or infinite"):
        calibrate_to_far([1.0, float("nan")], [True, False])
    with pytest.raises(ValueError, match="confidence"):
        calibrate_to_far([1.0, 2.0], [True, False], confidence=1.0)


# ----------------------------------------------------------------------------- saved distances and verify


def test_saved_distances_keep_all_of_a_small_set_and_quantiles_of_a_large_one():
    assert saved_distances([3.0, 1.0, 2.1234567]) == [1.0, 2.123457, 3.0]
    large = np.random.default_rng(0).gamma(4.0, 0.25, 3 * MAX_SAVED_DISTANCES + 7)
    saved = np.asarray(saved_distances(large))
    assert len(saved) == MAX_SAVED_DISTANCES and np.all(np.diff(saved) >= 0)
    assert saved[0] == round(large.min(), 6) and saved[-1] == round(large.max(), 6)
    for far in (0.001, 0.01, 0.1):  # the threshold from the quantiles gives about the same FAR on all pairs
        assert np.mean(large <= threshold_for_far(saved, far).threshold) == pytest.approx(far, abs=2 / MAX_SAVED_DISTANCES)


def test_threshold_for_far_ignores_the_order_and_agrees_with_the_calibration():
    different = np.random.default_rng(1).uniform(0, 2, 1000)
    calibration = calibrate_to_far(*pairs(different, [0.1]), target_far=0.02)
    assert threshold_for_far(different[::-1], 0.02).threshold == calibration["threshold"] == np.sort(different)[19]


def test_verify_threshold_comes_from_the_flag_the_far_or_the_run():
    """Saved distances 0.01 .. 4.00 (400 pairs): --far 0.05 allows 20 false accepts, threshold 0.20."""
    calibration = calibrate_to_far(*pairs(np.arange(1, 401) / 100, [0.1]), target_far=0.01, pairs_name="dev")
    metadata = {"threshold": calibration["threshold"], "threshold_source": "dev", "calibration": calibration,
                SAVED_DISTANCES_KEY: saved_distances(np.arange(1, 401) / 100)}
    assert verification_threshold(metadata) == (0.04, "largest distance accepting at most 1% of 400 dev different-identity pairs")
    assert verification_threshold(metadata, threshold=0.7) == (0.7, "given threshold 0.7")
    threshold, rule = verification_threshold(metadata, far=0.05)
    assert threshold == 0.2 and rule == "largest distance accepting at most 5% of 400 saved dev different-identity pairs"
    threshold, rule = verification_threshold(metadata, far=0.001)  # 400 pairs are too few for 0.1%
    assert threshold < 0.01 and "normal fit" in rule and "only 400 saved dev different-identity pairs" in rule
    with pytest.raises(CalibrationError, match="not both"):
        verification_threshold(metadata, threshold=0.7, far=0.05)
    with pytest.raises(CalibrationError, match="strictly between 0 and 1"):
        verification_threshold(metadata, far=1.0)
    with pytest.raises(CalibrationError, match="finite"):
        verification_threshold(metadata, threshold=float("inf"))


def test_runs_without_a_calibration_keep_their_equal_error_rule():
    old_run = {"threshold": 0.8, "threshold_source": "dev"}
    assert verification_threshold(old_run) == (0.8, "equal error rate on dev identities")
    assert saved_threshold_rule({"threshold": 0.8, "threshold_source": "train"}).startswith("equal error rate on train")
    assert verification_threshold({"threshold": None}) == (None, "the run has no calibrated threshold")
    with pytest.raises(CalibrationError, match="saved no calibration distances.*--threshold X"):
        verification_threshold(old_run, far=0.01)


def test_evaluation_reports_the_far_against_the_target():
    """The saved threshold 0.04 of the hand-made calibration, on test pairs whose different
    distances are 0.005, 0.02, 0.5, 0.6 (2 of 4 accepted: FAR 50%, outside [0.27%, 2.5%])."""
    from facetrip.evaluation.report import THRESHOLD_RULES, _threshold_report

    calibration = calibrate_to_far(*pairs(np.arange(1, 401) / 100, [0.1]), target_far=0.01, pairs_name="dev")
    metadata = {"threshold": calibration["threshold"], "threshold_source": "dev", "calibration": calibration, "dev": {"auc": 1.0}}
    report = _threshold_report(metadata, *pairs([0.005, 0.02, 0.5, 0.6], [0.01, 0.3]))
    assert (report["far"], report["frr"], report["target_far"]) == (0.5, 0.5, 0.01)
    assert report["rule"] == calibration["rule"] and report["calibration_far"] == 0.01
    assert report["calibration_far_interval"] == calibration["far_interval"]
    assert report["far_within_calibration_interval"] is False and report["calibration"] == {"auc": 1.0}
    old = _threshold_report({"threshold": 0.04, "threshold_source": "dev"}, *pairs([0.5], [0.01]))
    assert old["rule"] == THRESHOLD_RULES["dev"] and old["target_far"] is None and old["far_within_calibration_interval"] is None


@pytest.mark.parametrize(("arguments", "message"), [
    (("--threshold", "0.5", "--far", "0.01"), "Give --threshold X or --far F, not both."),
    (("--far", "1.5"), "--far: A target false accept rate must lie strictly between 0 and 1"),
    (("--far", "0"), "strictly between 0 and 1"),
])
def test_verify_checks_its_threshold_flags_before_anything_is_loaded(tmp_path, arguments, message):
    result = run_cli("verify", tmp_path / "a.png", tmp_path / "b.png", "--run", tmp_path / "no_run", *arguments)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


@pytest.mark.slow
def test_verify_decides_with_a_given_threshold_or_false_accept_rate(finished_run):
    """The tiny run's 5 dev identities of 10 images give 1,000 different pairs, all saved."""
    import json

    from facetrip.data.orl import orl_faces_root

    run_dir, _ = finished_run
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert len(metadata[SAVED_DISTANCES_KEY]) == metadata["calibration"]["pairs"]["different"] == 1000
    assert metadata["threshold"] == metadata["calibration"]["threshold"] and metadata["calibration"]["fallback"] is None
    first, second = orl_faces_root() / "s1" / "1.pgm", orl_faces_root() / "s2" / "1.pgm"
    outputs = {}
    for arguments in ((), ("--threshold", "0.5"), ("--far", "0.05")):
        result = run_cli("verify", first, second, "--run", run_dir, "--json", *arguments)
        assert result.exit_code == 0, result.output
        outputs[arguments] = json.loads(result.output)
    assert outputs[()]["threshold"] == metadata["threshold"] and outputs[()]["threshold_rule"] == metadata["calibration"]["rule"]
    assert outputs[("--threshold", "0.5")]["threshold"] == 0.5
    at_five = outputs[("--far", "0.05")]
    assert at_five["threshold"] == threshold_for_far(metadata[SAVED_DISTANCES_KEY], 0.05).threshold
    assert at_five["same_person"] == (at_five["distance"] <= at_five["threshold"])
    assert "at most 5% of 1,000" in at_five["threshold_rule"]
    table = run_cli("verify", first, second, "--run", run_dir, "--far", "0.05")
    assert table.exit_code == 0 and "at most 5% of 1,000 saved dev different-identity pairs" in " ".join(table.output.split())
