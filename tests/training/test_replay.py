"""Replay (``train.replay``, ``--replay``): mixed P x K batches, photos of two sources read as one, the run's record."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, run_cli
from helpers import assert_resume_equals_uninterrupted, one_line_error
from facetrip.data import DataError, PKSampler
from facetrip.data.combined import ChainedColumn, chained_faces, chained_reader
from facetrip.data.sampler import MixedPKSampler, second_group_identities
from facetrip.data.sources import FaceImages


def mixed_labels(first_people=10, second_people=7, photos=5):
    """Labels of ``first_people`` then ``second_people`` people with ``photos`` each; (labels, is_second)."""
    labels = np.repeat(np.arange(first_people + second_people), photos)
    return labels, labels >= first_people


@pytest.mark.parametrize("share, expected", [(0.25, 1), (0.5, 2), (0.75, 3), (0.0, 0), (0.01, 1), (0.99, 3)])
def test_the_replay_identities_per_batch_round_the_share_and_leave_one_training_identity(share, expected):
    assert second_group_identities(share, 4) == expected


@pytest.mark.parametrize("share", [0.25, 0.4, 0.6])
def test_every_batch_holds_the_asked_share_of_replay_identities_with_k_photos_each(share):
    labels, second = mixed_labels()
    sampler = MixedPKSampler(labels, second, identities_per_batch=5, images_per_identity=3, share=share, seed=3)
    replay_per_batch = int(round(share * 5))
    for epoch in range(3):
        batches = sampler.epoch(epoch)
        assert batches.shape == (sampler.batches_per_epoch, 15)
        for batch in batches:
            batch_labels = labels[batch].reshape(5, 3)  # P slots of K photos
            assert (batch_labels == batch_labels[:, :1]).all()  # each slot is one identity's K photos
            people = batch_labels[:, 0]
            assert len(set(people.tolist())) == 5  # P distinct identities
            assert second[batch].reshape(5, 3)[:, 0].sum() == replay_per_batch
            assert not second[batch[: (5 - replay_per_batch) * 3]].any()  # the training identities come first


def test_an_epoch_is_one_pass_over_the_training_photos_and_the_batches_are_seeded():
    labels, second = mixed_labels(first_people=10, second_people=7, photos=6)
    sampler = MixedPKSampler(labels, second, identities_per_batch=4, images_per_identity=2, share=0.25, seed=1)
    assert sampler.batches_per_epoch == round(60 / (3 * 2))  # 60 training photos, 3 training identities a batch
    np.testing.assert_array_equal(sampler.epoch(2), MixedPKSampler(labels, second, 4, 2, 0.25, seed=1).epoch(2))
    assert not np.array_equal(sampler.epoch(2), MixedPKSampler(labels, second, 4, 2, 0.25, seed=2).epoch(2))
    # the training part is the plain sampler's batches over the training photos alone
    plain = PKSampler(labels[~second], 3, 2, seed=1, steps_per_epoch=sampler.batches_per_epoch, _part_of_batch=True)
    np.testing.assert_array_equal(sampler.epoch(0)[:, :6], np.flatnonzero(~second)[plain.epoch(0)])


def test_share_zero_draws_no_replay_photos_and_a_share_outside_0_1_is_refused():
    labels, second = mixed_labels()
    assert not second[MixedPKSampler(labels, second, 4, 2, share=0.0).epoch(0)].any()
    for share in (1.0, -0.1):
        with pytest.raises(DataError, match=r"\[0, 1\)"):
            MixedPKSampler(labels, second, 4, 2, share=share)


def test_a_chained_column_reads_each_photo_from_its_part_in_order():
    first = np.array([b"a0", b"a1", b"a2"], dtype=object)
    second = np.array([b"b0", b"b1"], dtype=object)
    column = ChainedColumn.of(first, second)
    assert len(column) == 5 and column[3] == b"b0" and list(column) == [b"a0", b"a1", b"a2", b"b0", b"b1"]
    chosen = column[np.array([4, 0, 3])]
    assert isinstance(chosen, ChainedColumn) and chosen.tolist() == [b"b1", b"a0", b"b0"]
    assert np.asarray(column[np.array([[1, 4], [3, 2]])]).tolist() == [[b"a1", b"b1"], [b"b0", b"a2"]]
    names = ChainedColumn.of(np.array(["x/1.png", "x/2.png"]), np.array(["y/1.png"]))
    assert np.asarray(names).tolist() == ["x/1.png", "x/2.png", "y/1.png"]


@pytest.mark.parametrize("indices", [[4, 0, 3, 1], [0, 2], [3, 4], []])
def test_the_chained_reader_stitches_the_parts_back_in_the_batch_order(indices):
    """Photos of one part only, and an empty batch, too: a part with nothing to read is not read."""
    import tensorflow as tf

    from facetrip.data.pipeline import _column_reader

    parts = (np.array([b"a0", b"a1", b"a2"], dtype=object), np.array([b"b0", b"b1"], dtype=object))
    column = ChainedColumn.of(*parts)
    read = chained_reader(column, _column_reader)
    got = read(tf.constant(indices, tf.int64)).numpy().tolist()
    assert got == [column[index] for index in indices]


def test_chained_faces_number_the_second_sources_people_after_the_firsts():
    def faces(names, labels, prefix):
        return FaceImages(encoded=np.array([f"{prefix}{i}".encode() for i in range(len(labels))], dtype=object),
                          labels=np.asarray(labels, np.int64), identity_names=names,
                          file_names=np.array([f"{prefix}/{i}" for i in range(len(labels))]), channels=1, source=prefix)

    combined = chained_faces(faces(["ann", "bob", "cid"], [0, 0, 2], "A"), faces(["dan", "eve"], [1, 0, 1], "B"))
    assert combined.identity_names == ["ann", "bob", "cid", "dan", "eve"]
    assert combined.labels.tolist() == [0, 0, 2, 4, 3, 4]
    assert [combined.identity_names[label] for label in combined.labels] == ["ann", "ann", "cid", "eve", "dan", "eve"]
    assert combined.encoded.tolist() == [b"A0", b"A1", b"A2", b"B0", b"B1", b"B2"]
    assert combined.take(np.array([4, 1])).file_names.tolist() == ["B/1", "A/1"]
    assert combined.source == "A"


def people_folder(root, people: int, photos: int = 3, seed: int = 0):
    """A ``folder:`` source of ``people`` people (replay_0 ..) with ``photos`` random grey 20 x 18 PNGs each."""
    rng = np.random.default_rng(seed)
    for person in range(people):
        folder = root / f"replay_{person}"
        folder.mkdir(parents=True)
        for photo in range(photos):
            Image.fromarray(rng.integers(0, 256, (20, 18), dtype=np.uint8)).save(folder / f"{photo}.png")
    return root


def test_a_run_with_replay_trains_on_both_and_records_the_replay_people(tmp_path, data_dir):
    replay = people_folder(tmp_path / "others", people=6)
    run_dir = tmp_path / "run"
    result = run_cli("train", "--config", TINY, "--run-dir", run_dir, "--data-dir", data_dir, "--epochs", "1",
                     "--replay", f"folder:{replay}", "--replay-share", "0.5", "--no-evaluate")
    assert result.exit_code == 0, result.output
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["replay"] == {"source": f"folder:{replay}", "share": 0.5, "identities": 6, "photos": 18,
                                  "left_out_by_name": 0}
    record = json.loads((run_dir / "replay.json").read_text())
    assert record["identities"] == [f"replay_{person}" for person in range(6)]
    split = json.loads((run_dir / "split.json").read_text())
    assert not set(record["identities"]) & set(split["dev"] + split["test"] + split["train"])
    assert 'replay_share = 0.5' in (run_dir / "config.toml").read_text()
    # the replay people were trained on: an evaluation on them refuses to score them as strangers
    result = run_cli("evaluate", run_dir, "--data", f"folder:{replay}", "--data-dir", data_dir, "--no-report")
    one_line_error(result, "named like training identities")


def test_replay_people_named_like_training_people_are_left_out(tmp_path, data_dir):
    """ORL's people are s1 .. s40: replay people of those names are left out, the others kept."""
    replay = people_folder(tmp_path / "others", people=6)
    (replay / "replay_0").rename(replay / "s1")
    (replay / "replay_1").rename(replay / "s2")
    run_dir = tmp_path / "run"
    result = run_cli("train", "--config", TINY, "--run-dir", run_dir, "--data-dir", data_dir, "--epochs", "1",
                     "--replay", f"folder:{replay}", "--no-evaluate")
    assert result.exit_code == 0, result.output
    record = json.loads((run_dir / "replay.json").read_text())
    assert record["identities"] == ["replay_2", "replay_3", "replay_4", "replay_5"] and record["left_out"] == ["s1", "s2"]


