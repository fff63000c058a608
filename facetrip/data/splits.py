"""Identity-disjoint train / dev / test splits: evaluation only ever sees strangers.

Identities, never images, are split: a seeded permutation of the identity names, then
the first ``test`` go to test, the next ``dev`` to dev, and the rest to train. A count
(>= 1) or a fraction (< 1) of the identities may be given for each. The split is saved
with the run so that evaluation can prove no test identity was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from facetrip.data.errors import DataError
from facetrip.untrusted_files import UntrustedFileError, read_untrusted_json

# The largest split.json read: the names of 10^6 identities take some 20 MB.
SPLIT_SIZE_LIMIT = 32 << 20

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class IdentitySplit:
    """Which identities went where, and the seed that chose them."""

    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]
    seed: int

    def __post_init__(self):
        for first, second in (("train", "dev"), ("train", "test"), ("dev", "test")):
            shared = set(getattr(self, first)) & set(getattr(self, second))
            if shared:
                raise DataError(f"Identity split is not disjoint: {len(shared)} identities in both {first} and {second}.")

    def identities(self, split: str) -> tuple[str, ...]:
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}: choose one of {', '.join(SPLITS)}.")
        return getattr(self, split)

    def to_dict(self) -> dict:
        return {"seed": self.seed, **{split: list(getattr(self, split)) for split in SPLITS}}

    @classmethod
    def from_dict(cls, data: dict) -> IdentitySplit:
        return cls(**{split: tuple(data[split]) for split in SPLITS}, seed=int(data["seed"]))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> IdentitySplit:
        """The split saved in ``path`` (a run's ``split.json``), read as an untrusted file.

        Raises:
            FileNotFoundError: there is no such file.
            DataError: the file cannot be read, is not JSON, nests too deep, or lacks a part.
        """
        try:
            data = read_untrusted_json(path, SPLIT_SIZE_LIMIT, "identity split")
            return cls.from_dict(data)
        except UntrustedFileError as error:
            if error.reason == "missing":
                raise FileNotFoundError(2, "No such file", str(path)) from None
            raise DataError(f"{error}.") from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DataError(f"{path} is not an identity split facetrip writes (it needs the lists "
                            f"{', '.join(SPLITS)} and a seed).") from None


def _how_many(amount: float, total: int, what: str) -> int:
    if not math.isfinite(amount):
        raise DataError(f"{what} must be a whole count (>= 1) or a fraction (< 1), not {amount}.")
    if amount < 0:
        raise DataError(f"{what} must be >= 0, not {amount}.")
    if amount < 1:
        return int(math.floor(amount * total + 0.5)) if amount > 0 else 0
    if amount != int(amount):
        raise DataError(f"{what} must be a whole count (>= 1) or a fraction (< 1), not {amount}.")
    return int(amount)


def split_identities(identity_names, dev: float = 0, test: float = 10, seed: int = 0) -> IdentitySplit:
    """Split identity names into disjoint train / dev / test sets.

    Args:
        identity_names: every identity of the data set.
        dev: count (>= 1) or fraction (< 1) of identities for dev.
        test: count (>= 1) or fraction (< 1) of identities for test.
        seed: seed of the permutation; the same names and seed give the same split.

    Returns:
        :class:`IdentitySplit`, each part sorted by name.

    Raises:
        DataError: fewer than two identities would be left for training.
    """
    names = sorted({str(name) for name in identity_names})
    num_test, num_dev = _how_many(test, len(names), "test"), _how_many(dev, len(names), "dev")
    if len(names) - num_test - num_dev < 2:
        raise DataError(
            f"{len(names)} identities cannot give {num_test} for test and {num_dev} for dev and still leave "
            f"two for training: lower the test/dev counts or add identities."
        )
    permuted = [names[index] for index in np.random.default_rng(seed).permutation(len(names))]
    return IdentitySplit(
        test=tuple(sorted(permuted[:num_test])),
        dev=tuple(sorted(permuted[num_test : num_test + num_dev])),
        train=tuple(sorted(permuted[num_test + num_dev :])),
        seed=seed,
    )
