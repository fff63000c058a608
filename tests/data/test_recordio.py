"""insightface RecordIO sets: the writer's layout, an independent writer, random access, and every bad input."""

import concurrent.futures
import io
import logging
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facetrip.data.errors import DataError
from facetrip.data.recordio import (
    MAX_LABELS_PER_RECORD,
    MAX_RECORD_BYTES,
    RECORD_MAGIC,
    RecordIOError,
    open_record_set,
)
from facetrip.data.recordio_writer import pack_record, write_record_set

# ---------------------------------------------------------------------------------------------
# An independent writer: MXNet's record layout spelt out with struct, nothing shared with the reader


def raw_record(payload: bytes, magic: int = RECORD_MAGIC, cflag: int = 0, length: int | None = None) -> bytes:
    """magic | cflag << 29 | length | payload | zero padding to 4 bytes."""
    length = len(payload) if length is None else length
    return struct.pack("<II", magic, (cflag << 29) | length) + payload + b"\0" * (-len(payload) % 4)


def ir_payload(label, image: bytes = b"", flag: int | None = None, record_id: int = 0) -> bytes:
    """An IRHeader ('<IfQQ') then the extra float labels, then the image."""
    if isinstance(label, (list, tuple)):
        extra = struct.pack(f"<{len(label)}f", *label)
        return struct.pack("<IfQQ", len(label) if flag is None else flag, 0.0, record_id, 0) + extra + image
    return struct.pack("<IfQQ", 0 if flag is None else flag, label, record_id, 0) + image


def write_raw_set(folder: Path, records: list[tuple[int, bytes]], index_lines: list[str] | None = None,
                  property_line: str | None = None) -> Path:
    """``records`` (key, record bytes) concatenated in this order into train.rec, with their offsets in train.idx."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, offset = [], 0
    with open(folder / "train.rec", "wb") as rec:
        for key, record in records:
            lines.append(f"{key}\t{offset}")
            rec.write(record)
            offset += len(record)
    (folder / "train.idx").write_text("\n".join(index_lines if index_lines is not None else lines) + "\n")
    if property_line is not None:
        (folder / "property").write_text(property_line)
    return folder


def encoded(seed: int, format_: str = "JPEG", size: int = 12) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format_)
    return buffer.getvalue()


def photo_records(labels, start_key=1, images=None):
    images = images or [encoded(index, "PNG" if index % 2 else "JPEG") for index in range(len(labels))]
    return [(start_key + index, raw_record(ir_payload(label, image, record_id=start_key + index)))
            for index, (label, image) in enumerate(zip(labels, images))], images


def insightface_set(folder: Path, labels: list[int]) -> tuple[Path, list[bytes]]:
    """A set with insightface's header record and identity ranges, by the independent writer."""
    photos, images = photo_records(labels)
    n, identities = len(labels), sorted(set(labels))
    ranges = [(n + 1 + i, raw_record(ir_payload([float(labels.index(identity) + 1),
                                                 float(n - labels[::-1].index(identity) + 1)])))
              for i, identity in enumerate(identities)]
    header = (0, raw_record(ir_payload([float(n + 1), float(n + 1 + len(identities))])))
    return write_raw_set(folder, [header, *photos, *ranges], property_line="3,12,12\n"), images


def assert_one_line_naming(error: pytest.ExceptionInfo, name: str) -> str:
    message = str(error.value)
    assert "\n" not in message and name in message, message
    assert isinstance(error.value, DataError)
    return message


# ---------------------------------------------------------------------------------------------
# Reading well-formed sets


