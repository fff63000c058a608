"""Evaluating embeddings on verification pairs: pairs, LFW pairs files, metrics, the ROC plot.

Light to import (NumPy only; scikit-learn and matplotlib load when a function needs them).
The modules that need more are imported by name: ``facetrip.evaluation.calibration``
(SciPy), ``facetrip.evaluation.baselines`` (scikit-learn) and ``facetrip.evaluation.report``
(a run's evaluation report).
"""

from facetrip.evaluation.metrics import (
    FAR_TARGETS,
    NUM_FOLDS,
    accuracy_of,
    best_threshold,
    equal_error_rate,
    error_breakdown,
    far_key,
    k_fold_accuracy,
    rates_at_threshold,
    roc,
    stratified_folds,
    tar_at_far,
    verification_metrics,
    verification_summary,
)
from facetrip.evaluation.pairs import MAX_PAIRS, Pairs, distances_between, pair_distances, verification_pairs
from facetrip.evaluation.pairs_file import NamedPairs, PairsFileError, parse_lfw_pairs, read_lfw_pairs
from facetrip.evaluation.plots import roc_plot_png

__all__ = [
    "FAR_TARGETS",
    "MAX_PAIRS",
    "NUM_FOLDS",
    "NamedPairs",
    "Pairs",
    "PairsFileError",
    "accuracy_of",
    "best_threshold",
    "distances_between",
    "equal_error_rate",
    "error_breakdown",
    "far_key",
    "k_fold_accuracy",
    "pair_distances",
    "parse_lfw_pairs",
    "rates_at_threshold",
    "read_lfw_pairs",
    "roc",
    "roc_plot_png",
    "stratified_folds",
    "tar_at_far",
    "verification_metrics",
    "verification_pairs",
    "verification_summary",
]
