"""Data: sources through tfds (ORL offline, image folders), identity splits, the P x K sampler."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facetrip.data import (
    Augmentation,
    DataError,
    IdentitySplit,
    PKSampler,
    image_dataset,
    load_faces,
    load_image,
    parse_source,
    pk_dataset,
    split_identities,
)
from facetrip.data.folder import folder_builder


@pytest.fixture(scope="session")
def orl(data_dir):
    return load_faces("orl_faces", data_dir=data_dir)


def write_image(path: Path, seed: int, size=(20, 16), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, size=(size[0], size[1], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(), mode=mode).save(path, format=fmt)


@pytest.fixture
def face_folder(tmp_path):
    """4 identities (jpg, png, pgm, bmp), one with a single image, one corrupt file, one text file."""
    root = tmp_path / "faces"
    for index in range(3):
        write_image(root / "alice" / f"{index}.jpg", index)
        write_image(root / "bob" / f"{index}.png", 10 + index)
        write_image(root / "carol" / f"{index}.pgm", 20 + index, mode="L")
    write_image(root / "dave" / "only.bmp", 30)
    (root / "bob" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "alice" / "notes.txt").write_text("not an image")
    return root


# -------------------------------------------------------------------------------- sources


def test_orl_prepares_offline_with_400_images_of_40_identities(orl):
    assert len(orl) == 400 and len(orl.identity_names) == 40
    assert np.all(orl.images_per_identity() == 10)
    assert orl.channels == 1 and orl.source == "orl_faces"
    assert orl.file_names[0] == "s1/1.pgm"
    image = load_image_bytes_shape(orl.encoded[0])
    assert image == (112, 92, 1)


def load_image_bytes_shape(encoded):
    import tensorflow as tf

    return tuple(tf.io.decode_image(encoded, expand_animations=False).shape)


def test_folder_source_skips_corrupt_files_with_one_warning(face_folder, data_dir, caplog):
    with caplog.at_level(logging.WARNING):
        faces = load_faces(f"folder:{face_folder}", data_dir=data_dir)
    assert sorted(faces.identity_names) == ["alice", "bob", "carol", "dave"]
    assert faces.images_per_identity().tolist() == [3, 3, 3, 1]
    warnings = [record.getMessage() for record in caplog.records if "unreadable" in record.getMessage()]
    assert len(warnings) == 1 and "broken.jpg" in warnings[0] and "Skipped 1" in warnings[0]
    assert faces.channels == 3


def test_folder_is_not_prepared_twice_unless_it_changes(face_folder, data_dir):
    first = folder_builder(face_folder, data_dir=data_dir)
    first.download_and_prepare()
    again = folder_builder(face_folder, data_dir=data_dir)
    assert again.is_prepared() and again.data_path == first.data_path
    write_image(face_folder / "erin" / "0.png", 40)
    changed = folder_builder(face_folder, data_dir=data_dir)
    assert not changed.is_prepared() and changed.data_path != first.data_path


def test_empty_and_unreadable_folders_give_clear_errors(tmp_path, data_dir):
    with pytest.raises(DataError, match="no images in the expected layout"):
        load_faces(f"folder:{tmp_path}", data_dir=data_dir)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="no readable image"):
        load_faces(f"folder:{tmp_path}", data_dir=data_dir)
    with pytest.raises(DataError, match="does not exist"):
        load_faces("folder:/no/such/folder", data_dir=data_dir)


def closed_local_port() -> int:
    """A localhost port nothing listens on: connecting is refused at once."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class UnpreparedBuilder:
    """The part of a tfds builder that ``ensure_prepared`` reads, for a data set downloaded from ``url``."""

    def __init__(self, url: str):
        self.url_infos = {url: None}
        self.data_dir = "/nowhere/tfds"
        self.downloads = 0

    def is_prepared(self) -> bool:
        return False

    def download_and_prepare(self) -> None:
        self.downloads += 1


