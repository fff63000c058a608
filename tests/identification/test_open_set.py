"""Open-set decisions at a stated false-alarm rate (FPIR): the rule on embeddings of a known distribution, the
run's identify.false_alarm (and runs written before it), the index's record, and the DIR-against-FPIR curve."""

import math
import types

import numpy as np
import pytest

from facetrip.config import RUN_SECTIONS, SECTIONS, Config, ConfigError
from facetrip.evaluation.calibration import SAVED_DISTANCES_KEY, CalibrationError, verification_threshold
from facetrip.identification.decision import decision_record, identify_decision, run_false_alarm
from facetrip.identification.index import GalleryIndex
from facetrip.identification.open_set import dir_fpir_plot_png, identification_curve, leave_one_out_scores
from facetrip.identification.search import pair_far_for_false_alarm

DIM = 128
# Calibration pairs: distances at the quantiles (i + 0.5) / n of their exact distribution, so the pair FAR's
# threshold is exact to 1 / n and only the strangers' sampling is left to chance.
CALIBRATION_PAIRS = 200_000


def unit(rows):
    rows = np.asarray(rows, np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def random_pair_distances(dim: int, count: int) -> np.ndarray:
    """Euclidean distances of two independent random unit vectors in ``dim`` dimensions, at ``count`` quantiles.

    Their cosine ``c`` has ``(1 + c) / 2 ~ Beta((dim - 1) / 2, (dim - 1) / 2)`` and ``d = sqrt(2 - 2c)``;
    the largest cosines (the upper quantiles, by ``isf``) are the smallest distances.
    """
    from scipy.stats import beta

    half = (dim - 1) / 2
    cosines = 2 * beta.isf((np.arange(count) + 0.5) / count, half, half) - 1  # descending
    return np.sqrt(2 - 2 * cosines)  # ascending


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """A run (its metadata only) whose calibration pairs are those of random unit vectors; no config.toml."""
    metadata = {"metric": "euclidean", "threshold": 1.3, "threshold_source": "dev",
                SAVED_DISTANCES_KEY: random_pair_distances(DIM, CALIBRATION_PAIRS).tolist()}
    return types.SimpleNamespace(path=tmp_path_factory.mktemp("run"), metadata=metadata)


def run_with_config(tmp_path, metadata, text: str | None):
    if text is not None:
        (tmp_path / "config.toml").write_text(text)
    return types.SimpleNamespace(path=tmp_path, metadata=metadata)


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("people", [1, 10, 100])
def test_the_false_alarm_rule_names_the_target_share_of_random_strangers(calibrated_run, people):
    """Strangers and gallery are independent random unit vectors, so a stranger's G distances are (nearly)
    independent draws of the calibration pairs' distribution: the share of strangers whose best distance is
    within the threshold is ``1 - (1 - FAR)^G = F``. With U strangers it is measured to a standard deviation of
    ``sqrt(F (1 - F) / U)``: 4 of them, plus G / n for the threshold's step on n calibration pairs."""
    target, strangers = 0.05, 40_000
    decision = identify_decision(calibrated_run, people, false_alarm=target)
    rng = np.random.default_rng(people)
    gallery = unit(rng.standard_normal((people, DIM)))
    probes = unit(rng.standard_normal((strangers, DIM)))
    best = np.sqrt(np.maximum(2 - 2 * (probes @ gallery.T).max(axis=1), 0))  # (U,) nearest person
    measured = float(np.mean(best <= decision.threshold))
    tolerance = 4 * math.sqrt(target * (1 - target) / strangers) + people / CALIBRATION_PAIRS
    assert abs(measured - target) <= tolerance, (measured, decision)
    assert decision.decision_rule == "false_alarm" and decision.people == people
    assert decision.pair_far == pytest.approx(pair_far_for_false_alarm(target, people))
    # the pair rule at the run's own threshold names far more of them once the gallery is large
    if people == 100:
        assert np.mean(best <= identify_decision(calibrated_run, people, far=target).threshold) > 0.9


def test_for_a_gallery_of_one_person_the_false_alarm_rule_is_the_pair_rule(calibrated_run):
    """G = 1: ``FAR = 1 - (1 - F)^1 = F``, the threshold `verify --far F` uses."""
    for target in (0.01, 0.001):
        by_strangers = identify_decision(calibrated_run, 1, false_alarm=target)
        by_pairs = identify_decision(calibrated_run, 1, far=target)
        assert by_strangers.threshold == by_pairs.threshold == verification_threshold(calibrated_run.metadata, None, target)[0]
        assert (by_strangers.decision_rule, by_pairs.decision_rule) == ("false_alarm", "pair")


def test_threshold_and_far_keep_the_pair_rule_and_say_so(calibrated_run):
    given = identify_decision(calibrated_run, 500, threshold=0.9)
    assert (given.threshold, given.decision_rule, given.false_alarm) == (0.9, "pair", None)
    assert given.rule.startswith("pair rule: given threshold 0.9")
    per_pair = identify_decision(calibrated_run, 500, far=0.01)
    assert per_pair.decision_rule == "pair" and per_pair.rule.startswith("pair rule:")
    assert per_pair.threshold > identify_decision(calibrated_run, 500).threshold  # stricter for 500 people
    with pytest.raises(CalibrationError, match="one of"):
        identify_decision(calibrated_run, 5, threshold=0.9, false_alarm=0.01)


def test_without_options_the_run_configs_identify_false_alarm_decides(calibrated_run, tmp_path):
    """No config.toml, or one without [identify] (a run written before the section): the default 0.01."""
    metadata = calibrated_run.metadata
    default = identify_decision(run_with_config(tmp_path, metadata, None), 200)
    assert (default.decision_rule, default.false_alarm) == ("false_alarm", 0.01)
    assert default.rule.startswith("false-alarm rule, identify.false_alarm 0.01: 1% of strangers")
    assert default.threshold == identify_decision(calibrated_run, 200, false_alarm=0.01).threshold
    old = {name: values for name, values in Config().to_dict().items() if name != "identify"}
    import tomli_w

    assert identify_decision(run_with_config(tmp_path, metadata, tomli_w.dumps(old)), 200) == default
    stricter = identify_decision(run_with_config(tmp_path, metadata, "[identify]\nfalse_alarm = 0.001\n"), 200)
    assert stricter.false_alarm == 0.001 and stricter.threshold < default.threshold
    # an explicit --false-alarm wins, and is not read from a config it does not need
    (tmp_path / "config.toml").write_text("[identify]\nfalse_alarm = 7\n")
    explicit = identify_decision(run_with_config(tmp_path, metadata, None), 200, false_alarm=0.01)
    assert explicit.threshold == default.threshold and explicit.rule.startswith("false-alarm rule, --false-alarm 0.01:")


def test_a_run_without_calibration_pairs_decides_with_its_own_threshold(tmp_path):
    run = run_with_config(tmp_path, {"metric": "euclidean", "threshold": 0.6}, None)
    decision = identify_decision(run, 1000)
    assert (decision.threshold, decision.decision_rule) == (0.6, "pair") and "no calibration pairs" in decision.rule
    with pytest.raises(CalibrationError, match="no calibration distances"):
        identify_decision(run, 1000, false_alarm=0.01)
    with pytest.raises(CalibrationError, match="--threshold"):
        identify_decision(run_with_config(tmp_path, {"metric": "euclidean"}, None), 10)


@pytest.mark.parametrize("value", ["0", "0.0", "1", "1.5", "-0.01", "nan", "inf", '"1%"', "true"])
def test_a_bad_identify_false_alarm_is_one_line_naming_the_key_and_the_file(tmp_path, value):
    (tmp_path / "config.toml").write_text(f"[identify]\nfalse_alarm = {value}\n")
    with pytest.raises(ConfigError) as error:
        run_false_alarm(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "identify.false_alarm must be a number > 0 and < 1" in message
    assert str(tmp_path / "config.toml") in message


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, math.nan, "0.01", True])
def test_a_bad_identify_false_alarm_is_refused_wherever_a_config_is_set(value):
    with pytest.raises(ConfigError, match="identify.false_alarm"):
        Config().set("identify.false_alarm", value)
    with pytest.raises(ConfigError, match="identify.false_alarm"):
        Config.from_dict({"identify": {"false_alarm": value}})