def test_writer_layout_is_insightfaces(tmp_path):
    """Header (N+1, N+1+C) at key 0, photos 1..N, ranges (first, last+1) at N+1.., property C,h,w."""
    images = [encoded(index, "PNG" if index % 2 else "JPEG") for index in range(5)]
    labels = [0, 0, 1, 1, 1]
    assert write_record_set(tmp_path, zip(labels, images)) == 5
    assert (tmp_path / "property").read_text() == "2,12,12\n"
    index = [tuple(map(int, line.split("\t"))) for line in (tmp_path / "train.idx").read_text().splitlines()]
    assert [key for key, _ in index] == list(range(8))
    data = (tmp_path / "train.rec").read_bytes()

    def record_at(offset):
        magic, length = struct.unpack_from("<II", data, offset)
        assert magic == RECORD_MAGIC and length >> 29 == 0
        flag, label, record_id, _ = struct.unpack_from("<IfQQ", data, offset + 8)
        extra = struct.unpack_from(f"<{flag}f", data, offset + 32)
        return flag, label, extra, data[offset + 32 + 4 * flag : offset + 8 + length]

    assert record_at(index[0][1]) == (2, 0.0, (6.0, 8.0), b"")
    for key in range(1, 6):
        assert record_at(index[key][1]) == (0, float(labels[key - 1]), (), images[key - 1])
    assert record_at(index[6][1])[:3] == (2, 0.0, (1.0, 3.0)) and record_at(index[7][1])[:3] == (2, 0.0, (3.0, 6.0))
    assert all(offset % 4 == 0 for _, offset in index)


def test_reads_its_own_sets_back_byte_for_byte(tmp_path):
    images = [encoded(index, "PNG" if index % 3 else "JPEG") for index in range(9)]
    labels = [0, 0, 0, 4, 4, 7, 7, 7, 7]
    write_record_set(tmp_path, zip(labels, images))
    with open_record_set(tmp_path) as record_set:
        assert record_set.has_header and len(record_set) == 9 and record_set.num_photos == 9
        assert record_set.num_identities == 3 and record_set.declared_identities == 3
        assert record_set.image_size == (12, 12)
        np.testing.assert_array_equal(record_set.photo_keys, np.arange(1, 10))
        assert record_set.labels().dtype == np.int64
        np.testing.assert_array_equal(record_set.labels(), labels)
        for position in np.random.default_rng(0).permutation(9):
            label, image = record_set.read(int(record_set.photo_keys[position]))
            assert (label, image) == (labels[position], images[position])
            assert record_set[int(position)] == (labels[position], images[position])
        assert record_set.skipped == []
        decoded = Image.open(io.BytesIO(record_set[1].image))
        assert decoded.format == "PNG" and decoded.size == (12, 12)


def test_reads_an_independently_written_insightface_set(tmp_path):
    labels = [3, 3, 5, 5, 5, 9]
    folder, images = insightface_set(tmp_path, labels)
    record_set = open_record_set(folder)
    assert record_set.has_header and record_set.num_identities == 3
    np.testing.assert_array_equal(record_set.labels(), labels)
    assert [record_set.read(key) for key in range(1, 7)] == list(zip(labels, images))
    record_set.close()


def test_multi_label_photos_take_their_first_label(tmp_path):
    """flag > 0: the label field is 0 and the identity is the first extra label (both writers)."""
    images = [encoded(index) for index in range(4)]
    items = [([2.0, 0.25], images[0]), ([2.0, 7.0, 1.0], images[1]), (5, images[2]), ([6.0], images[3])]
    write_record_set(tmp_path / "ours", items)
    raw = [(key, raw_record(ir_payload(labels, image))) for key, (labels, image) in enumerate(items)]
    write_raw_set(tmp_path / "theirs", raw)
    for folder, has_header in ((tmp_path / "ours", True), (tmp_path / "theirs", False)):
        with open_record_set(folder) as record_set:
            assert record_set.has_header is has_header
            np.testing.assert_array_equal(record_set.labels(), [2, 2, 5, 6])
            assert [record_set[position].image for position in range(4)] == images


