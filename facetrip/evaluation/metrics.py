"""Verification metrics on pair distances: ROC, EER, TAR@FAR, k-fold accuracy, rates at a threshold.

Pure NumPy and scikit-learn (imported by the functions that use it); no TensorFlow, no files.

A verification decision is ``distance(a, b) <= threshold`` means "same person". Over a set
of pairs with ``P`` same-identity and ``N`` different-identity pairs, a threshold ``t`` gives

    TAR(t) = #{same pairs with d <= t} / P          (true accept rate)
    FAR(t) = #{different pairs with d <= t} / N     (false accept rate)
    FRR(t) = 1 - TAR(t)                              (false reject rate)

and the ROC curve is ``(FAR(t), TAR(t))`` over every threshold. Scores handed to
scikit-learn are negated distances (larger = more alike).
"""

from __future__ import annotations

import numpy as np

# The false accept rates at which the true accept rate is reported.
FAR_TARGETS = (0.1, 0.01, 0.001)
NUM_FOLDS = 10
# Margin when comparing a false accept rate with its target (FAR values are ratios k / N).
_RATE_TOLERANCE = 1e-12


def far_key(target: float) -> str:
    """The report key of the TAR at a false accept rate: 0.01 -> ``tar_at_far_1pct``."""
    return f"tar_at_far_{target * 100:g}pct"


# ----------------------------------------------------------------------------- metrics


def roc(distances: np.ndarray, same: np.ndarray):
    """The full ROC curve (no point dropped), from scikit-learn.

    Args:
        distances: (M,) pair distances.
        same: (M,) bool.

    Returns:
        ``(false_accept_rate, true_accept_rate, thresholds)``, each (K,), in order of
        increasing distance threshold; point ``k`` accepts the pairs with
        ``distance <= thresholds[k]``. The first point accepts nothing (threshold -inf).

    Raises:
        ValueError: the pairs hold only one class (all same or all different).
    """
    from sklearn.metrics import roc_curve

    same = np.asarray(same, bool)
    if same.all() or not same.any():
        raise ValueError("Verification needs both same-identity and different-identity pairs.")
    false_accept, true_accept, score_thresholds = roc_curve(same, -np.asarray(distances, np.float64), drop_intermediate=False)
    return false_accept, true_accept, -score_thresholds


def equal_error_rate(false_accept: np.ndarray, true_accept: np.ndarray, thresholds: np.ndarray, distances: np.ndarray):
    """The ROC point where the false accept and false reject rates are closest.

    ``k* = argmin_k |FAR_k - FRR_k|``, ``EER = (FAR_k* + FRR_k*) / 2``; the threshold is
    that point's distance (the largest distance when the point accepts nothing).

    Returns:
        ``(eer, threshold)``.
    """
    false_reject = 1.0 - true_accept
    index = int(np.argmin(np.abs(false_accept - false_reject)))
    threshold = thresholds[index] if np.isfinite(thresholds[index]) else np.max(distances)
    return float((false_accept[index] + false_reject[index]) / 2), float(threshold)


def tar_at_far(false_accept: np.ndarray, true_accept: np.ndarray, thresholds: np.ndarray, target: float):
    """The highest true accept rate among ROC points with ``FAR <= target``.

    Returns:
        ``(tar, threshold)``; the threshold is None when only the accept-nothing point qualifies.
    """
    within = np.flatnonzero(false_accept <= target + _RATE_TOLERANCE)  # never empty: FAR_0 = 0
    index = within[np.argmax(true_accept[within])]
    return float(true_accept[index]), (float(thresholds[index]) if np.isfinite(thresholds[index]) else None)


def accuracy_of(accepted: np.ndarray, same: np.ndarray, balanced: bool = True) -> float:
    """Accuracy of accept / reject decisions.

    ``balanced``: ``(TAR + (1 - FAR)) / 2``, each class weighted equally (the mean correct
    rate over the classes present); otherwise the plain fraction of correct decisions.
    The two agree on balanced pairs (an LFW pairs file, a balanced sample).
    """
    accepted, same = np.asarray(accepted, bool), np.asarray(same, bool)
    if not balanced:
        return float(np.mean(accepted == same))
    rates = [np.mean(accepted[members] == same[members]) for members in (same, ~same) if members.any()]
    return float(np.mean(rates))