def test_a_resumed_run_with_replay_ends_as_an_uninterrupted_one(tmp_path, data_dir):
    from facetrip.config import Config

    config = Config.from_toml(TINY)
    config.set("data.data_dir", data_dir)
    config.set("train.replay", f"folder:{people_folder(tmp_path / 'others', people=5)}")
    config.set("train.stranger_check", "")
    assert_resume_equals_uninterrupted(config, tmp_path)


@pytest.mark.parametrize("flags, expected", [
    (("--replay-share", "1"), ["train.replay_share", ">= 0 and < 1"]),
    (("--replay-share", "-0.2"), ["train.replay_share"]),
    (("--strategy", "offline"), ["train.replay", "not offline"]),
])
def test_bad_replay_settings_are_one_line_errors(tmp_path, data_dir, flags, expected):
    replay = people_folder(tmp_path / "others", people=5)
    result = run_cli("train", "--config", TINY, "--run-dir", tmp_path / "run", "--data-dir", data_dir,
                     "--replay", f"folder:{replay}", *flags, "--no-evaluate")
    one_line_error(result, *expected)


def test_a_replay_source_with_fewer_than_p_people_is_a_one_line_error(tmp_path, data_dir):
    replay = people_folder(tmp_path / "others", people=3)  # tiny.toml: P = 4
    result = run_cli("train", "--config", TINY, "--run-dir", tmp_path / "run", "--data-dir", data_dir,
                     "--replay", f"folder:{replay}", "--no-evaluate")
    one_line_error(result, "has 3 people with two or more photos", "at least P = 4")
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.parametrize("replay, expected", [
    ("orl_faces", "another source than the training data"),
    ("folder:/no/such/folder", "does not exist"),
])
def test_replay_of_the_training_source_or_a_missing_folder_is_a_one_line_error(tmp_path, data_dir, replay, expected):
    result = run_cli("train", "--config", TINY, "--run-dir", tmp_path / "run", "--data-dir", data_dir,
                     "--replay", replay, "--no-evaluate")
    one_line_error(result, expected)
