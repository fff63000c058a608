"""Choosing how far from the pretrained weights a fine-tuned face network is saved (train.weight_interpolation = auto)."""

import types

import numpy as np
import pytest

from facetrip.training.weight_choice import (EER_TOLERANCE, FALLBACK_SHARE, SHARES, choose_weight_interpolation,
                                             smallest_share_near_best)


def test_the_shares_tried_run_from_the_pretrained_to_the_fine_tuned_weights():
    assert SHARES[0] == 0.0 and SHARES[-1] == 1.0 and len(SHARES) == 11
    assert np.allclose(np.diff(SHARES), 0.1)


@pytest.mark.parametrize(
    "dev_eer, expected",
    [
        ({0.0: 0.0, 0.5: 0.0, 1.0: 0.0}, 0.0),  # nothing to gain on the dev people: the pretrained weights
        ({0.0: 0.15, 0.5: 0.067, 1.0: 0.063}, 0.5),  # 0.5 is within half a point of the best
        ({0.0: 0.15, 0.5: 0.08, 1.0: 0.063}, 1.0),  # 0.5 costs 1.7 points: the fine-tuned weights
        ({0.0: 0.02, 0.3: 0.01, 0.6: 0.012, 1.0: 0.03}, 0.3),  # the best inside the line
        ({1.0: 0.1, 0.0: 0.1 + EER_TOLERANCE}, 0.0),  # exactly at the tolerance counts as near
        ({1.0: 0.1, 0.0: 0.1 + 1.01 * EER_TOLERANCE}, 1.0),
    ],
)
def test_the_smallest_share_within_the_tolerance_of_the_best_is_chosen(dev_eer, expected):
    assert smallest_share_near_best(list(dev_eer.items())) == expected


def plain_choice(dev_eer: dict, tolerance: float) -> float:
    """The rule written out: walk from the pretrained end, stop at the first share near the best."""
    best = min(dev_eer.values())
    for share in sorted(dev_eer):
        if dev_eer[share] - best <= tolerance:
            return share
    raise AssertionError("unreachable")


def test_the_rule_equals_a_plain_walk_on_random_curves():
    rng = np.random.default_rng(0)
    for _ in range(200):
        eer = rng.choice([0.0, 0.004, 0.01, 0.05, 0.1], size=len(SHARES)) if rng.random() < 0.5 else rng.random(len(SHARES))
        dev_eer = dict(zip(SHARES, eer.tolist()))
        assert smallest_share_near_best(list(dev_eer.items())) == plain_choice(dev_eer, EER_TOLERANCE)


def test_without_two_dev_identities_the_fallback_share_is_saved_and_said():
    split = types.SimpleNamespace(dev=("s1",), train=("s2", "s3"))
    choice = choose_weight_interpolation(None, [], [], None, split, None, "euclidean")
    assert choice.share == FALLBACK_SHARE and choice.dev_eer == ()
    assert "fewer than 2 dev identities" in choice.reason
    assert choice.to_dict()["reason"] == choice.reason
