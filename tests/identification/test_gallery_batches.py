"""A gallery folder is read, aligned and embedded a batch of photos at a time: never more photos'
bytes held than a batch's, and the same rows, embeddings and skipped files as all at once."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from facetrip.data.face_chips import chip_from_encoded, chip_from_file
from facetrip.data.orl import orl_faces_root
from facetrip.identification import photos as gallery_photos_module
from facetrip.identification.photos import embed_gallery, embed_photos, gallery_photos, read_files
from facetrip.identification.workflows import index_gallery
from facetrip.identification.index import read_index
from facetrip.runs.loaded_run import Run

pytest.importorskip("dlib")


def orl(person: int, photo: int):
    return orl_faces_root() / f"s{person}" / f"{photo}.pgm"


def turned_webp(person: int, photo: int) -> bytes:
    """An ORL face on a larger background, stored turned a quarter (as a phone stores a portrait), EXIF orientation 6."""
    face = Image.open(orl(person, photo)).convert("RGB")
    upright = Image.new("RGB", (200, 240), (128, 128, 128))
    upright.paste(face, (54, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to view
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "WEBP", lossless=True, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """3 people of ORL (3 photos each, one of them a turned WebP), a corrupt file and a faceless photo."""
    root = tmp_path_factory.mktemp("gallery")
    for person in (1, 2, 3):
        (root / f"s{person}").mkdir()
        for photo in (1, 2):
            shutil.copy(orl(person, photo), root / f"s{person}" / f"{photo}.pgm")
        (root / f"s{person}" / "3.webp").write_bytes(turned_webp(person, 3))
    (root / "s2" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.new("L", (92, 112), 128).save(root / "s3" / "blank.png")
    return root


def small_run(folder, face_chips: bool) -> Run:
    """A run whose model is a small dense layer: what the gallery's rows go through."""
    import keras

    model = keras.Sequential([keras.Input((24, 24, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(8, kernel_initializer=keras.initializers.RandomNormal(seed=7))])
    model.save(folder / "model.keras")
    return Run(folder, model, {"image_size": [24, 24], "channels": 3, "face_chips": face_chips, "metric": "euclidean"})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run on face chips."""
    return small_run(tmp_path_factory.mktemp("run"), face_chips=True)


@pytest.fixture(scope="module")
def whole_image_run(tmp_path_factory):
    """A run that reads whole photos."""
    return small_run(tmp_path_factory.mktemp("run"), face_chips=False)


@pytest.fixture
def events(monkeypatch):
    """What the gallery does, in order: ("read", file) for each photo read, ("embed", photos) for each batch embedded."""
    from facetrip import embedding

    log = []
    read, embed = gallery_photos_module._read_photo, embedding.embedding_batches

    def reading(path, file_bytes):
        data = read(path, file_bytes)
        log.append(("read", str(path)))
        return data

    def embedding_batches(model, faces, *arguments, **options):
        log.append(("embed", len(faces)))
        yield from embed(model, faces, *arguments, **options)

    monkeypatch.setattr(gallery_photos_module, "_read_photo", reading)
    monkeypatch.setattr(embedding, "embedding_batches", embedding_batches)
    return log


def most_photos_held(log) -> int:
    """The most photos read and not yet embedded at any time."""
    held, most = 0, 0
    for kind, value in log:
        held += 1 if kind == "read" else -value
        most = max(most, held)
    return most


def assert_same_gallery(batched, whole):
    np.testing.assert_array_equal(batched.file_names, whole.file_names)
    np.testing.assert_array_equal(batched.labels, whole.labels)
    np.testing.assert_array_equal(batched.embedded.faces_detected, whole.embedded.faces_detected)
    np.testing.assert_allclose(np.asarray(batched.embedded.embeddings), np.asarray(whole.embedded.embeddings),
                               rtol=1e-5, atol=1e-6)  # float32 sums in batches of other sizes
    assert batched.skipped == whole.skipped and batched.identity_names == whole.identity_names


def test_a_gallery_read_two_photos_at_a_time_holds_two_and_gives_the_same_rows(gallery, run, events, monkeypatch, tmp_path):
    monkeypatch.setattr(gallery_photos_module, "GALLERY_BATCH_PHOTOS", 10_000)
    whole = embed_gallery(run, str(gallery))
    assert most_photos_held(events) == 10  # every readable photo at once
    events.clear()
    monkeypatch.setattr(gallery_photos_module, "GALLERY_BATCH_PHOTOS", 2)
    batched = embed_gallery(run, str(gallery), embeddings_path=tmp_path / "embeddings.npy")
    assert events[:3] == [("read", events[0][1]), ("read", events[1][1]), ("embed", 2)]
    assert most_photos_held(events) == 2 and [value for kind, value in events if kind == "embed"] == [2, 2, 2, 2, 2]
    assert_same_gallery(batched, whole)
    assert isinstance(batched.embedded.embeddings, np.memmap) and batched.embedded.embeddings.shape == (10, 8)
    assert [file.rsplit("/", 2)[-2:] for file, _ in batched.skipped] == [["s2", "corrupt.jpg"]]
    assert list(batched.embedded.faces_detected).count(0) == 1  # the blank photo


def test_a_batch_ends_past_its_byte_budget(gallery, run, events, monkeypatch):
    monkeypatch.setattr(gallery_photos_module, "GALLERY_BATCH_BYTES", 1)  # each photo is a batch of its own
    embed_gallery(run, f"folder:{gallery}")
    assert most_photos_held(events) == 1 and [value for kind, value in events if kind == "embed"] == [1] * 10


@pytest.mark.parametrize("face_chips", [True, False], ids=["chips", "whole-photos"])
def test_the_batches_give_what_reading_every_photo_first_gave(gallery, run, whole_image_run, monkeypatch, face_chips):
    """The path before batches: every file read (bytes TensorFlow decodes), then aligned and embedded together."""
    run = run if face_chips else whole_image_run
    monkeypatch.setattr(gallery_photos_module, "GALLERY_BATCH_PHOTOS", 3)
    told = []
    batched = embed_gallery(run, str(gallery), progress=lambda done, total: told.append((done, total)))
    assert told == sorted(told) and told[-1] == (11, 11)
    photos = gallery_photos(str(gallery))
    embedded = embed_photos(run, photos.faces)
    np.testing.assert_array_equal(batched.file_names, photos.faces.file_names)
    np.testing.assert_array_equal(batched.labels, photos.faces.labels)
    np.testing.assert_array_equal(batched.embedded.faces_detected, embedded.faces_detected)
    np.testing.assert_allclose(np.asarray(batched.embedded.embeddings), embedded.embeddings, rtol=1e-5, atol=1e-6)
    assert batched.skipped == photos.skipped


def test_an_index_built_in_batches_is_the_index_built_at_once(gallery, run, monkeypatch, tmp_path):
    indexes = {}
    for batch in (10_000, 3):
        monkeypatch.setattr(gallery_photos_module, "GALLERY_BATCH_PHOTOS", batch)
        summary = index_gallery(run, str(gallery), tmp_path / f"index-{batch}")
        assert summary.added == 9 and len(summary.no_face) == 1 and len(summary.unreadable) == 1
        indexes[batch] = read_index(tmp_path / f"index-{batch}")
    np.testing.assert_array_equal(indexes[3].files, indexes[10_000].files)
    np.testing.assert_array_equal(indexes[3].identities, indexes[10_000].identities)
    np.testing.assert_allclose(np.asarray(indexes[3].embeddings), np.asarray(indexes[10_000].embeddings), rtol=1e-5, atol=1e-6)


def test_a_gallery_without_a_readable_photo_gives_no_rows(run, tmp_path):
    (tmp_path / "nobody").mkdir()
    (tmp_path / "nobody" / "corrupt.jpg").write_bytes(b"not a photo")
    nothing = embed_gallery(run, str(tmp_path), embeddings_path=tmp_path / "embeddings.npy")
    assert len(nothing) == 0 and nothing.embedded.embeddings.shape == (0, 8) and len(nothing.skipped) == 1


def test_a_turned_photo_read_for_the_model_keeps_its_orientation(gallery):
    """A WebP is re-encoded as PNG for TensorFlow: the PNG keeps the EXIF orientation, so its chip is the file's chip."""
    turned = gallery / "s1" / "3.webp"
    from_file = chip_from_file(turned)
    assert from_file.faces_detected == 1  # upright: the face is found
    read = read_files([turned], [0], ["s1"], "photos", skip_unreadable=False).faces.encoded[0]
    assert read[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(chip_from_encoded(read).pixels, from_file.pixels)


def test_the_batches_share_one_set_of_worker_processes(monkeypatch, fresh_cache):
    """Inside workers_kept, the worker processes are started once for every set aligned, and shut down at its end."""
    import concurrent.futures

    from facetrip.data import FaceImages, chip_workers
    from facetrip.data.face_chips import chip_faces

    started = []
    executor = concurrent.futures.ProcessPoolExecutor

    def counted(*arguments, **options):
        started.append(executor(*arguments, **options))
        return started[-1]

    monkeypatch.setattr(chip_workers.concurrent.futures, "ProcessPoolExecutor", counted)
    monkeypatch.setattr(chip_workers, "_pool_workers", lambda: 2)

    def photos(person: int) -> FaceImages:
        encoded = np.empty(2, dtype=object)
        encoded[:] = [orl(person, photo).read_bytes() for photo in (1, 2)]
        return FaceImages(encoded=encoded, labels=np.zeros(2, np.int64), identity_names=["?"],
                          file_names=np.asarray(["1.pgm", "2.pgm"]), channels=1, source="photos")

    with chip_workers.workers_kept():
        first, _ = chip_faces(photos(1), pool_threshold=0)
        second, _ = chip_faces(photos(2), pool_threshold=0)
        assert len(started) == 1
    assert len(first) == len(second) == 2
    with pytest.raises(RuntimeError, match="shutdown"):  # shut down at the block's end
        started[0].submit(print)