def test_an_unknown_identify_key_or_an_unreadable_config_is_one_line(tmp_path):
    (tmp_path / "config.toml").write_text("[identify]\nfalse_alarms = 0.01\n")
    with pytest.raises(ConfigError, match="identify.false_alarms"):
        run_false_alarm(tmp_path)
    (tmp_path / "config.toml").write_text("[identify\n")
    with pytest.raises(ConfigError, match="--false-alarm"):
        run_false_alarm(tmp_path)


def test_a_run_whose_config_has_no_identify_section_is_still_a_run(tmp_path):
    """Runs written before [identify] existed name every other section: recognised, and read with the default."""
    import tomli_w

    from facetrip.training import is_facetrip_run

    assert "identify" in SECTIONS and "identify" not in RUN_SECTIONS
    old = {name: values for name, values in Config().to_dict().items() if name != "identify"}
    (tmp_path / "config.toml").write_text(tomli_w.dumps(old))
    assert is_facetrip_run(tmp_path)
    assert Config.from_toml(tmp_path / "config.toml") == Config()
    (tmp_path / "config.toml").write_text(Config().to_toml())  # and those written now
    assert is_facetrip_run(tmp_path) and "[identify]" in Config().to_toml()


def test_the_index_record_says_what_the_default_decided(calibrated_run):
    record = decision_record(identify_decision(calibrated_run, 42))
    assert record["decision_rule"] == "false_alarm" and record["people"] == 42 and record["false_alarm"] == 0.01
    assert record["pair_far"] == pytest.approx(pair_far_for_false_alarm(0.01, 42))
    assert record["threshold"] == identify_decision(calibrated_run, 42).threshold and record["threshold_rule"]