def test_the_network_probe_connects_for_real(monkeypatch):
    """``_reachable`` itself, on local sockets: a listening port is reachable; a closed port is refused
    at once; a port whose accept queue is full drops the connection request, as a firewall or a
    machine without network does, and the probe gives up after ``_NETWORK_PROBE_SECONDS``."""
    import socket
    import sys
    import time

    import facetrip.data.sources as sources

    assert not sources._reachable("127.0.0.1", closed_local_port())
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        assert sources._reachable("127.0.0.1", port)
        if sys.platform != "linux":
            return  # the full-queue behaviour below is Linux's
        waiting = []  # listen(0) queues one connection; requests beyond it are dropped, not refused
        try:
            for _ in range(3):
                client = socket.socket()
                client.setblocking(False)
                client.connect_ex(("127.0.0.1", port))
                waiting.append(client)
            monkeypatch.setattr(sources, "_NETWORK_PROBE_SECONDS", 0.5)
            start = time.perf_counter()
            assert not sources._reachable("127.0.0.1", port)
            assert 0.4 <= time.perf_counter() - start < 5.0
        finally:
            for client in waiting:
                client.close()


def test_an_unprepared_tfds_dataset_is_downloaded_only_when_its_host_answers():
    """``ensure_prepared`` with the real probe and host parsing: the download host of the builder's
    URL is tried; a listening one leads to ``download_and_prepare``, a closed one to a one-line
    DataError naming --data-dir, without a download attempt."""
    import socket

    from facetrip.data.sources import ensure_prepared

    spec = parse_source("tfds:lfw")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        answering = UnpreparedBuilder(f"http://127.0.0.1:{server.getsockname()[1]}/lfw.tgz")
        ensure_prepared(spec, answering)
    assert answering.downloads == 1
    silent = UnpreparedBuilder(f"http://127.0.0.1:{closed_local_port()}/lfw.tgz")
    with pytest.raises(DataError, match=r"'lfw' is not prepared in /nowhere/tfds and 127.0.0.1 cannot be reached"):
        ensure_prepared(spec, silent)
    assert silent.downloads == 0


def test_unprepared_tfds_dataset_fails_fast_without_network(data_dir, monkeypatch):
    """``load_faces`` end to end, the real probe pointed at a closed local port instead of LFW's host
    (this test must never download LFW, and some sandboxes accept any outgoing connection)."""
    import time

    import facetrip.data.sources as sources

    port = closed_local_port()
    monkeypatch.setattr(sources, "_download_hosts", lambda builder: [("127.0.0.1", port)])
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"'lfw' is not prepared in .* 127.0.0.1 cannot be reached .* --data-dir"):
        load_faces("tfds:lfw", data_dir=data_dir)
    assert time.perf_counter() - start < 30


def test_parse_source():
    assert parse_source("orl").kind == "orl_faces"
    assert str(parse_source("tfds:lfw")) == "tfds:lfw"
    assert parse_source("tfds:lfw:train").split == "train"
    assert parse_source("folder:/data/faces").name == "/data/faces"
    with pytest.raises(DataError, match="Unknown data source"):
        parse_source("imagenet")
    with pytest.raises(DataError, match="no dataset"):
        load_faces("tfds:no_such_dataset_xyz")


# --------------------------------------------------------------------------------- splits


def test_splits_are_identity_disjoint_and_reproducible(orl, tmp_path):
    split = split_identities(orl.identity_names, dev=5, test=10, seed=3)
    assert (len(split.train), len(split.dev), len(split.test)) == (25, 5, 10)
    assert not set(split.train) & set(split.test) and not set(split.dev) & set(split.test)
    assert set(split.train) | set(split.dev) | set(split.test) == set(orl.identity_names)
    assert split == split_identities(orl.identity_names, dev=5, test=10, seed=3)
    assert split != split_identities(orl.identity_names, dev=5, test=10, seed=4)
    split.save(tmp_path / "split.json")
    assert IdentitySplit.load(tmp_path / "split.json") == split
    test_faces = orl.restricted_to(split.test)
    assert len(test_faces) == 100 and set(np.asarray(orl.identity_names)[test_faces.labels]) == set(split.test)


def test_split_fractions_and_errors():
    names = [f"id{index}" for index in range(20)]
    split = split_identities(names, dev=0.1, test=0.25, seed=0)
    assert (len(split.dev), len(split.test), len(split.train)) == (2, 5, 13)
    with pytest.raises(DataError, match="two for training"):
        split_identities(names, test=19)
    with pytest.raises(DataError, match="not disjoint"):
        IdentitySplit(train=("a", "b"), dev=(), test=("b",), seed=0)


