"""Verification metrics on pair distances: pairs, ROC, EER, TAR@FAR, k-fold accuracy, plots.

Pure NumPy and scikit-learn; no TensorFlow, no files (the ROC plot is returned as PNG bytes).

A verification decision is ``distance(a, b) <= threshold`` means "same person". Over a set
of pairs with ``P`` same-identity and ``N`` different-identity pairs, a threshold ``t`` gives

    TAR(t) = #{same pairs with d <= t} / P          (true accept rate)
    FAR(t) = #{different pairs with d <= t} / N     (false accept rate)
    FRR(t) = 1 - TAR(t)                              (false reject rate)

and the ROC curve is ``(FAR(t), TAR(t))`` over every threshold. Scores handed to
scikit-learn are negated distances (larger = more alike).
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import numpy as np

# Above this many unordered pairs, pair_distances uses a seeded random subset of pairs.
MAX_PAIRS = 2_000_000
# The false accept rates at which the true accept rate is reported.
FAR_TARGETS = (0.1, 0.01, 0.001)
NUM_FOLDS = 10
# Margin when comparing a false accept rate with its target (FAR values are ratios k / N).
_RATE_TOLERANCE = 1e-12


def far_key(target: float) -> str:
    """The report key of the TAR at a false accept rate: 0.01 -> ``tar_at_far_1pct``."""
    return f"tar_at_far_{target * 100:g}pct"


# ----------------------------------------------------------------------------- distances


def distances_between(first: np.ndarray, second: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Row-wise distances ``d(first[m], second[m])``.

    Args:
        first, second: (M, D) arrays.
        metric: ``euclidean`` (||a - b||), ``squared`` (||a - b||^2) or ``cosine``
            (1 - a.b / (||a|| ||b||)).

    Returns:
        (M,) float64 distances.
    """
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)  # (M,)
        return 1.0 - np.sum(first * second, axis=1) / np.maximum(norms, 1e-12)
    if metric not in ("euclidean", "squared"):
        raise ValueError(f"Unknown metric {metric!r}: choose euclidean, squared or cosine.")
    squared = np.sum((first - second) ** 2, axis=1)  # (M,)
    return squared if metric == "squared" else np.sqrt(squared)


def pair_distances(embeddings: np.ndarray, labels: np.ndarray, metric: str = "euclidean", seed: int = 0):
    """Distances and same-identity flags of all unordered pairs (i < j), or of a seeded subset.

    Args:
        embeddings: (N, D) array.
        labels: (N,) identity labels.
        metric: euclidean | squared | cosine.
        seed: for the subset when there are more than ``MAX_PAIRS`` pairs.

    Returns:
        ``(distances (M,), same (M,) bool)``.
    """
    embeddings = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels).reshape(-1)
    first, second = np.triu_indices(len(labels), k=1)  # (M,), (M,)
    if len(first) > MAX_PAIRS:
        chosen = np.random.default_rng(seed).choice(len(first), MAX_PAIRS, replace=False)
        first, second = first[chosen], second[chosen]
    return distances_between(embeddings[first], embeddings[second], metric), labels[first] == labels[second]


# ----------------------------------------------------------------------------- pairs


@dataclasses.dataclass
class Pairs:
    """Image pairs to verify, as indices into an image list.

    Attributes:
        first, second: (M,) int64 image indices, ``first != second``.
        same: (M,) bool, the two images show the same identity.
        folds: (M,) int64 fold of each pair (from an LFW pairs file), or None.
        how: one line saying how the pairs were chosen.
    """

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    folds: np.ndarray | None = None
    how: str = ""

    def __len__(self) -> int:
        return len(self.same)

    @property
    def num_same(self) -> int:
        return int(np.sum(self.same))

    @property
    def num_different(self) -> int:
        return len(self) - self.num_same


