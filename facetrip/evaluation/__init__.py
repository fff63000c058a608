"""Evaluating embeddings on verification pairs: pairs, LFW pairs files, metrics, the ROC plot.

Light to import (NumPy only; scikit-learn and matplotlib load when a function needs them).
The modules that need more are imported by name: ``facetrip.evaluation.calibration``
(SciPy), ``facetrip.evaluation.baselines`` (scikit-learn) and ``facetrip.evaluation.report``
(a run's evaluation report).
"""

from facetrip.evaluation.metrics import (
    FAR_TARGETS,
    MAX_PAIRS,
    NUM_FOLDS,
    NamedPairs,
    Pairs,
    PairsFileError,
    accuracy_of,
    best_threshold,
    distances_between,
    equal_error_rate,
    error_breakdown,
    far_key,
    k_fold_accuracy,
    pair_distances,
    parse_lfw_pairs,
    rates_at_threshold,
    read_lfw_pairs,
    roc,
    roc_plot_png,
    stratified_folds,
    tar_at_far,
    verification_metrics,
    verification_pairs,
    verification_summary,
)

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