def best_threshold(distances: np.ndarray, same: np.ndarray, balanced: bool = True):
    """The threshold that maximises verification accuracy (:func:`accuracy_of`) on the given pairs.

    Candidates are one below the smallest distance (reject all), the midpoints between
    consecutive distinct distances and one above the largest (accept all). With P same
    and N different pairs, a candidate t scores

        balanced:  (#same with d <= t) / (2P) + (#different with d > t) / (2N)
        plain:     (#same with d <= t + #different with d > t) / (P + N)

    and ties go to the smallest candidate.

    Returns:
        ``(threshold, accuracy)``.
    """
    distances, same = np.asarray(distances, np.float64), np.asarray(same, bool)
    num_same, num_different = int(same.sum()), int((~same).sum())
    if balanced and num_same and num_different:
        same_weight, different_weight = 1.0 / (2 * num_same), 1.0 / (2 * num_different)
    else:
        same_weight = different_weight = 1.0 / len(distances)
    unique, inverse = np.unique(distances, return_inverse=True)  # (K,), (M,)
    same_at = np.bincount(inverse, weights=same, minlength=len(unique))  # (K,) same pairs at each distance
    different_at = np.bincount(inverse, weights=~same, minlength=len(unique))
    # candidate k accepts the distances unique[:k]: k = 0 (reject all) ... K (accept all)
    same_accepted = np.concatenate([[0.0], np.cumsum(same_at)])  # (K + 1,)
    different_accepted = np.concatenate([[0.0], np.cumsum(different_at)])
    scores = same_weight * same_accepted + different_weight * (num_different - different_accepted)  # (K + 1,)
    candidates = np.concatenate([[unique[0] - 1.0], (unique[:-1] + unique[1:]) / 2, [unique[-1] + 1.0]])
    best = int(np.flatnonzero(scores >= scores.max() - 1e-12)[0])  # the first maximum (up to rounding): the smallest threshold
    return float(candidates[best]), float(scores[best])


def stratified_folds(same: np.ndarray, num_folds: int = NUM_FOLDS, seed: int = 0) -> np.ndarray:
    """A seeded fold for each pair, same and different pairs dealt out separately.

    Each class is permuted and dealt round-robin, so every fold holds (within one pair) the
    same share of same-identity pairs as the whole set.

    Returns:
        (M,) int64 folds in ``[0, num_folds)``.
    """
    same = np.asarray(same, bool)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(same), np.int64)
    for members in (np.flatnonzero(same), np.flatnonzero(~same)):
        folds[rng.permutation(members)] = np.arange(len(members)) % num_folds
    return folds


