"""Shared test set-up: quiet TensorFlow, make `tests/reference.py` importable, seeded data."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

METRICS = ("euclidean", "squared", "cosine")
MARGINS = (0.0, 0.2, 0.5, "soft")


def pk_labels(num_identities: int, images_per_identity: int) -> np.ndarray:
    return np.repeat(np.arange(num_identities), images_per_identity)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One tfds storage folder for the whole session (ORL is prepared once)."""
    return str(tmp_path_factory.mktemp("tfds"))