def _pair_counts(labels: np.ndarray):
    """For images sorted by label: the sort order, and each sorted image's count of same and different partners after it.

    Returns:
        ``(order (N,), block_end (N,), same_after (N,), different_after (N,))``: in the sorted
        order, image ``i``'s identity occupies positions ``[start, block_end[i])``; it forms
        ``same_after[i] = block_end[i] - i - 1`` same pairs with later images of its identity
        and ``different_after[i] = N - block_end[i]`` different pairs with the images of
        later identities. Every unordered pair is counted once, at its smaller position.
    """
    order = np.argsort(labels, kind="stable")  # (N,)
    sorted_labels = labels[order]
    _, starts, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    block_end = np.repeat(starts + counts, counts)  # (N,)
    positions = np.arange(len(labels))
    return order, block_end, block_end - positions - 1, len(labels) - block_end


def _unrank(ranks: np.ndarray, partners_after: np.ndarray, first_partner: np.ndarray):
    """Pair positions from linear ranks: rank r -> (i, first_partner[i] + offset).

    Pairs are enumerated position by position: position ``i`` owns ranks
    ``[cumsum[i] - partners_after[i], cumsum[i])``, and its ``offset``-th pair is with
    position ``first_partner[i] + offset``.
    """
    cumulative = np.cumsum(partners_after)  # (N,)
    positions = np.searchsorted(cumulative, ranks, side="right")  # (S,)
    offsets = ranks - (cumulative[positions] - partners_after[positions])
    return positions, first_partner[positions] + offsets


def verification_pairs(labels, max_pairs_per_class: int = 50_000, seed: int = 0) -> Pairs:
    """All unordered pairs of a small set, or a seeded balanced sample of a large one.

    When both the same-identity and the different-identity pairs number at most
    ``max_pairs_per_class``, every unordered pair (i < j) is used. Otherwise
    ``n = min(max_pairs_per_class, same pairs, different pairs)`` pairs of each kind are
    drawn uniformly without replacement, so the sample is balanced (n same, n different).
    Pairs are ranked exactly (no N x N matrix, no rejection): with images sorted by
    identity, image ``i`` has ``block_end - i - 1`` same partners after it and
    ``N - block_end`` different ones, so a rank in ``[0, total)`` names one pair.

    Args:
        labels: (N,) identity labels.
        max_pairs_per_class: most same (and most different) pairs.
        seed: seed of the sample.

    Returns:
        :class:`Pairs` with ``first < second`` never equal, no pair twice, sorted by
        (first, second).
    """
    labels = np.asarray(labels).reshape(-1)
    order, block_end, same_after, different_after = _pair_counts(labels)
    total_same, total_different = int(same_after.sum()), int(different_after.sum())
    positions = np.arange(len(labels))
    if total_same <= max_pairs_per_class and total_different <= max_pairs_per_class:
        same_ranks, different_ranks = np.arange(total_same), np.arange(total_different)
        how = f"all {total_same + total_different:,} unordered pairs"
    else:
        per_class = min(max_pairs_per_class, total_same, total_different)
        rng = np.random.default_rng(seed)
        same_ranks = np.sort(rng.choice(total_same, per_class, replace=False))
        different_ranks = np.sort(rng.choice(total_different, per_class, replace=False))
        how = (f"seeded balanced sample (seed {seed}): {per_class:,} of {total_same:,} same and {per_class:,} of "
               f"{total_different:,} different pairs")
    same_i, same_j = _unrank(same_ranks, same_after, positions + 1)
    different_i, different_j = _unrank(different_ranks, different_after, block_end)
    first = order[np.concatenate([same_i, different_i])]
    second = order[np.concatenate([same_j, different_j])]
    first, second = np.minimum(first, second), np.maximum(first, second)
    same = np.concatenate([np.ones(len(same_i), bool), np.zeros(len(different_i), bool)])
    by_pair = np.lexsort((second, first))
    return Pairs(first[by_pair].astype(np.int64), second[by_pair].astype(np.int64), same[by_pair], None, how)


# ----------------------------------------------------------------------------- LFW pairs files


