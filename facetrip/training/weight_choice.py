"""How far from the pretrained weights a fine-tuned face network is saved: chosen on the dev identities.

``train.weight_interpolation = "auto"`` (the default) saves

    w(a*) = (1 - a*) * w_pretrained + a* * w_fine_tuned,
    a* = min { a in A : EER_dev(a) <= min_{b in A} EER_dev(b) + tolerance },

with A = {0, 0.1, ..., 1}: the point of the line nearest the pretrained weights among
those whose equal error rate on the dev identities (never trained on) is within
``tolerance`` of the best. Fine-tuning is kept only as far as it measurably helps people
it has not seen; what it costs on other photos (LFW after fine-tuning on ORL or Yale B)
the dev identities cannot show, so every step away from the pretrained weights must be
paid for in dev errors. On ORL, where the pretrained network already separates the dev
people perfectly, that keeps the pretrained weights (a* = 0); on Yale B's extreme
lighting it keeps most of the fine-tuning.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

SHARES = tuple(step / 10 for step in range(11))
EER_TOLERANCE = 0.005  # half a point of dev EER buys no step away from the pretrained weights
FALLBACK_SHARE = 0.5  # without dev identities to choose on
MAX_PHOTOS = 1000  # dev photos scored per share at most (a seeded sample): 11 shares stay a minute or two


@dataclasses.dataclass(frozen=True)
class InterpolationChoice:
    """The share chosen and the evidence for it.

    Attributes:
        share: a* in [0, 1].
        dev_eer: (share, dev EER) for every share tried; empty without dev identities.
        reason: one line for the terminal and metadata.
    """

    share: float
    dev_eer: tuple[tuple[float, float], ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The ``weight_interpolation_choice`` entry of metadata.json."""
        return {"rule": f"smallest share within {EER_TOLERANCE:.1%} of the best dev EER",
                "dev_eer": [[share, eer] for share, eer in self.dev_eer], "reason": self.reason}


def smallest_share_near_best(dev_eer: Sequence[tuple[float, float]], tolerance: float = EER_TOLERANCE) -> float:
    """a* of the module's formula.

    Args:
        dev_eer: (share, EER) pairs, any order.
        tolerance: EER above the best that a smaller share may cost.

    Returns:
        the smallest share whose EER is at most the best plus ``tolerance``.
    """
    best = min(eer for _, eer in dev_eer)
    return min(share for share, eer in dev_eer if eer <= best + tolerance)


def choose_weight_interpolation(model, pretrained_weights: Sequence[np.ndarray], fine_tuned_weights: Sequence[np.ndarray],
                                faces, split, config, metric: str) -> InterpolationChoice:
    """Try every share of :data:`SHARES` on the dev identities and choose one (the module's rule).

    Leaves ``model`` holding the fine-tuned weights; the caller sets the chosen ones.

    Args:
        model: the network as exported (test-time augmentation included), whose
            ``get_weights()`` order ``pretrained_weights`` and ``fine_tuned_weights`` follow.
        pretrained_weights, fine_tuned_weights: the two ends of the line.
        faces: the run's prepared :class:`~facetrip.data.FaceImages`.
        split: its :class:`~facetrip.data.IdentitySplit`.
        config: the run's config (image size, channels).
        metric: the run's distance.

    Returns:
        the :class:`InterpolationChoice`; :data:`FALLBACK_SHARE` when there are fewer than
        two dev identities or their pairs hold only one class. Of more than
        :data:`MAX_PHOTOS` dev photos, a seeded sample of that many is scored.
    """
    from facetrip.embedding import embed_faces
    from facetrip.evaluation import pair_distances, verification_summary
    from facetrip.models.weight_interpolation import interpolate_weights

    if len(split.dev) < 2:
        return InterpolationChoice(FALLBACK_SHARE, (), f"fewer than 2 dev identities to choose on: "
                                                       f"saved {FALLBACK_SHARE:g} of the way")
    subset = faces.restricted_to(split.dev)
    if len(subset) > MAX_PHOTOS:
        subset = subset.take(np.sort(np.random.default_rng(0).choice(len(subset), MAX_PHOTOS, replace=False)))
    dev_eer = []
    try:
        for share in SHARES:
            model.set_weights(interpolate_weights(pretrained_weights, fine_tuned_weights, share))
            embeddings = embed_faces(model, subset, config.data.image_size, config.data.channels)
            distances, same = pair_distances(embeddings, subset.labels, metric)
            dev_eer.append((share, float(verification_summary(distances, same)["eer"])))
    except ValueError:
        return InterpolationChoice(FALLBACK_SHARE, (), f"the dev identities give no same or no different pairs: "
                                                       f"saved {FALLBACK_SHARE:g} of the way")
    finally:
        model.set_weights(fine_tuned_weights)
    share = smallest_share_near_best(dev_eer)
    at = dict(dev_eer)
    best_share = min(dev_eer, key=lambda item: (item[1], item[0]))[0]
    reason = (f"dev EER {at[0.0]:.1%} pretrained, {at[1.0]:.1%} fine-tuned, best {at[best_share]:.1%} at {best_share:g}: "
              f"saved {share:g} of the way (the smallest share within {EER_TOLERANCE:.1%} of the best)")
    return InterpolationChoice(share, tuple(dev_eer), reason)
