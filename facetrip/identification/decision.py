"""Which threshold `identify` decides with: the false-alarm rule for the gallery's size, or the pair rule.

A probe is named as the best of the gallery's G people when that person's score is within the
threshold. A stranger is then named as someone when *any* of their G scores is within it, so a
threshold that lets through a share FAR of pairs of different people names, were the G scores
independent, a share

    FPIR = 1 - (1 - FAR)^G                          (false positive identification rate)

of strangers as someone: 87% of strangers among LFW's 1,670 people at the pretrained run's
pair threshold (docs/identification.md). Two rules:

- **false alarm** (the default): the threshold for the pair FAR that gives a stated FPIR ``F``
  for the G people of the index searched,

      FAR = 1 - (1 - F)^(1/G)      (about F / G; exactly F for G = 1)

  on the run's saved calibration pairs (:func:`facetrip.evaluation.calibration.threshold_for_far`).
  ``F`` is ``--false-alarm F``, else ``identify.false_alarm`` of the run's config.toml
  (:class:`facetrip.config.IdentifyConfig`, 0.01 by default and for runs written before it).
- **pair**: ``--threshold X``, ``--far F``, or a run that saved no calibration pairs: the
  threshold `verify` uses, whatever the gallery's size.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from facetrip.identification.search import false_alarm_for_pair_far, pair_far_for_false_alarm

__all__ = ["DECISION_RULES", "Decision", "decision_record", "expected_false_alarm", "identify_decision",
           "run_false_alarm", "run_threshold"]

FALSE_ALARM_RULE, PAIR_RULE = "false_alarm", "pair"
DECISION_RULES = (FALSE_ALARM_RULE, PAIR_RULE)


def run_false_alarm(run_dir: str | Path) -> float:
    """The share of strangers `identify` may name as someone by default: ``identify.false_alarm`` of the run's config.

    A run without a config.toml, or whose config.toml has no ``[identify]`` section (every run
    written before the section was added), gets the default of :class:`facetrip.config.IdentifyConfig`.
    Only the ``[identify]`` section is checked: the others are training's.

    Args:
        run_dir: the run directory.

    Returns:
        The share, in (0, 1).

    Raises:
        ConfigError: a config.toml that cannot be read as TOML, or an ``[identify]`` section with
            an unknown key or a value out of range (one line naming the file and the key).
    """
    from facetrip.config import Config, ConfigError
    from facetrip.runs import CONFIG_FILE
    from facetrip.untrusted_files import UntrustedFileError, read_untrusted_toml

    path = Path(run_dir) / CONFIG_FILE
    try:
        written = read_untrusted_toml(path, what="run config")
    except UntrustedFileError as error:
        if error.reason == "missing":
            return Config().identify.false_alarm
        raise ConfigError(f"{error}: repair the run's config.toml, or give --false-alarm F or --threshold X.") from None
    try:
        return Config.from_dict({"identify": written.get("identify", {})}).identify.false_alarm
    except ConfigError as error:
        raise ConfigError(f"{path}: {error} Set it in the [identify] section, or give --false-alarm F.") from None


@dataclasses.dataclass(frozen=True)
class Decision:
    """The threshold `identify` decides with, and the rule that chose it.

    Attributes:
        threshold: a probe is named as its best person when that person's score is at most this.
        rule: a sentence saying how the threshold was chosen.
        decision_rule: ``"false_alarm"`` (for a share of strangers among ``people``) or ``"pair"``.
        people: the gallery's people G.
        false_alarm: the share of strangers aimed at (false-alarm rule; None for the pair rule).
        pair_far: the false accept rate per pair the threshold was set for (None for a given threshold).
    """

    threshold: float
    rule: str
    decision_rule: str
    people: int
    false_alarm: float | None = None
    pair_far: float | None = None


def run_threshold(run, threshold: float | None, far: float | None, false_alarm: float | None = None,
                  people: int = 1) -> tuple[float, str]:
    """The distance threshold a command decides with, and how it was chosen.

    Args:
        run: the loaded run.
        threshold: this distance.
        far: the threshold for this false accept rate per pair, on the run's saved calibration pairs.
        false_alarm: the threshold for this share of strangers taken for one of ``people``
            people (:func:`~facetrip.identification.search.pair_far_for_false_alarm`).
        people: the gallery's people.

    Returns:
        ``(threshold, rule)``; the run's own threshold when none of the three is given.

    Raises:
        CalibrationError: see :func:`facetrip.evaluation.calibration.verification_threshold`; more than
            one of the three; or the run has no threshold and none was given.
    """
    from facetrip.evaluation.calibration import CalibrationError, check_target_far, percent, verification_threshold

    if false_alarm is not None:
        if threshold is not None or far is not None:
            raise CalibrationError("Give one of --threshold, --far and --false-alarm.")
        pair_far = pair_far_for_false_alarm(check_target_far(false_alarm), people)
        chosen, rule = verification_threshold(run.metadata, None, pair_far)
        return chosen, f"{percent(false_alarm)} of strangers taken for one of {people:,} people: a pair FAR of {pair_far:.3g}; {rule}"
    chosen, rule = verification_threshold(run.metadata, threshold, far)
    if chosen is None:
        raise CalibrationError(f"{run.path} has no calibrated threshold: give one with --threshold X.")
    return chosen, rule


def identify_decision(run, people: int, threshold: float | None = None, far: float | None = None,
                      false_alarm: float | None = None) -> Decision:
    """The threshold `identify` decides with for a gallery of ``people`` people (see the module's rules).

    Without ``threshold``, ``far`` and ``false_alarm``: the false-alarm rule at the run's
    ``identify.false_alarm`` (:func:`run_false_alarm`), or the run's own threshold (pair rule)
    when the run saved no calibration pairs to set it on.

    Args:
        run: the loaded run.
        people: the gallery's people G (at least 1).
        threshold: decide with this distance (pair rule).
        far: decide with the threshold for this false accept rate per pair (pair rule).
        false_alarm: decide for this share of strangers named as someone (false-alarm rule).

    Returns:
        :class:`Decision`.

    Raises:
        CalibrationError: more than one of the three; a rate outside (0, 1); ``far`` or
            ``false_alarm`` for a run that saved no calibration pairs; no threshold at all.
        ConfigError: the run's ``identify.false_alarm`` is out of range (:func:`run_false_alarm`).
    """
    from facetrip.evaluation.calibration import SAVED_DISTANCES_KEY, CalibrationError, saved_threshold_rule

    people = max(int(people), 1)
    if sum(option is not None for option in (threshold, far, false_alarm)) > 1:
        raise CalibrationError("Give one of --threshold X, --far F and --false-alarm F.")
    if threshold is not None or far is not None:
        chosen, rule = run_threshold(run, threshold, far)
        return Decision(chosen, f"pair rule: {rule}", PAIR_RULE, people, pair_far=far)
    source = "--false-alarm"
    if false_alarm is None:
        false_alarm = run_false_alarm(run.path)
        source = "identify.false_alarm"
        if not run.metadata.get(SAVED_DISTANCES_KEY):
            chosen = run.metadata.get("threshold")
            if chosen is None:
                raise CalibrationError(f"{run.path} has no calibrated threshold: give one with --threshold X.")
            return Decision(float(chosen), f"pair rule: the run saved no calibration pairs to set a threshold for "
                                           f"{false_alarm:g} of strangers on; {saved_threshold_rule(run.metadata)}",
                            PAIR_RULE, people)
    chosen, rule = run_threshold(run, None, None, false_alarm, people)
    return Decision(chosen, f"false-alarm rule, {source} {false_alarm:g}: {rule}", FALSE_ALARM_RULE, people,
                    float(false_alarm), pair_far_for_false_alarm(float(false_alarm), people))


def decision_record(decision: Decision) -> dict[str, Any]:
    """What an index's manifest records of the default decision when it was written (``manifest["open_set"]``).

    For information: `identify` decides again with the run and the index it is given.

    Returns:
        ``{"decision_rule", "people", "false_alarm", "pair_far", "threshold", "threshold_rule"}``.
    """
    return {"decision_rule": decision.decision_rule, "people": decision.people, "false_alarm": decision.false_alarm,
            "pair_far": decision.pair_far, "threshold": decision.threshold, "threshold_rule": decision.rule}


def expected_false_alarm(run, threshold: float, people: int) -> float | None:
    """The share of strangers a threshold would take for one of ``people`` people, from the run's saved pairs (None without them).

    ``1 - (1 - FAR)^P`` with FAR the share of the run's saved different-identity distances within the threshold.
    """
    from facetrip.evaluation.calibration import SAVED_DISTANCES_KEY

    distances = run.metadata.get(SAVED_DISTANCES_KEY)
    if not distances:
        return None
    return false_alarm_for_pair_far(float(np.mean(np.asarray(distances, np.float64) <= threshold)), people)