# -------------------------------------------------------------------------------- sampler


def test_every_batch_has_p_identities_with_k_images_each():
    labels = np.repeat(np.arange(40), 10)
    sampler = PKSampler(labels, identities_per_batch=8, images_per_identity=4, seed=0)
    batches = sampler.epoch(0)
    assert batches.shape == (sampler.batches_per_epoch, 32) and sampler.batches_per_epoch == round(400 / 32)
    for batch in batches:
        groups = labels[batch].reshape(8, 4)
        assert np.all(groups == groups[:, :1]) and len(set(groups[:, 0])) == 8
        assert all(len(set(images)) == 4 for images in batch.reshape(8, 4))  # K distinct images when available
    visits = np.bincount(batches.ravel(), minlength=400)
    assert visits.max() <= 2 and (visits > 0).mean() > 0.8  # about one pass over the images


def test_sampler_is_reproducible_per_seed_and_epoch():
    labels = np.repeat(np.arange(30), 6)
    first, second = PKSampler(labels, 5, 4, seed=7), PKSampler(labels, 5, 4, seed=7)
    np.testing.assert_array_equal(first.epoch(2), second.epoch(2))
    assert not np.array_equal(first.epoch(0), first.epoch(1))
    assert not np.array_equal(first.epoch(0), PKSampler(labels, 5, 4, seed=8).epoch(0))


def test_small_identities_are_repeated_and_singletons_left_out(caplog):
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3])  # 1 and 2 have fewer than K = 4, 3 has one image
    with caplog.at_level(logging.WARNING):
        sampler = PKSampler(labels, identities_per_batch=3, images_per_identity=4, seed=0)
    assert sampler.num_left_out == 1 and sampler.num_with_replacement == 2
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "1 identities with a single image" in messages and "2 identities have fewer than K = 4" in messages
    for batch in sampler.epoch(0):
        groups = labels[batch].reshape(3, 4)
        assert np.all(groups == groups[:, :1]) and 3 not in groups


def test_sampler_errors_say_what_to_change():
    with pytest.raises(DataError, match="lower -P"):
        PKSampler(np.repeat(np.arange(5), 4), identities_per_batch=8)
    with pytest.raises(DataError, match="only 0 of 3 identities"):
        PKSampler(np.arange(3), identities_per_batch=2)


def test_index_generation_scales_to_100k_identities():
    """100k identities of 3 photos each, shuffled over the set under arbitrary label values: every batch
    holds P = 16 distinct identities with K = 4 photos each, all of their identity and all 3 of its
    photos (K > 3: one repeated), no identity twice in the epoch (4,688 x 16 slots for 100k), checked
    with vectorised NumPy."""
    rng = np.random.default_rng(3)
    values = rng.choice(10**9, size=100_000, replace=False)  # label values, not 0 .. N - 1
    labels = rng.permutation(np.repeat(values, 3))  # (300000,) an identity's photos scattered
    sampler = PKSampler(labels, 16, 4, seed=0)
    batches = sampler.epoch(0)
    assert batches.shape == (round(300_000 / 64), 64) and batches.dtype == np.int64
    assert batches.min() >= 0 and batches.max() < len(labels)
    groups = batches.reshape(len(batches), 16, 4)  # (batches, P, K) photo indices
    group_labels = labels[groups]
    assert np.all(group_labels == group_labels[:, :, :1])  # the K photos of a slot are of one identity
    first = np.sort(group_labels[:, :, 0], axis=1)
    assert np.all(first[:, 1:] != first[:, :-1])  # P distinct identities in every batch
    distinct_photos = np.sort(groups, axis=2)
    assert np.all((np.diff(distinct_photos, axis=2) > 0).sum(axis=2) == 2)  # 3 distinct photos per slot: all of them
    visited = group_labels[:, :, 0].ravel()
    assert len(np.unique(visited)) == len(visited)  # no identity twice in the epoch
    assert np.array_equal(sampler.epoch(0), batches) and not np.array_equal(sampler.epoch(1), batches)


# ------------------------------------------------------------------------------- pipeline