class PairsFileError(ValueError):
    """A pairs file that is not in the LFW pairs.txt format, or names images that do not exist."""


# Fields are separated by tabs (pairs.txt) or spaces (pairsDevTrain.txt), and only by those:
# str.split() would also cut a name at \v, \f, \x1c-\x1f, \x85, \u2028 and other Unicode spaces.
_PAIRS_FIELD_SEPARATOR = re.compile(r"[ \t]+")
# ASCII digits only: int() would also take '+1', '1_000' and the digits of other scripts.
_WHOLE_NUMBER = re.compile(r"[0-9]+")
# Image numbers are kept as int64; a larger one cannot be stored (nor name an image).
_LARGEST_IMAGE_NUMBER = int(np.iinfo(np.int64).max)


def _pairs_file_lines(text: str) -> list[tuple[int, list[str]]]:
    """The fields of each non-blank line of a pairs file, with its 1-based line number.

    Lines end at '\\n' only (a '\\r' before it, from Windows, is dropped): str.splitlines()
    would also end them at \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028 and \\u2029, shifting every line
    number after one and cutting a line that holds such a character in two.

    Args:
        text: the file's content.

    Returns:
        ``[(line number, fields)]`` for the lines holding more than spaces and tabs.
    """
    lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        fields = _PAIRS_FIELD_SEPARATOR.split(line.removesuffix("\r").strip(" \t"))
        if fields != [""]:
            lines.append((number, fields))
    return lines


def _whole_number(field: str) -> int | None:
    """``field`` as an int if it is written in ASCII digits only, else None.

    Args:
        field: one field of a pairs file line.

    Returns:
        The number, or None.
    """
    return int(field) if _WHOLE_NUMBER.fullmatch(field) else None


@dataclasses.dataclass
class NamedPairs:
    """Pairs of a file in the LFW format, by identity name and 1-based image number.

    Attributes:
        first_names, second_names: (M,) identity names.
        first_numbers, second_numbers: (M,) 1-based image numbers (``name/name_%04d.jpg``).
        same: (M,) bool.
        folds: (M,) int64 fold of each pair, or None when the file has no folds.
        line_numbers: (M,) the 1-based line of each pair in the file (for error messages).
    """

    first_names: list[str]
    first_numbers: np.ndarray
    second_names: list[str]
    second_numbers: np.ndarray
    same: np.ndarray
    folds: np.ndarray | None
    line_numbers: np.ndarray

    def __len__(self) -> int:
        return len(self.same)


