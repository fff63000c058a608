"""What mining returns: the category and metric names, :class:`MiningResult`, and the checks of its fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

TRIPLET_CATEGORIES = ("easy", "semi_hard", "hard")
COUNT_KEYS = TRIPLET_CATEGORIES + ("total",)
DEFAULT_CATEGORIES = ("hard", "semi_hard")


@dataclass(frozen=True)
class MiningResult:
    """What :func:`mine_triplets` found.

    Attributes:
        counts: exact numbers of ``easy``, ``semi_hard``, ``hard`` and ``total`` valid triplets.
        triplets: (M, 3) int64 (anchor, positive, negative) indices into the embeddings,
            M <= max_triplets, in random order.
        margin: the margin of the categories.
        metric: ``"euclidean"``, ``"squared"`` or ``"cosine"``.
        categories: the categories the triplets were drawn from.
        file_names: optional (N,) names of the embedded images (set by :func:`load_triplets`
            when the file holds them).
        source: optional name of the data source.
    """

    counts: dict
    triplets: np.ndarray = field(compare=False)
    margin: float
    metric: str
    categories: tuple = DEFAULT_CATEGORIES
    file_names: Optional[np.ndarray] = field(default=None, compare=False)
    source: Optional[str] = None


def resolve_categories(categories) -> tuple:
    """The chosen categories in ``TRIPLET_CATEGORIES`` order, e.g. ``("semi_hard", "hard")``."""
    chosen = (categories,) if isinstance(categories, str) else tuple(categories)
    unknown = [name for name in chosen if name not in TRIPLET_CATEGORIES]
    if unknown or not chosen:
        raise ValueError(f"categories must be a non-empty subset of {TRIPLET_CATEGORIES}, got {categories!r}.")
    return tuple(name for name in TRIPLET_CATEGORIES if name in chosen)


def validated_margin(margin) -> float:
    try:
        value = float(margin)
    except (TypeError, ValueError):
        raise ValueError(f"margin must be a number >= 0, got {margin!r}.") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}.")
    return value


def validated_triplets(triplets: np.ndarray, what: str) -> np.ndarray:
    if triplets.ndim != 2 or triplets.shape[1] != 3 or triplets.dtype.kind not in "iu":
        raise ValueError(f"{what} must be an (M, 3) integer array, got {triplets.dtype} {triplets.shape}.")
    if len(triplets) and triplets.min() < 0:
        raise ValueError(f"{what} holds negative indices.")
    return triplets.astype(np.int64)


def validated_counts(counts: dict, what: str) -> dict:
    counts = {key: int(value) for key, value in counts.items()}
    if any(value < 0 for value in counts.values()):
        raise ValueError(f"{what} holds negative counts.")
    if counts["easy"] + counts["semi_hard"] + counts["hard"] != counts["total"]:
        raise ValueError(f"{what}: easy + semi_hard + hard != total.")
    return counts
