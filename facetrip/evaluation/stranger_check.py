"""How the threshold a run saves treats strangers from other photos: by default the ORL faces facetrip ships.

A run's threshold is calibrated to ``train.target_far`` on its dev people, so it fits
photos like theirs. After fine-tuning on one kind of photo (Yale B's laboratory lighting)
it can be far off on ordinary photos: a Yale B run saved as trained accepted 10% of LFW's
different-people pairs against its 1% target, and the pretrained network calibrated on
Yale B rejected 35% of LFW's same-person pairs. The dev people cannot show that; people
from other photos can. On four Yale B runs, ORL's threshold for the target came within
0.03 of LFW's (docs/face_network.md, "The threshold a run saves").

After calibration, a run whose training source is not ``train.stranger_check`` embeds
that source's photos (ORL: 40 people x 10, never trained on) and measures, over its
``N`` different-people pairs with distances ``d_i``,

    FAR_strangers(t) = #{i : d_i <= t} / N

at the saved threshold ``t``, and the threshold ``t_strangers`` that would give the target
on them (:func:`~facetrip.evaluation.calibration.empirical_threshold`). It changes
nothing it measures. The terminal shows both thresholds; when ``FAR_strangers(t)``
exceeds :data:`WARN_FACTOR` times the target it warns, and ``verify`` repeats the warning
when it decides with the saved threshold.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from facetrip.evaluation.calibration import empirical_threshold, percent

logger = logging.getLogger(__name__)

WARN_FACTOR = 3  # a stranger FAR above this many times the target is reported as a warning


def stranger_false_accepts(different_distances, threshold: float, target_far: float) -> dict[str, Any]:
    """The false-accept rate of ``threshold`` on strangers' different-people pairs, and their own threshold.

    Args:
        different_distances: (N,) distances of the strangers' different-people pairs, N >= 1.
        threshold: the run's saved threshold (a pair is "same" when ``d <= threshold``).
        target_far: the run's target false-accept rate.

    Returns:
        ``far`` (FAR_strangers(threshold)), ``different_pairs`` (N), ``target_far`` and
        ``threshold_at_target`` (the largest threshold with FAR_strangers <= target_far).
    """
    different = np.sort(np.asarray(different_distances, np.float64).reshape(-1))  # (N,)
    if different.size == 0:
        raise ValueError("The strangers give no different-people pairs.")
    accepted = int(np.searchsorted(different, threshold, side="right"))
    return {"far": accepted / different.size, "different_pairs": int(different.size), "target_far": float(target_far),
            "threshold_at_target": empirical_threshold(different, target_far)}


def loose_threshold_note(metadata: dict[str, Any]) -> str | None:
    """The run's stranger-check summary when its saved threshold accepted too many strangers, else None.

    "Too many" is more than :data:`WARN_FACTOR` times the target, as at training time;
    ``verify`` shows it when it decides with the saved threshold.
    """
    check = metadata.get("stranger_check")
    if not isinstance(check, dict) or not isinstance(check.get("far"), (int, float)):
        return None
    target = check.get("target_far")
    if not isinstance(target, (int, float)) or check["far"] <= WARN_FACTOR * target:
        return None
    return str(check.get("summary") or f"the saved threshold accepts {percent(check['far'])} of strangers' pairs")


def check_threshold_on_strangers(model, threshold: float | None, config, metric: str) -> dict[str, Any] | None:
    """:func:`stranger_false_accepts` on the photos of ``config.train.stranger_check``, with one line for the terminal.

    Args:
        model: the run's exported embedding model.
        threshold: its saved threshold (None: nothing to check).
        config: the run's config (data source, input, target FAR, stranger source).
        metric: the run's distance.

    Returns:
        the ``stranger_check`` entry of metadata.json: the measurement plus ``source`` and
        ``summary``; or ``{"source", "skipped"}`` when the check cannot run (the run trains
        on that source, or it cannot be loaded); None when it is off or there is no threshold.
    """
    from facetrip.data import DataError
    from facetrip.data.records import load_model_faces
    from facetrip.embedding import embed_faces
    from facetrip.evaluation import pair_distances
    from facetrip.evaluation.report import is_same_source

    source = config.train.stranger_check
    if not source or threshold is None:
        return None
    try:
        if is_same_source(source, config.data.source):
            return {"source": source, "skipped": "the run trains on these people"}
        if config.train.replay and is_same_source(source, config.train.replay):
            return {"source": source, "skipped": "the run trains on these people (train.replay)"}
        faces, _ = load_model_faces(source, data_dir=config.data.data_dir or None, face_chips=config.data.face_chips)
    except (DataError, OSError, ValueError) as error:
        logger.warning("The threshold was not checked on the strangers of %s: %s", source, error)
        return {"source": source, "skipped": str(error)}
    embeddings = embed_faces(model, faces, tuple(config.data.image_size), config.data.channels)  # (N, D)
    distances, same = pair_distances(embeddings, faces.labels, metric)
    if not np.any(~same):
        return {"source": source, "skipped": "its photos give no different-people pairs"}
    check = stranger_false_accepts(distances[~same], threshold, config.train.target_far)
    summary = (f"On {len(set(faces.labels.tolist()))} strangers from other photos ({source}), the saved threshold "
               f"{threshold:.3f} accepts {percent(check['far'])} of different-people pairs (target "
               f"{percent(check['target_far'])}); {check['threshold_at_target']:.3f} gives the target on them")
    if check["far"] > WARN_FACTOR * check["target_far"]:
        summary += (f". The saved threshold fits photos like the dev people's: for other photos, verify with "
                    f"--threshold {check['threshold_at_target']:.3f}.")
        logger.warning("%s", summary)
    else:
        summary += "."
        logger.info("%s", summary)
    return {"source": source, **check, "summary": summary}