def test_sets_without_a_header_record(tmp_path):
    images = [encoded(index, "PNG") for index in range(4)]
    write_record_set(tmp_path / "ours", zip([1, 1, 0, 2], images), header=False)
    records, _ = photo_records([1, 1, 0, 2], start_key=0, images=images)
    write_raw_set(tmp_path / "theirs", records)
    for folder in (tmp_path / "ours", tmp_path / "theirs"):
        with open_record_set(folder) as record_set:
            assert not record_set.has_header
            np.testing.assert_array_equal(record_set.photo_keys, [0, 1, 2, 3])
            np.testing.assert_array_equal(record_set.labels(), [1, 1, 0, 2])
            assert record_set.read(0) == (1, images[0])


def test_a_header_set_without_identity_ranges(tmp_path):
    write_record_set(tmp_path, zip([0, 1, 1], [encoded(index) for index in range(3)]), identity_ranges=False)
    with open_record_set(tmp_path) as record_set:
        assert record_set.has_header and record_set.num_photos == 3
        np.testing.assert_array_equal(record_set.labels(), [0, 1, 1])


def test_writer_refuses_scattered_identities_and_bad_labels(tmp_path):
    with pytest.raises(ValueError, match="one after another"):
        write_record_set(tmp_path / "a", [(0, b"x"), (1, b"y"), (0, b"z")])
    write_record_set(tmp_path / "b", [(0, b"x"), (1, b"y"), (0, b"z")], identity_ranges=False)
    for label in (-1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="non-negative integer"):
            write_record_set(tmp_path / "c", [(label, b"x")])


def test_unsorted_index_and_crlf_lines_are_read_in_key_order(tmp_path):
    records, images = photo_records([0, 1, 2, 3], start_key=0)
    folder = write_raw_set(tmp_path, records[::-1])  # the file holds keys 3, 2, 1, 0 in this order
    lines = (folder / "train.idx").read_text().splitlines()
    (folder / "train.idx").write_text("\r\n".join([lines[2], lines[0], lines[3], lines[1]]) + "\r\n\n")
    with open_record_set(folder) as record_set:
        np.testing.assert_array_equal(record_set.photo_keys, [0, 1, 2, 3])
        np.testing.assert_array_equal(record_set.labels(), [0, 1, 2, 3])
        assert [record_set[position].image for position in range(4)] == images


def test_ten_thousand_tiny_records(tmp_path):
    labels = np.repeat(np.arange(1000), 10)
    write_record_set(tmp_path, ((int(label), bytes([index % 251])) for index, label in enumerate(labels)),
                     image_size=(112, 112))
    with open_record_set(tmp_path) as record_set:
        assert record_set.num_photos == 10_000 and record_set.num_identities == 1000
        np.testing.assert_array_equal(record_set.labels(), labels)
        assert record_set.read(9_999) == (999, bytes([9_998 % 251]))


def test_reads_from_many_threads_at_once(tmp_path):
    images = [encoded(index) for index in range(64)]
    write_record_set(tmp_path, zip(np.repeat(np.arange(16), 4).tolist(), images))
    with open_record_set(tmp_path) as record_set:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            read = list(pool.map(lambda position: record_set[position].image, list(range(64)) * 4))
    assert read == images * 4


def test_closed_sets_and_unknown_keys(tmp_path):
    write_record_set(tmp_path, zip([0, 1], [encoded(0), encoded(1)]))
    record_set = open_record_set(tmp_path)
    with pytest.raises(KeyError, match="key 0"):
        record_set.read(0)  # the header record is no photo
    with pytest.raises(KeyError):
        record_set.read(3)
    with pytest.raises(IndexError):
        record_set[2]
    record_set.close()
    record_set.close()
    with pytest.raises(ValueError, match="closed"):
        record_set[0]


# ---------------------------------------------------------------------------------------------
# Bad input: refused in one line, or counted and skipped


@pytest.mark.parametrize("missing", ["train.rec", "train.idx"])
def test_missing_files(tmp_path, missing):
    write_record_set(tmp_path, [(0, encoded(0))])
    (tmp_path / missing).unlink()
    with pytest.raises(RecordIOError) as error:
        open_record_set(tmp_path)
    assert "no such file" in assert_one_line_naming(error, missing)


def test_not_a_folder(tmp_path):
    with pytest.raises(RecordIOError) as error:
        open_record_set(tmp_path / "nowhere")
    assert_one_line_naming(error, "nowhere")