# ----------------------------------------------------------------------------- the curve


def people_on_the_sphere(rng, num_people, photos, spread, dim=32):
    centres = unit(rng.standard_normal((num_people, dim)))
    labels = np.repeat(np.arange(num_people), photos)
    return unit(centres[labels] + spread * rng.standard_normal((len(labels), dim))).astype(np.float32), labels


def brute_force_left_out(embeddings, labels, score):
    """The module's definitions with Python loops: own score without the photo, best other person's score."""
    own, best_other = [], []
    for row, person in enumerate(labels):
        def score_of(q, leave=None):
            rows = [r for r in np.flatnonzero(labels == q) if r != leave]
            if not rows:
                return np.inf
            if score == "nearest":
                return min(np.linalg.norm(embeddings[row] - embeddings[r]) for r in rows)
            mean = embeddings[rows].astype(np.float64).mean(axis=0)
            return np.linalg.norm(embeddings[row] - mean / np.linalg.norm(mean))
        own.append(score_of(person, leave=row))
        best_other.append(min(score_of(q) for q in np.unique(labels) if q != person))
    return np.asarray(own), np.asarray(best_other)


@pytest.mark.parametrize("score", ["nearest", "mean"])
def test_leave_one_out_scores_are_the_brute_force_ones(rng, score):
    embeddings, labels = people_on_the_sphere(rng, 7, 3, 0.3)
    labels[-1] = 7  # a person of one photo: no known probe
    found = leave_one_out_scores(embeddings, labels, "euclidean", score)
    own, best_other = brute_force_left_out(embeddings, labels, score)
    np.testing.assert_allclose(found["own"], own, atol=1e-4)
    np.testing.assert_allclose(found["best_other"], best_other, atol=1e-4)
    assert np.isinf(found["own"][-1])
    sampled = leave_one_out_scores(embeddings, labels, "euclidean", score, max_probes=5, seed=3)
    assert len(sampled["probes"]) == 5
    np.testing.assert_allclose(sampled["best_other"], best_other[sampled["probes"]], atol=1e-4)


def gallery_index(embeddings, labels, manifest=None):
    names = np.asarray([f"person {label:03d}" for label in labels])
    return GalleryIndex(embeddings, names, np.asarray([f"{i}.jpg" for i in range(len(labels))]),
                        np.ones(len(labels), np.int64), {"metric": "euclidean", **(manifest or {})})


def test_the_curve_counts_known_probes_and_strangers_at_each_threshold(rng):
    embeddings, labels = people_on_the_sphere(rng, 40, 3, 0.25)
    index = gallery_index(embeddings, labels)
    own, best_other = brute_force_left_out(embeddings, labels, "nearest")
    threshold = float(np.quantile(best_other, 0.1))  # names about 10% of strangers
    decision = {"threshold": threshold, "false_alarm": 0.05, "decision_rule": "false_alarm", "threshold_rule": "test"}
    curve = identification_curve(index, decision, score="nearest")
    assert curve["known_probes"] == curve["stranger_probes"] == 120 and curve["people"] == 40 and not curve["sampled"]
    assert np.all(np.diff(curve["thresholds"]) > 0) and np.all(np.diff(curve["dir"]) >= 0) and np.all(np.diff(curve["fpir"]) >= 0)
    point = curve["operating_point"]
    assert point["fpir"] == pytest.approx(np.mean(best_other <= threshold)) and 0.05 < point["fpir"] < 0.2
    assert point["dir"] == pytest.approx(np.mean((own < best_other) & (own <= threshold))) and point["dir"] > 0
    at = np.searchsorted(curve["thresholds"], threshold, side="right") - 1
    assert (curve["dir"][at], curve["fpir"][at]) == pytest.approx((point["dir"], point["fpir"]))
    assert curve["at_target"]["fpir"] <= 0.05 and curve["at_target"]["threshold"] <= curve["thresholds"][-1]
    png = dir_fpir_plot_png(curve)
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_an_index_without_a_record_gives_a_curve_without_an_operating_point(rng, calibrated_run):
    embeddings, labels = people_on_the_sphere(rng, 12, 2, 0.2)
    old = identification_curve(gallery_index(embeddings, labels))
    assert old["operating_point"] is None and old["at_target"] is None and len(old["thresholds"])
    assert dir_fpir_plot_png(old).startswith(b"\x89PNG")
    record = decision_record(identify_decision(calibrated_run, 12))
    recorded = identification_curve(gallery_index(embeddings, labels, {"open_set": record}))
    assert recorded["operating_point"]["threshold"] == record["threshold"]
    alone = identification_curve(gallery_index(embeddings[:2], np.zeros(2, np.int64)), record)
    assert alone["stranger_probes"] == 0 and alone["operating_point"]["fpir"] is None
    assert dir_fpir_plot_png(alone).startswith(b"\x89PNG")