def parse_lfw_pairs(text: str, source: str = "pairs file") -> NamedPairs:
    """Parse LFW pairs in either header style.

    - ``N`` (pairsDevTrain.txt / pairsDevTest.txt): N matched lines, then N mismatched.
    - ``FOLDS N`` (pairs.txt): FOLDS sets, each of N matched lines then N mismatched.

    A matched line is ``name i j`` (two images of one person), a mismatched line
    ``name1 i name2 j``; image numbers are 1-based. Fields are separated by tabs or
    spaces, lines by '\\n' or '\\r\\n'; blank lines are ignored.

    Args:
        text: the file's content.
        source: the file's name, for error messages.

    Returns:
        :class:`NamedPairs` in file order (folds None for the ``N`` header).

    Raises:
        PairsFileError: one line naming the file, the line number and what was expected.
    """
    lines = _pairs_file_lines(text)
    if not lines:
        raise PairsFileError(f"{source} is empty: expected the LFW pairs format (a first line 'N' or 'FOLDS N').")
    header_line, header = lines[0]
    counts = [_whole_number(field) for field in header]
    if len(counts) not in (1, 2) or None in counts or min(counts) < 1:
        raise PairsFileError(
            f"{source} line {header_line}: expected a header 'N' or 'FOLDS N' (LFW pairs format), got {' '.join(header)!r}."
        )
    num_folds, per_fold = (1, counts[0]) if len(counts) == 1 else counts
    body = lines[1:]
    expected_lines = num_folds * 2 * per_fold
    if len(body) != expected_lines:
        raise PairsFileError(
            f"{source}: the header {' '.join(header)!r} announces {expected_lines:,} pair lines but the file has {len(body):,}."
        )
    first_names, first_numbers, second_names, second_numbers, same, folds, line_numbers = [], [], [], [], [], [], []
    for position, (line_number, fields) in enumerate(body):
        matched = (position // per_fold) % 2 == 0
        expected = "'name i j' (a matched pair)" if matched else "'name1 i name2 j' (a mismatched pair)"
        if len(fields) != (3 if matched else 4):
            raise PairsFileError(f"{source} line {line_number}: expected {expected}, got {' '.join(fields)!r}.")
        names = (fields[0], fields[0]) if matched else (fields[0], fields[2])
        number_fields = (fields[1], fields[2]) if matched else (fields[1], fields[3])
        numbers = [_whole_number(field) for field in number_fields]
        if None in numbers or min(numbers) < 1:
            raise PairsFileError(
                f"{source} line {line_number}: image numbers must be whole numbers >= 1 (1-based), got {' '.join(fields)!r}."
            )
        if max(numbers) > _LARGEST_IMAGE_NUMBER:
            raise PairsFileError(
                f"{source} line {line_number}: image number {max(numbers)} is too large (at most "
                f"{_LARGEST_IMAGE_NUMBER:,}), got {' '.join(fields)!r}."
            )
        first_names.append(names[0])
        second_names.append(names[1])
        first_numbers.append(numbers[0])
        second_numbers.append(numbers[1])
        same.append(matched)
        folds.append(position // (2 * per_fold))
        line_numbers.append(line_number)
    return NamedPairs(
        first_names, np.asarray(first_numbers, np.int64), second_names, np.asarray(second_numbers, np.int64),
        np.asarray(same, bool), np.asarray(folds, np.int64) if len(counts) == 2 else None,
        np.asarray(line_numbers, np.int64),
    )


def read_lfw_pairs(path: str | Path) -> NamedPairs:
    """:func:`parse_lfw_pairs` of a UTF-8 file (a leading byte-order mark is allowed).

    The bytes are decoded as they are: reading in text mode would also turn a lone '\\r'
    into a line end, which the format does not have.

    Args:
        path: the pairs file.

    Returns:
        :class:`NamedPairs`.

    Raises:
        PairsFileError: the file cannot be read, is not UTF-8 text, or is not in the format.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        reason = "not a UTF-8 text file" if isinstance(error, UnicodeDecodeError) else type(error).__name__
        raise PairsFileError(f"Cannot read the pairs file {path} ({reason}).") from None
    return parse_lfw_pairs(text, str(path))


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


# ----------------------------------------------------------------------------- plot


def roc_plot_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "ROC") -> bytes:
    """ROC curves on a log-scaled false-accept axis, as PNG bytes.

    Args:
        curves: ``{label: (false_accept_rate, true_accept_rate)}``, the first drawn boldest.
        title: the plot's title.

    Returns:
        PNG bytes (matplotlib, Agg backend). FAR = 0 is drawn at the left edge, half the
        smallest non-zero FAR of any curve.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positive = [far[far > 0].min() for far, _ in curves.values() if np.any(far > 0)]
    floor = min(positive) / 2 if positive else 1e-4
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for index, (label, (false_accept, true_accept)) in enumerate(curves.items()):
        axis.step(np.maximum(false_accept, floor), true_accept, where="post", label=label,
                  linewidth=2.2 if index == 0 else 1.3, alpha=1.0 if index == 0 else 0.85)
    for target in FAR_TARGETS:
        if target > floor:
            axis.axvline(target, color="grey", linestyle=":", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_xlim(floor, 1.0)
    axis.set_ylim(0.0, 1.01)
    axis.set_xlabel("false accept rate (log scale)")
    axis.set_ylabel("true accept rate")
    axis.set_title(title, fontsize=10)
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