@pytest.mark.parametrize("replaced", ["train.rec", "train.idx"])
def test_a_fifo_is_refused_without_waiting(tmp_path, replaced):
    write_record_set(tmp_path, [(0, encoded(0))])
    (tmp_path / replaced).unlink()
    os.mkfifo(tmp_path / replaced)
    with pytest.raises(RecordIOError) as error:
        open_record_set(tmp_path)
    assert "not a regular file" in assert_one_line_naming(error, replaced)


def test_a_directory_in_place_of_the_index(tmp_path):
    write_record_set(tmp_path, [(0, encoded(0))])
    (tmp_path / "train.idx").unlink()
    (tmp_path / "train.idx").mkdir()
    with pytest.raises(RecordIOError) as error:
        open_record_set(tmp_path)
    assert "directory" in assert_one_line_naming(error, "train.idx")


def test_duplicate_keys_are_refused_naming_the_key(tmp_path):
    records, _ = photo_records([0, 1, 2], start_key=0)
    folder = write_raw_set(tmp_path, records, index_lines=["0\t0", "2\t40", "1\t80", "2\t120"])
    with pytest.raises(RecordIOError) as error:
        open_record_set(folder)
    assert "key 2 twice" in assert_one_line_naming(error, "train.idx")


def test_malformed_index_lines_are_skipped_and_counted(tmp_path, caplog):
    records, images = photo_records([0, 1, 2, 3], start_key=0)
    folder = write_raw_set(tmp_path, records)
    lines = (folder / "train.idx").read_text().splitlines()
    bad = ["garbage", "5", "6\t7\t8", "-1\t0", "9\t1e3", "99999999999999999999\t0"]
    (folder / "train.idx").write_text("\n".join([lines[0], bad[0], lines[1], *bad[1:], lines[2], lines[3]]))
    with caplog.at_level(logging.WARNING), open_record_set(folder) as record_set:
        np.testing.assert_array_equal(record_set.photo_keys, [0, 1, 2, 3])
        assert [record_set[position].image for position in range(4)] == images
        assert [key for key, _ in record_set.skipped] == [None] * 6
        assert "train.idx line 2 " in record_set.skipped[0][1]
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "left out 6 malformed line(s) of train.idx;" in warnings[0].getMessage()


@pytest.mark.parametrize("index_text", [b"", b"\n\n", b"not an index\n", bytes(range(256)) * 4])
def test_an_index_with_no_usable_line_is_refused(tmp_path, index_text):
    write_record_set(tmp_path, [(0, encoded(0))])
    (tmp_path / "train.idx").write_bytes(index_text)
    with pytest.raises(RecordIOError) as error:
        open_record_set(tmp_path)
    assert_one_line_naming(error, "train.idx")


def _three_photo_set(tmp_path, bad_record: bytes, bad_position: int = 1):
    """Keys 0, 1, 2 with the record at ``bad_position`` replaced by ``bad_record``."""
    records, images = photo_records([0, 1, 2], start_key=0)
    records[bad_position] = (bad_position, bad_record)
    return write_raw_set(tmp_path, records), images


def _assert_skipped(folder, key, reason_part):
    record_set = open_record_set(folder)
    assert key not in record_set.photo_keys.tolist() and len(record_set) == 2
    assert [skipped_key for skipped_key, _ in record_set.skipped] == [key]
    assert reason_part in record_set.skipped[0][1], record_set.skipped
    for position in range(2):
        record_set[position]  # the rest reads
    record_set.close()