def k_fold_accuracy(distances: np.ndarray, same: np.ndarray, folds: np.ndarray | None = None,
                    num_folds: int = NUM_FOLDS, seed: int = 0, balanced: bool = True) -> dict:
    """LFW-style accuracy: for each fold, the threshold that maximises accuracy on the other
    folds (:func:`best_threshold`), applied to that fold.

    ``mean = (1/K) sum_k acc_k`` and ``std = sqrt((1/K) sum_k (acc_k - mean)^2)`` (the
    population standard deviation, as LFW results report it). By default each fold's
    accuracy weighs same and different pairs equally (:func:`accuracy_of`): on LFW's
    balanced folds that is LFW's accuracy, and on all pairs of a small split (about 9
    different pairs to each same pair on ORL) rejecting everything does not score 90%.

    Args:
        distances: (M,) pair distances.
        same: (M,) bool.
        folds: (M,) fold of each pair (a pairs file's sets); None for seeded
            :func:`stratified_folds`.
        num_folds: folds when ``folds`` is None.
        seed: seed of the fold assignment when ``folds`` is None.
        balanced: class-balanced accuracy (True) or the plain fraction correct.

    Returns:
        ``{"mean", "std", "fold_accuracies", "fold_thresholds", "num_folds", "folds", "balanced"}``;
        ``folds`` says where the folds came from.

    Raises:
        ValueError: fewer pairs than folds, or fewer than two folds.
    """
    distances, same = np.asarray(distances, np.float64), np.asarray(same, bool)
    origin = "pairs file"
    if folds is None:
        if len(same) < num_folds:
            raise ValueError(f"{num_folds}-fold accuracy needs at least {num_folds} pairs, not {len(same)}.")
        folds, origin = stratified_folds(same, num_folds, seed), f"seeded, stratified (seed {seed})"
    folds = np.asarray(folds)
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError("k-fold accuracy needs at least two folds.")
    accuracies, thresholds = [], []
    for fold in fold_ids:
        held_out = folds == fold
        threshold, _ = best_threshold(distances[~held_out], same[~held_out], balanced)
        accuracies.append(accuracy_of(distances[held_out] <= threshold, same[held_out], balanced))
        thresholds.append(threshold)
    return {
        "mean": float(np.mean(accuracies)),
        "std": float(np.std(accuracies)),
        "fold_accuracies": accuracies,
        "fold_thresholds": thresholds,
        "num_folds": len(fold_ids),
        "folds": origin,
        "balanced": balanced,
    }


