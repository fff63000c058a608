"""`facetrip data` and `facetrip prepare` on insightface RecordIO sets (``rec:PATH``), good and broken.

Every set is written here: 6 identities x 3 photos of 112 x 112 JPEG, the middle photo of
each identity with a multi-label header (identity, 0.5), as insightface's writer makes
them. What the reader counts and skips (one record past the end, one truncated) prepares
the rest and says how many were left out; what it refuses (no index, repeated keys,
nothing usable, a header cut off) ends with exit code 2 and one line, no traceback.
"""

import io
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from helpers import one_line_error
from facetrip.data.recordio_writer import write_record_set

IDENTITIES, PHOTOS_PER_IDENTITY = 6, 3


@pytest.fixture(autouse=True)
def restored_facetrip_logger():
    """The commands route facetrip's logging through rich; other tests' caplog needs it back as it was."""
    logger = logging.getLogger("facetrip")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def jpeg_photo(seed: int, side: int = 112) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def photo_items(images: dict[int, bytes] | None = None) -> list:
    """``(labels, image)`` of 18 photos, identities one after another; ``images`` replaces photos by number."""
    items = []
    for number in range(IDENTITIES * PHOTOS_PER_IDENTITY):
        identity = number // PHOTOS_PER_IDENTITY
        labels = [float(identity), 0.5] if number % PHOTOS_PER_IDENTITY == 1 else identity
        items.append((labels, (images or {}).get(number, jpeg_photo(number))))
    return items


@pytest.fixture(scope="module")
def record_set(tmp_path_factory) -> Path:
    """The well-formed set, written once; tests that break it work on a copy."""
    folder = tmp_path_factory.mktemp("rec") / "faces"
    assert write_record_set(folder, photo_items()) == IDENTITIES * PHOTOS_PER_IDENTITY
    return folder


def copy_of(record_set: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(record_set, tmp_path / "faces"))


def index_lines(folder: Path) -> list[str]:
    return (folder / "train.idx").read_text().splitlines()


def write_index(folder: Path, lines: list[str]) -> None:
    (folder / "train.idx").write_text("\n".join(lines) + "\n")


def row(output: str, name: str) -> str:
    """The value of a row of a rich table in ``output``, its borders and padding removed."""
    match = re.search(rf"{re.escape(name)}\W+([^│|\n]*?)\s*[│|]?\s*$", output, re.MULTILINE)
    assert match, f"no row {name!r} in:\n{output}"
    return match.group(1)


def prepare(source: str, data_dir: Path, *options):
    return run_cli("prepare", source, "--data-dir", data_dir, "--workers", 1, *options)


def test_data_counts_the_photos_and_identities_of_a_record_set(record_set, tmp_path):
    result = run_cli("data", f"rec:{record_set}", "--data-dir", tmp_path / "tfds", "--test", 2, "--dev", 1,
                     "-P", 2, "-K", 2)
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "images") == "18"
    assert row(result.stdout, "identities") == "6 (6 with two or more images)"
    assert row(result.stdout, "images per identity") == "min 3, median 3, max 3"
    assert row(result.stdout, "split (identities)") == "train 3, dev 1, test 2 (seed 0)"
    assert list((tmp_path / "tfds" / "prepared_faces").glob("faces_*_arcface"))  # rec: implies --aligned arcface


def test_prepare_reports_the_records_of_a_record_set(record_set, tmp_path):
    result = prepare(f"rec:{record_set}", tmp_path / "tfds")
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "records").startswith("18 (arcface) in 1 shards")
    assert row(result.stdout, "usable photos") == "18 of 6 identities"
    assert row(result.stdout, "failed photos") == "0"
    assert result.stderr.strip() == ""  # nothing was left out, nothing to warn about


def test_prepare_stores_jpeg_chips_when_asked_and_refuses_an_unknown_format_in_one_line(record_set, tmp_path):
    result = prepare(f"rec:{record_set}", tmp_path / "tfds", "--chip-format", "jpeg")
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "records").startswith("18 (arcface, JPEG chips) in 1 shards")
    assert list((tmp_path / "tfds" / "prepared_faces").glob("faces_*_arcface_jpeg"))
    one_line_error(prepare(f"rec:{record_set}", tmp_path / "tfds", "--chip-format", "webp"), "png or jpeg", "webp")


# ---------------------------------------------------------------------------------------------
# Records the reader counts and skips: the rest is prepared, the count is said once