@pytest.mark.parametrize("bad_record, reason", [
    (raw_record(ir_payload(1, b"image"), magic=0xDEADBEEF), "wrong magic"),
    (raw_record(ir_payload(1, b"image"), cflag=1), "split record"),
    (raw_record(ir_payload(1, b"image"), length=12), "too short"),
    (raw_record(ir_payload(-1.0, b"image")), "not a non-negative integer"),
    (raw_record(ir_payload(float("nan"), b"image")), "not a non-negative integer"),
    (raw_record(ir_payload(float("inf"), b"image")), "not a non-negative integer"),
    (raw_record(ir_payload(1.5, b"image")), "not a non-negative integer"),
    (raw_record(ir_payload([-3.0, 1.0], b"image")), "not a non-negative integer"),
    (raw_record(ir_payload(1, b"image", flag=MAX_LABELS_PER_RECORD + 1)), "label count is absurd"),
    (raw_record(ir_payload(1, b"image", flag=10)), "labels run past"),
    (raw_record(ir_payload(1, b"image"), length=1000), "truncated"),
    (raw_record(ir_payload([1.0, 2.0])), "holds no image"),
])
def test_bad_photo_records_are_skipped_and_counted(tmp_path, caplog, bad_record, reason):
    folder, _ = _three_photo_set(tmp_path, bad_record)
    with caplog.at_level(logging.WARNING):
        _assert_skipped(folder, 1, reason)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "left out 1 of 3 photo records (1 as " in warnings[0] and reason in warnings[0]


def test_index_pointing_past_the_end_of_the_records(tmp_path):
    records, _ = photo_records([0, 1, 2], start_key=0)
    folder = write_raw_set(tmp_path, records)
    size = (folder / "train.rec").stat().st_size
    lines = (folder / "train.idx").read_text().splitlines()
    (folder / "train.idx").write_text("\n".join([lines[0], lines[1], f"2\t{size + 4096}"]) + "\n")
    _assert_skipped(folder, 2, "past the end")
    (folder / "train.idx").write_text(f"0\t{size}\n1\t{size + 8}\n")
    with pytest.raises(RecordIOError) as error:
        open_record_set(folder)
    assert "no usable photo" in assert_one_line_naming(error, "train.rec")


def test_a_truncated_records_file(tmp_path):
    records, _ = photo_records([0, 1, 2], start_key=0)
    folder = write_raw_set(tmp_path, records)
    size = (folder / "train.rec").stat().st_size
    os.truncate(folder / "train.rec", size - 7)  # the copy stopped inside the last record
    _assert_skipped(folder, 2, "truncated")


