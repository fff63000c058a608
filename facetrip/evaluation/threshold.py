"""The threshold a run saves: calibrated to ``train.target_far`` on identities the model never trained on."""

from __future__ import annotations

import logging
from typing import Any

from facetrip.config import Config
from facetrip.embedding import embed_faces

logger = logging.getLogger(__name__)


def calibrate_threshold(model, faces, split, config: Config, metric: str,
                        weights_trained: bool | None = None) -> dict[str, Any]:
    """The verification threshold for ``config.train.target_far`` on identities the model never trained on.

    Those are the dev identities, or, when the saved weights never trained on the training
    identities (``train.epochs = 0``, or the pretrained weights kept by weight
    interpolation 0), the dev and training identities; the training identities when there
    are no dev identities.

    Args:
        model: the exported embedding model.
        faces, split: the run's prepared photos and identity split.
        config: the run's config.
        metric: the run's distance.
        weights_trained: whether the saved weights were trained on the training
            identities; by default, whether ``train.epochs > 0``.

    All pairs of those identities' images are embedded and the threshold is
    :func:`facetrip.evaluation.calibration.calibrate_to_far` of their distances: the largest with
    ``#{different pairs, d <= t} / N <= target_far``, or a normal tail fit when there are
    too few different pairs for the target (``calibration["fallback"]`` says so).

    Returns:
        ``threshold``, ``threshold_source`` (``dev``; ``train`` without dev identities;
        ``dev_and_train`` for a run without training), ``calibration`` (the
        calibration's dict), ``calibration_different_distances`` (a sorted sample of the
        different-pair distances, :func:`facetrip.evaluation.calibration.saved_distances`, for
        ``verify --far``) and ``<source>``: the ROC summary of those pairs
        (:func:`facetrip.evaluation.verification_summary`). Only ``threshold`` (None) and
        ``threshold_source`` when the identities give no same or no different pairs.
    """
    from facetrip.evaluation.calibration import SAVED_DISTANCES_KEY, calibrate_to_far, saved_distances
    from facetrip.evaluation import pair_distances, verification_summary

    if weights_trained is None:
        weights_trained = config.train.epochs > 0
    if not weights_trained:
        # The network never saw the training identities either: all of them calibrate, and
        # many more pairs of identities make the false-accept estimate far less noisy.
        source, identities = "dev_and_train", (*split.dev, *split.train)
    elif len(split.dev) >= 2:
        source, identities = "dev", split.dev
    else:
        source, identities = "train", split.train
    subset = faces.restricted_to(identities)
    embeddings = embed_faces(model, subset, config.data.image_size, config.data.channels)
    distances, same = pair_distances(embeddings, subset.labels, metric)
    try:
        summary = verification_summary(distances, same)
    except ValueError:
        logger.warning("Could not calibrate a threshold: the %s identities give no same/different pairs.", source)
        return {"threshold": None, "threshold_source": source}
    calibration = calibrate_to_far(distances, same, config.train.target_far, pairs_name=source.replace("_", " "))
    return {
        "threshold": calibration["threshold"],
        "threshold_source": source,
        "calibration": calibration,
        SAVED_DISTANCES_KEY: saved_distances(distances[~same]),
        source: summary,
    }
