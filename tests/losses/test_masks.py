import numpy as np
import pytest

import reference
from facetrip.losses import anchor_negative_mask, anchor_positive_mask, triplet_mask


@pytest.fixture
def labels(rng):
    return rng.integers(0, 4, size=10)


def test_anchor_positive_triplet_mask(labels):
    np.testing.assert_array_equal(anchor_positive_mask(labels).numpy(), reference.anchor_positive_mask(labels))


def test_anchor_negative_triplet_mask(labels):
    np.testing.assert_array_equal(anchor_negative_mask(labels).numpy(), reference.anchor_negative_mask(labels))


def test_triplet_mask(labels):
    mask = triplet_mask(labels).numpy()
    assert mask.shape == (10, 10, 10)
    np.testing.assert_array_equal(mask, reference.triplet_mask(labels))


@pytest.mark.parametrize("mask_function", [anchor_positive_mask, anchor_negative_mask, triplet_mask])
def test_masks_accept_column_and_string_labels(labels, mask_function):
    expected = mask_function(labels).numpy()
    np.testing.assert_array_equal(mask_function(labels.reshape(-1, 1)).numpy(), expected)
    names = np.array([f"person_{label}" for label in labels])
    np.testing.assert_array_equal(mask_function(names).numpy(), expected)


def test_masks_keep_large_integer_labels_apart():
    """2^24 and 2^24 + 1 are the same float32: integer labels must compare as integers."""
    labels = np.array([2**24, 2**24 + 1], np.int64)
    assert not anchor_positive_mask(labels).numpy().any()
    assert anchor_negative_mask(labels).numpy()[0, 1]