def test_an_index_line_past_the_end_of_the_records_skips_that_photo(record_set, tmp_path):
    folder = copy_of(record_set, tmp_path)
    lines = index_lines(folder)
    size = (folder / "train.rec").stat().st_size
    lines[5] = f"5\t{size + 4096}"  # photo key 5
    write_index(folder, lines)
    result = prepare(f"rec:{folder}", tmp_path / "tfds")
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "usable photos") == "17 of 6 identities"
    warning = " ".join(result.stderr.split())
    assert warning.count("left out 1 of 18 photo records") == 1, result.stderr  # once, not again per shard read
    assert "record 5: its offset in train.idx is past the end of train.rec" in warning


def test_a_records_file_cut_inside_its_last_photo_skips_that_photo(record_set, tmp_path):
    folder = copy_of(record_set, tmp_path)
    last_photo_offset = int(index_lines(folder)[18].split("\t")[1])  # photo key 18
    os.truncate(folder / "train.rec", last_photo_offset + 100)  # the copy stopped inside it
    result = prepare(f"rec:{folder}", tmp_path / "tfds")
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "usable photos") == "17 of 6 identities"
    warning = " ".join(result.stderr.split())
    assert warning.count("left out 1 of 18 photo records (1 as it is truncated") == 1, result.stderr


# ---------------------------------------------------------------------------------------------
# Sets the reader refuses: exit code 2 and one line


def test_a_record_set_without_its_index(record_set, tmp_path):
    folder = copy_of(record_set, tmp_path)
    (folder / "train.idx").unlink()
    for command in ("data", "prepare"):
        result = run_cli(command, f"rec:{folder}", "--data-dir", tmp_path / "tfds")
        one_line_error(result, "train.idx: no such file")


def test_a_missing_record_folder(tmp_path):
    one_line_error(prepare(f"rec:{tmp_path / 'nowhere'}", tmp_path / "tfds"), "nowhere is not a folder")


def test_an_index_whose_every_offset_is_past_the_end(record_set, tmp_path):
    folder = copy_of(record_set, tmp_path)
    size = (folder / "train.rec").stat().st_size
    write_index(folder, [f"{line.split()[0]}\t{size + 8 * number}" for number, line in enumerate(index_lines(folder))])
    one_line_error(prepare(f"rec:{folder}", tmp_path / "tfds"), "train.rec holds no usable photo record")


def test_a_records_file_cut_inside_its_header_record(record_set, tmp_path):
    folder = copy_of(record_set, tmp_path)
    os.truncate(folder / "train.rec", 10)
    one_line_error(prepare(f"rec:{folder}", tmp_path / "tfds"), "train.rec", "record 0 is cut off")


def test_an_index_listing_a_key_twice(record_set, tmp_path):
    folder = copy_of(record_set, tmp_path)
    lines = index_lines(folder)
    write_index(folder, [*lines, lines[3]])
    one_line_error(prepare(f"rec:{folder}", tmp_path / "tfds"), "train.idx lists key 3 twice")


def test_a_data_dir_that_cannot_be_written(tmp_path):
    photos = tmp_path / "photos"
    for person in ("ann", "bob"):
        (photos / person).mkdir(parents=True)
        for number in range(2):
            (photos / person / f"{number}.jpg").write_bytes(jpeg_photo(number, side=150))
    regular_file = tmp_path / "a_file"
    regular_file.write_text("not a folder")
    result = prepare(f"folder:{photos}", regular_file / "tfds")
    one_line_error(result, "Cannot write the prepared set", "pass a writable --data-dir")


# ---------------------------------------------------------------------------------------------
# A record whose image does not decode: a failed photo, listed, never a reason to stop


def test_photos_that_do_not_decode_are_counted_and_listed(tmp_path):
    folder = tmp_path / "faces"
    write_record_set(folder, photo_items({4: b"not an image at all", 7: jpeg_photo(7)[:200]}), image_size=(112, 112))
    result = prepare(f"rec:{folder}", tmp_path / "tfds")
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "records").startswith("18 (arcface)")
    assert row(result.stdout, "usable photos") == "16 of 6 identities"
    assert row(result.stdout, "failed photos") == "2"
    failed = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("failed: ")]
    assert len(failed) == 2, result.stdout
    assert failed[0].startswith("failed: 5: ") and "not a readable image" in failed[0]  # photo 4 is key 5
    assert failed[1].startswith("failed: 8: ") and "not a readable image" in failed[1]
