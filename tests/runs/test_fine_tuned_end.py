"""The fine-tuned end a run keeps below share 1: written whole, read back exactly, refused when it is not the run's."""

import numpy as np
import pytest

from facetrip.runs.fine_tuned_end import FINE_TUNED_WEIGHTS_FILE, load_fine_tuned_weights, save_fine_tuned_weights


def weights():
    generator = np.random.default_rng(0)
    return [generator.normal(size=(3, 3, 4, 8)).astype(np.float32), generator.normal(size=8).astype(np.float32),
            np.array(7, np.int64)]


def test_kept_weights_read_back_exactly_in_their_order(tmp_path):
    record = save_fine_tuned_weights(weights(), tmp_path)
    assert record["file"] == FINE_TUNED_WEIGHTS_FILE and record["arrays"] == 3
    assert record["bytes"] == (tmp_path / FINE_TUNED_WEIGHTS_FILE).stat().st_size
    assert [path.name for path in tmp_path.iterdir()] == [FINE_TUNED_WEIGHTS_FILE]  # no temporary file left
    loaded = load_fine_tuned_weights(tmp_path, record, like=weights())
    for kept, original in zip(loaded, weights(), strict=True):
        assert kept.dtype == original.dtype
        np.testing.assert_array_equal(kept, original)


@pytest.mark.parametrize("damage, message", [
    (lambda path, record: path.unlink(), "is missing"),
    (lambda path, record: path.write_bytes(path.read_bytes()[:-10]), "truncated or damaged"),
    (lambda path, record: path.write_bytes(path.read_bytes()[:-1] + b"x"), "truncated or damaged"),
    (lambda path, record: record.update(sha256=1), "not a record facetrip writes"),
    (lambda path, record: record.update(file="../model.keras"), "not a record facetrip writes"),
])
def test_a_missing_damaged_or_foreign_file_is_one_line(tmp_path, damage, message):
    record = save_fine_tuned_weights(weights(), tmp_path)
    damage(tmp_path / FINE_TUNED_WEIGHTS_FILE, record)
    with pytest.raises(ValueError, match=message) as raised:
        load_fine_tuned_weights(tmp_path, record, like=weights())
    assert "\n" not in str(raised.value)


def test_weights_of_another_network_are_refused(tmp_path):
    record = save_fine_tuned_weights(weights(), tmp_path)
    other = weights()[:2] + [np.zeros((2, 2), np.float32)]
    with pytest.raises(ValueError, match="does not hold this run's weights"):
        load_fine_tuned_weights(tmp_path, record, like=other)
    with pytest.raises(ValueError, match="does not hold this run's weights"):
        load_fine_tuned_weights(tmp_path, record, like=weights()[:2])


def test_a_pickled_array_is_not_loaded(tmp_path):
    """An object array needs pickle to load: np.load refuses it, and the error stays one line."""
    import hashlib

    path = tmp_path / FINE_TUNED_WEIGHTS_FILE
    with open(path, "wb") as handle:
        np.savez(handle, np.array([{"a": 1}], dtype=object))
    record = {"file": FINE_TUNED_WEIGHTS_FILE, "arrays": 1, "bytes": path.stat().st_size,
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    with pytest.raises(ValueError) as raised:
        load_fine_tuned_weights(tmp_path, record, like=[np.zeros(1, np.float32)])
    assert "\n" not in str(raised.value)


def test_a_file_that_is_no_archive_is_one_line_even_when_its_record_matches(tmp_path):
    import hashlib

    path = tmp_path / FINE_TUNED_WEIGHTS_FILE
    path.write_bytes(b"PK\x03\x04 not a zip archive")
    record = {"file": FINE_TUNED_WEIGHTS_FILE, "arrays": 1, "bytes": path.stat().st_size,
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    with pytest.raises(ValueError, match="not a weights archive facetrip writes"):
        load_fine_tuned_weights(tmp_path, record, like=[np.zeros(1, np.float32)])
