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


class RecordingModel:
    """Stands in for the exported model: remembers the weights it was given."""

    def __init__(self):
        self.weights = None
        self.history = []

    def set_weights(self, weights):
        self.weights = [np.array(w) for w in weights]
        self.history.append(float(self.weights[0][0]))


def eer_by_sweeping(embeddings, labels):
    """The dev EER as the rule defines it, counted: every unordered pair's euclidean distance; for every
    threshold from accepting nothing up, the share of different pairs within it (FAR) and of same pairs
    beyond it (FRR); (FAR + FRR) / 2 where |FAR - FRR| is smallest (the first such threshold)."""
    first, second = np.triu_indices(len(labels), k=1)
    distances = np.sqrt(np.sum((embeddings[first] - embeddings[second]) ** 2, axis=1))
    same = np.asarray(labels)[first] == np.asarray(labels)[second]
    thresholds = np.r_[-np.inf, np.unique(distances)]
    false_accept = np.searchsorted(np.sort(distances[~same]), thresholds, side="right") / np.sum(~same)
    false_reject = 1.0 - np.searchsorted(np.sort(distances[same]), thresholds, side="right") / np.sum(same)
    best = np.argmin(np.abs(false_accept - false_reject))
    return (false_accept[best] + false_reject[best]) / 2


def test_every_share_is_scored_on_at_most_max_photos_dev_photos_and_the_fine_tuned_weights_are_left(monkeypatch):
    """Embeddings whose noise falls as the share grows: every share is scored on the same seeded sample of
    MAX_PHOTOS dev photos, its dev EER is the one counted here from the embeddings it was given, the share
    chosen is the plain walk's on those counted EERs, and the model is left holding the fine-tuned weights."""
    from facetrip import embedding
    from facetrip.data.sources import FaceImages
    from facetrip.training import weight_choice

    monkeypatch.setattr(weight_choice, "MAX_PHOTOS", 60)
    labels = np.repeat(np.arange(6), 20)  # 6 dev people x 20 photos, more than MAX_PHOTOS
    faces = FaceImages(encoded=np.array([b"x"] * len(labels), dtype=object), labels=labels,
                       identity_names=[f"p{k}" for k in range(6)], file_names=np.array([f"{k}.png" for k in range(len(labels))]),
                       channels=3, source="test")
    split = types.SimpleNamespace(dev=tuple(f"p{k}" for k in range(6)), train=())
    config = types.SimpleNamespace(data=types.SimpleNamespace(image_size=(150, 150), channels=3))
    model = RecordingModel()
    scored = []  # (share, file names, labels, embeddings) of every call

    def fake_embed(model_, subset, image_size, channels):
        share = float(model_.weights[0][0])  # the weights are [share]: pretrained [0], fine-tuned [1]
        rng = np.random.default_rng(int(round(share * 10)))
        centres = np.eye(8)[subset.labels]
        embeddings = centres + rng.normal(scale=0.6 * (1 - share) + 0.05, size=centres.shape)
        scored.append((share, list(subset.file_names), list(subset.labels), embeddings))
        return embeddings

    monkeypatch.setattr(embedding, "embed_faces", fake_embed)
    choice = choose_weight_interpolation(model, [np.array([0.0])], [np.array([1.0])], faces, split, config, "euclidean")
    assert [share for share, *_ in scored] == pytest.approx(list(SHARES))
    names = scored[0][1]
    assert len(names) == 60 == len(set(names)) and all(entry[1] == names for entry in scored)
    assert model.history[-1] == 1.0  # left fine-tuned
    expected = [(share, eer_by_sweeping(embeddings, labels)) for share, _, labels, embeddings in scored]
    assert [share for share, _ in choice.dev_eer] == list(SHARES)
    np.testing.assert_allclose([eer for _, eer in choice.dev_eer], [eer for _, eer in expected], atol=1e-12)
    assert expected[0][1] > expected[-1][1] + EER_TOLERANCE  # the noise made the pretrained end worse
    counted = dict(expected)
    assert choice.share == plain_choice(counted, EER_TOLERANCE) > 0
    assert f"saved {choice.share:g} of the way" in choice.reason