def test_pk_dataset_images_match_their_labels(orl):
    """Decoded batch images are the preprocessed images of the sampled indices, labels included."""
    import tensorflow as tf

    from facetrip.data import preprocess_encoded

    sampler = PKSampler(orl.labels, 4, 4, seed=5)
    dataset = pk_dataset(orl, sampler, image_size=(28, 23), channels=1, epochs=range(1, 2))
    assert dataset.cardinality().numpy() == sampler.batches_per_epoch
    images, labels = next(iter(dataset))
    indices = sampler.epoch(1)[0]
    assert images.shape == (16, 28, 23, 1) and images.dtype == tf.float32
    np.testing.assert_array_equal(labels.numpy(), orl.labels[indices])
    expected = preprocess_encoded(orl.encoded[indices[5]], (28, 23), 1).numpy()
    np.testing.assert_allclose(images[5].numpy(), expected, atol=1e-6)


def test_augmented_batches_are_reproducible_and_differ_from_plain(orl):
    sampler = PKSampler(orl.labels, 4, 2, seed=1)

    def first_batch(augmentation):
        return next(iter(pk_dataset(orl, sampler, (28, 23), 3, epochs=1, augmentation=augmentation)))[0].numpy()

    augmented = first_batch(Augmentation())
    np.testing.assert_array_equal(augmented, first_batch(Augmentation()))
    assert augmented.shape == (8, 28, 23, 3) and augmented.min() >= 0 and augmented.max() <= 1
    assert not np.allclose(augmented, first_batch(None))


def test_image_dataset_and_load_image_share_one_path(orl, tmp_path):
    """A user's PGM photo and the tfds record of the same face become the same tensor."""
    from facetrip.data.orl import orl_faces_root

    images, labels = next(iter(image_dataset(orl.restricted_to(["s1"]), (56, 46), 1, batch_size=10)))
    assert images.shape == (10, 56, 46, 1) and set(labels.numpy()) == {orl.identity_names.index("s1")}
    photo = load_image(orl_faces_root() / "s1" / "1.pgm", (56, 46), 1)
    np.testing.assert_allclose(photo, images[0].numpy(), atol=1e-6)


def test_preprocessed_cache_and_per_element_decoding_give_the_same_batches(orl, monkeypatch):
    import facetrip.data.pipeline as pipeline

    sampler = PKSampler(orl.labels, 4, 2, seed=2)

    def first_batch():
        return next(iter(pk_dataset(orl, sampler, (28, 23), 1, epochs=1, augmentation=Augmentation())))[0].numpy()

    cached = first_batch()
    monkeypatch.setattr(pipeline, "PREPROCESSED_CACHE_BYTES", 0)  # as for a data set too large to cache
    np.testing.assert_allclose(first_batch(), cached, atol=1e-6)


def test_zoom_magnifies_about_the_centre():
    """With zoom z and no rotation, output pixel (x, y) samples input pixel c + (x - c) / z: the
    transform row is [1/z, 0, c (1 - 1/z), 0, 1/z, c (1 - 1/z), 0, 0]; mirrored, x_in = (W - 1) - u."""
    import tensorflow as tf

    from facetrip.data.pipeline import _geometric_transforms

    height, width = 9, 7
    rows = _geometric_transforms(tf.constant([False, True]), tf.zeros([2, 2]), tf.zeros([2]), height, width,
                                 tf.constant([2.0, 2.0])).numpy()
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    np.testing.assert_allclose(rows[0], [0.5, 0, centre_x * 0.5, 0, 0.5, centre_y * 0.5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(rows[1], [-0.5, 0, (width - 1) - centre_x * 0.5, 0, 0.5, centre_y * 0.5, 0, 0], atol=1e-6)


def test_zoom_augmentation_changes_images_reproducibly():
    import tensorflow as tf

    from facetrip.data.pipeline import Augmentation, _augment

    images = tf.constant(np.random.default_rng(0).random((4, 20, 20, 3)), tf.float32)
    zoom_only = Augmentation(flip=False, max_shift=0.0, brightness=0.0, contrast=0.0, scale=0.2)
    seed = tf.constant([3, 4], tf.int64)
    first, again = _augment(images, seed, zoom_only).numpy(), _augment(images, seed, zoom_only).numpy()
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - images.numpy()).mean() > 0.01
    untouched = _augment(images, seed, Augmentation(flip=False, max_shift=0.0, brightness=0.0, contrast=0.0)).numpy()
    np.testing.assert_allclose(untouched, images.numpy(), atol=1e-6)
