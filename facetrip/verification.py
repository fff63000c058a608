"""Are two photos the same person? The distance of their embeddings against the run's threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facetrip.distances import paired_distances
from facetrip.runs.loaded_run import Run


def distance(first: np.ndarray, second: np.ndarray, metric: str) -> float:
    """d(first, second) for one pair of embeddings under the run's metric (:mod:`facetrip.distances`).

    Computed in float64, as the calibration distances the run's threshold was chosen on.

    Args:
        first, second: (D,) embeddings.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``.

    Returns:
        The distance.
    """
    first, second = np.asarray(first, np.float64)[None], np.asarray(second, np.float64)[None]  # (1, D) each
    return float(paired_distances(first, second, metric)[0])


def verify(run: Run, first_image: str | Path, second_image: str | Path, threshold: float | None = None,
           far: float | None = None) -> dict[str, Any]:
    """Compare two photos: distance, the threshold, and the verdict.

    Args:
        run: the loaded run.
        first_image, second_image: photo files.
        threshold: decide with this threshold instead of the run's.
        far: decide with the threshold for this false accept rate on the run's saved
            calibration distances (:func:`facetrip.evaluation.calibration.verification_threshold`).

    Returns:
        ``{"distance", "threshold", "threshold_rule", "same_person", "metric", "run", "images"}``;
        ``same_person`` is ``distance <= threshold`` (None when there is no threshold) and
        ``threshold_rule`` says how the threshold was chosen. Runs
        on face chips add ``faces_detected`` (faces the detector found in each photo: 0 means
        the whole photo was used as the face, 2 or more that the one at the centre, else the
        largest, was used), ``faces_found`` (at least one) and ``face_detectors`` (which
        detector found each photo's face: ``"hog"``, ``"cnn"`` where HOG found none, or
        ``"none"``). ``threshold_warning``, when the saved threshold decides and it accepted
        too many strangers from other photos after training
        (:func:`facetrip.evaluation.stranger_check.loose_threshold_note`).

    Raises:
        CalibrationError: both ``threshold`` and ``far``, ``far`` outside (0, 1), or ``far``
            for a run that saved no calibration distances.
    """
    from facetrip.evaluation.calibration import verification_threshold

    threshold_given = threshold
    threshold, threshold_rule = verification_threshold(run.metadata, threshold, far)  # before any image is embedded
    images, faces_detected = run.inputs_of_files([first_image, second_image])  # (2, H, W, C)
    first, second = run.embed_images(images)
    value = distance(first, second, run.metadata["metric"])
    result = {
        "images": [str(first_image), str(second_image)],
        "distance": value,
        "threshold": threshold,
        "threshold_rule": threshold_rule,
        "same_person": None if threshold is None else bool(value <= threshold),
        "metric": run.metadata["metric"],
        "run": str(run.path),
    }
    if threshold_given is None and far is None:
        from facetrip.evaluation.stranger_check import loose_threshold_note

        note = loose_threshold_note(run.metadata)
        if note:
            result["threshold_warning"] = note
    if run.face_chips:
        result["faces_detected"] = [int(count) for count in faces_detected]
        result["faces_found"] = [count > 0 for count in faces_detected]
        from facetrip.data.model_input import file_face_detectors

        result["face_detectors"] = file_face_detectors([first_image, second_image])
    return result