def rates_at_threshold(distances: np.ndarray, same: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, false accept and false reject rates of ``distance <= threshold`` on these pairs.

    Returns:
        ``{"threshold", "accuracy", "far", "frr"}`` with ``far = #{different, d <= t} / N`` and
        ``frr = #{same, d > t} / P``.
    """
    distances, same = np.asarray(distances, np.float64), np.asarray(same, bool)
    accepted = distances <= threshold
    return {
        "threshold": float(threshold),
        "accuracy": float(np.mean(accepted == same)),
        "far": float(np.mean(accepted[~same])) if (~same).any() else float("nan"),
        "frr": float(np.mean(~accepted[same])) if same.any() else float("nan"),
    }


def error_breakdown(distances: np.ndarray, same: np.ndarray, first_identity, second_identity,
                    threshold: float, top: int = 5) -> dict:
    """Which identities a threshold fails on: false rejects per identity, false accepts per identity pair.

    A same pair is falsely rejected when ``d > threshold``; a different pair is falsely
    accepted when ``d <= threshold``. Rates are per identity (of the same pairs of that
    identity) and per unordered identity pair (of the different pairs between the two).

    Args:
        distances: (M,) pair distances.
        same: (M,) bool.
        first_identity, second_identity: (M,) identity names of the two images of each pair.
        threshold: accept a pair when its distance is at most this.
        top: how many identities and identity pairs to list (highest rate first, then name).

    Returns:
        ``{"threshold", "false_rejects": [{"identity", "rate", "errors", "pairs"}],
        "false_accepts": [{"identities": [a, b], "rate", "errors", "pairs"}]}``, listing only
        entries with at least one error.
    """
    distances, same = np.asarray(distances, np.float64), np.asarray(same, bool)
    first = np.asarray([str(name) for name in first_identity], dtype=object)
    second = np.asarray([str(name) for name in second_identity], dtype=object)
    accepted = distances <= threshold

    def ranked(keys: np.ndarray, errors: np.ndarray) -> list[tuple]:
        """(key, rate, errors, pairs) for each distinct key with an error, worst first."""
        rows = []
        for key in sorted(set(keys.tolist())):
            members = keys == key
            count = int(np.sum(errors[members]))
            if count:
                rows.append((key, count / int(np.sum(members)), count, int(np.sum(members))))
        return sorted(rows, key=lambda row: (-row[1], row[0]))[:top]

    rejected = ranked(first[same], ~accepted[same])
    pair_keys = np.asarray([" / ".join(sorted((a, b))) for a, b in zip(first[~same], second[~same])], dtype=object)
    confused = ranked(pair_keys, accepted[~same])
    return {
        "threshold": float(threshold),
        "false_rejects": [{"identity": key, "rate": rate, "errors": errors, "pairs": pairs}
                          for key, rate, errors, pairs in rejected],
        "false_accepts": [{"identities": key.split(" / "), "rate": rate, "errors": errors, "pairs": pairs}
                          for key, rate, errors, pairs in confused],
    }


def verification_metrics(distances: np.ndarray, same: np.ndarray, folds: np.ndarray | None = None,
                         seed: int = 0, num_folds: int = NUM_FOLDS) -> dict:
    """Every verification number of one set of pair distances.

    Args:
        distances: (M,) pair distances (smaller = more alike).
        same: (M,) bool.
        folds: (M,) folds for the k-fold accuracy, or None for seeded stratified folds.
        seed: seed of the fold assignment.
        num_folds: folds when ``folds`` is None.

    Returns:
        ``auc`` (area under the ROC curve, scikit-learn), ``eer`` and ``eer_threshold``
        (:func:`equal_error_rate`), ``tar_at_far_10pct`` / ``_1pct`` / ``_0.1pct`` and their
        ``..._threshold`` (:func:`tar_at_far`), ``accuracy`` (:func:`k_fold_accuracy`),
        ``same_pairs`` and ``different_pairs``.

    Raises:
        ValueError: only one class of pairs.
    """
    from sklearn.metrics import roc_auc_score

    false_accept, true_accept, thresholds = roc(distances, same)
    eer, eer_threshold = equal_error_rate(false_accept, true_accept, thresholds, distances)
    metrics = {
        "auc": float(roc_auc_score(np.asarray(same, bool), -np.asarray(distances, np.float64))),
        "eer": eer,
        "eer_threshold": eer_threshold,
    }
    for target in FAR_TARGETS:
        metrics[far_key(target)], metrics[far_key(target) + "_threshold"] = tar_at_far(false_accept, true_accept, thresholds, target)
    metrics["accuracy"] = k_fold_accuracy(distances, same, folds, num_folds, seed)
    metrics["same_pairs"] = int(np.sum(same))
    metrics["different_pairs"] = int(len(same) - np.sum(same))
    return metrics


def verification_summary(distances: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """ROC summary of a verification set (the threshold calibration of training).

    Returns:
        ``auc``; ``eer`` and ``eer_threshold`` (a distance; :func:`equal_error_rate`);
        ``tar_at_far_1pct`` (true accept rate at a false accept rate of at most 1%).

    Raises:
        ValueError: the pairs hold only one class (all same or all different).
    """
    from sklearn.metrics import roc_auc_score

    false_accept, true_accept, thresholds = roc(distances, same)
    eer, eer_threshold = equal_error_rate(false_accept, true_accept, thresholds, distances)
    return {
        "auc": float(roc_auc_score(np.asarray(same, bool), -np.asarray(distances, np.float64))),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "tar_at_far_1pct": tar_at_far(false_accept, true_accept, thresholds, 0.01)[0],
    }


def hardest_errors(distances: np.ndarray, same: np.ndarray, threshold: float, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs a threshold gets wrong by the widest margin.

    A different pair is falsely accepted when ``d <= threshold``, a same pair falsely
    rejected when ``d > threshold`` (as :func:`rates_at_threshold`). The hardest false
    accepts are those with the smallest distances, the hardest false rejects those with the
    largest; ties keep the pairs' order.

    Args:
        distances: (M,) pair distances.
        same: (M,) bool.
        threshold: accept a pair when its distance is at most this.
        count: most pairs of each kind.

    Returns:
        ``(false_accepts, false_rejects)``: (<= count,) int indices into the pairs, the
        most extreme first.
    """
    distances, same = np.asarray(distances, np.float64), np.asarray(same, bool)
    accepted = distances <= threshold
    false_accepts = np.flatnonzero(accepted & ~same)  # (A,)
    false_rejects = np.flatnonzero(~accepted & same)  # (R,)
    false_accepts = false_accepts[np.argsort(distances[false_accepts], kind="stable")[:count]]
    false_rejects = false_rejects[np.argsort(-distances[false_rejects], kind="stable")[:count]]
    return false_accepts, false_rejects