def _peak_allocation(work) -> int:
    """The most bytes Python held at once while ``work()`` ran."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_absurd_length_is_refused_before_anything_is_read(tmp_path):
    """A record claiming 2**28 bytes (over the 64 MiB cap) or 2**20 bytes at the end of a small
    file, or over the cap in a (sparse) file large enough to hold it: skipped, and opening and
    reading the rest allocate little."""
    for claimed, reason in ((1 << 28, "length is absurd"), (1 << 20, "truncated")):
        folder, _ = _three_photo_set(tmp_path / str(claimed), raw_record(ir_payload(1, b"image"), length=claimed), 2)
        assert _peak_allocation(lambda: _assert_skipped(folder, 2, reason)) < 4 << 20

    over_cap = raw_record(ir_payload(1, b"image"), length=MAX_RECORD_BYTES + 64)
    folder, _ = _three_photo_set(tmp_path / "cap", over_cap, bad_position=2)
    os.truncate(folder / "train.rec", MAX_RECORD_BYTES + 4096)  # sparse: holds the claimed length
    assert _peak_allocation(lambda: _assert_skipped(folder, 2, "length is absurd")) < 4 << 20


def test_no_usable_photo_at_all(tmp_path):
    folder = write_raw_set(tmp_path, [(0, raw_record(ir_payload(-1.0, b"x"))), (1, raw_record(ir_payload(0.5, b"y")))])
    with pytest.raises(RecordIOError) as error:
        open_record_set(folder)
    assert "no usable photo record" in assert_one_line_naming(error, "train.rec")


def test_a_header_whose_counts_disagree_with_the_index(tmp_path):
    folder, _ = insightface_set(tmp_path, [0, 0, 1])
    lines = (folder / "train.idx").read_text().splitlines()
    (folder / "train.idx").write_text("\n".join(lines[:2] + lines[4:]) + "\n")  # photo keys 2 and 3 dropped
    with pytest.raises(RecordIOError) as error:
        open_record_set(folder)
    assert "1 of the 3 photo keys" in assert_one_line_naming(error, "train.idx")

    (folder / "train.idx").write_text("\n".join(lines + ["9\t0"]) + "\n")  # a key past the header's last
    with pytest.raises(RecordIOError) as error:
        open_record_set(folder)
    assert "key 9" in assert_one_line_naming(error, "train.idx")


def test_a_malformed_photo_line_in_a_header_set_is_tolerated(tmp_path):
    folder, images = insightface_set(tmp_path, [0, 0, 1])
    lines = (folder / "train.idx").read_text().splitlines()
    lines[2] = "2\tabc"
    (folder / "train.idx").write_text("\n".join(lines) + "\n")
    with open_record_set(folder) as record_set:
        np.testing.assert_array_equal(record_set.photo_keys, [1, 3])
        assert record_set.read(3) == (1, images[2])


@pytest.mark.parametrize("labels", [[float("nan"), 5.0], [0.0, 5.0], [4.0, 2.0], [2.5, 5.0]])
def test_a_corrupt_header_record_is_refused(tmp_path, labels):
    photos, _ = photo_records([0, 1])
    folder = write_raw_set(tmp_path, [(0, raw_record(ir_payload(labels))), *photos])
    with pytest.raises(RecordIOError) as error:
        open_record_set(folder)
    assert "header record" in assert_one_line_naming(error, "train.rec")


def test_a_wrong_magic_at_the_header_is_refused(tmp_path):
    photos, _ = photo_records([0, 1])
    folder = write_raw_set(tmp_path, [(0, raw_record(ir_payload([3.0, 5.0]), magic=0)), *photos])
    with pytest.raises(RecordIOError) as error:
        open_record_set(folder)
    assert "record 0" in assert_one_line_naming(error, "train.rec")


@pytest.mark.parametrize("text", ["garbage", "1,2", "-1,112,112", "\xff"])
def test_a_malformed_property_file_is_ignored_with_a_warning(tmp_path, caplog, text):
    write_record_set(tmp_path, [(0, encoded(0))])
    (tmp_path / "property").write_bytes(text.encode("latin-1"))
    with caplog.at_level(logging.WARNING), open_record_set(tmp_path) as record_set:
        assert record_set.image_size is None and record_set.declared_identities is None
        assert len(record_set) == 1
    assert any("property" in record.getMessage() for record in caplog.records)


def test_a_fifo_in_place_of_the_property_file_is_ignored(tmp_path, caplog):
    write_record_set(tmp_path, [(0, encoded(0))])
    (tmp_path / "property").unlink()
    os.mkfifo(tmp_path / "property")
    with caplog.at_level(logging.WARNING), open_record_set(tmp_path) as record_set:
        assert record_set.image_size is None and len(record_set) == 1
    assert any("not a regular file" in record.getMessage() for record in caplog.records)


def test_the_record_changing_after_opening_is_reported_in_one_line(tmp_path):
    write_record_set(tmp_path, zip([0, 1], [encoded(0), encoded(1)]), header=False)
    with open_record_set(tmp_path) as record_set:
        with open(tmp_path / "train.rec", "r+b") as rec:
            rec.write(b"\0\0\0\0")  # record 0's magic
        with pytest.raises(RecordIOError) as error:
            record_set.read(0)
        assert "wrong magic" in assert_one_line_naming(error, "train.rec")
        assert record_set.read(1)[0] == 1


def test_pack_record_pads_to_four_bytes_and_refuses_huge_payloads():
    for image_length in range(8):
        assert len(pack_record(1, b"x" * image_length)) % 4 == 0
    assert pack_record([1.0, 2.0], b"") == raw_record(ir_payload([1.0, 2.0]))
    assert pack_record(3, b"abc", record_id=7) == raw_record(ir_payload(3.0, b"abc", record_id=7))
