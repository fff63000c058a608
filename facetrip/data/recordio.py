"""insightface face sets in MXNet's RecordIO format, read without MXNet.

A set is a folder holding:

- ``train.rec``: the records, one after another. Each is::

      uint32 magic 0xced7230a | uint32 (cflag << 29 | length) | payload (length bytes) | zero padding to 4 bytes

  and its payload is an ``IRHeader`` (struct ``'<IfQQ'``: flag, label, id, id2; 24 bytes),
  then ``flag`` float32 labels when ``flag > 0`` (the ``label`` field is then 0), then the
  encoded image (JPEG or PNG bytes). facetrip reads whole records only (``cflag == 0``);
  MXNet splits a record into parts (``cflag`` 1, 2, 3) only when its payload holds the
  magic number itself, which insightface's writers never produce for a face set.
- ``train.idx``: one ``key<TAB>offset`` line per record (the offset of its magic number).
- ``property`` (optional): one line ``num_classes,height,width``, e.g. ``85742,112,112``.

In insightface's sets record 0 is a header whose two labels are ``(N + 1, N + 1 + C)``
and which holds no image; records ``1 .. N`` are the photos, the label (or the first of
several labels) naming the identity; records ``N + 1 .. N + C`` hold each identity's
range of photo keys, labels ``(first key, last key + 1)``. A set without the header
record (record 0 is a photo) is read as photos under every key of ``train.idx``.

:func:`open_record_set` reads ``train.idx`` and the first bytes of every photo record
(never their images), checks them, and returns a :class:`RecordSet`: the photos' keys
and labels as numpy arrays (16 bytes per photo for the keys and offsets, 8 for the
labels), and random access to each photo's encoded bytes by ``os.pread``, which threads
may call at once. Whether those bytes decode to an image is the caller's concern: the
reader hands back what the record holds. :mod:`facetrip.data.recordio_writer` writes a
set in insightface's layout, for tests and benchmarks.

What the files say is never trusted: a length, a label count or an offset read from them
is checked against the file's size and against fixed caps before anything is read or
allocated by it. A photo record that cannot be used (wrong magic, truncated, absurd
length, bad label) is counted in :attr:`RecordSet.skipped` and left out, with one warning;
a set of which nothing usable is left, or whose header contradicts its index, is refused
with a one-line :class:`RecordIOError` that names the file.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import struct
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from facetrip.data.errors import DataError
from facetrip.untrusted_files import FileOpenError, open_regular_file, read_at_most

logger = logging.getLogger(__name__)

RECORDS_FILE = "train.rec"
INDEX_FILE = "train.idx"
PROPERTY_FILE = "property"

RECORD_MAGIC = 0xCED7230A
_LENGTH_BITS = 29
LENGTH_MASK = (1 << _LENGTH_BITS) - 1

# The record's 8-byte prefix (magic, cflag and length), then the IRHeader.
RECORD_PREFIX = struct.Struct("<II")
IR_HEADER = struct.Struct("<IfQQ")
_HEADER_END = RECORD_PREFIX.size + IR_HEADER.size  # 32: where the extra labels, or the image, start
_LABEL = struct.Struct("<f")

# What is read of each photo record to learn its label: the prefix, the IRHeader and the
# first extra label (read even when flag is 0; it is then the image's first bytes).
_PHOTO_HEAD_BYTES = _HEADER_END + _LABEL.size  # 36
_PHOTO_HEAD = np.dtype(
    [("magic", "<u4"), ("cflag_length", "<u4"), ("flag", "<u4"), ("label", "<f4"),
     ("id", "<u8"), ("id2", "<u8"), ("first_label", "<f4")]
)
assert _PHOTO_HEAD.itemsize == _PHOTO_HEAD_BYTES

# A record longer than this is taken for a corrupt length (a 112 x 112 JPEG takes some
# 5-10 KB; a 4000 x 3000 phone photo some 5 MB).
MAX_RECORD_BYTES = 64 << 20
# A record with more labels than this is taken for a corrupt flag (insightface's have 1 or 2).
MAX_LABELS_PER_RECORD = 1024
# Identity labels are float32 in the file: integers are exact up to 2**24.
MAX_EXACT_LABEL = 1 << 24
# The index is read whole: some 20 bytes a line, so this is ~100 million records.
MAX_INDEX_BYTES = 2 << 30
_MAX_PROPERTY_BYTES = 1024
# An index number longer than this many digits cannot be an int64 key or offset.
_MAX_INDEX_DIGITS = 18

# Byte lookup tables: bytes.split()'s whitespace (tab, newline, vertical tab, form feed,
# carriage return, space), and the decimal digits.
_IS_INDEX_WHITESPACE = np.isin(np.arange(256), [9, 10, 11, 12, 13, 32])
_IS_DIGIT = (np.arange(256) >= ord("0")) & (np.arange(256) <= ord("9"))


class RecordIOError(DataError):
    """A RecordIO face set is missing, unreadable or corrupt; the message names the file and what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.splitlines()))  # one line, whatever a path holds


class PhotoRecord(NamedTuple):
    """One photo of a set: its identity label and its encoded image, as the record holds them."""

    label: int
    image: bytes


class _Header(NamedTuple):
    """The labels of insightface's header record 0: photos are keys 1 .. num_photos."""

    num_photos: int
    end_key: int  # N + 1 + C: keys of the identity-range records end here


# ---------------------------------------------------------------------------------------------
# Files


def _open_regular_file(path: Path, what: str) -> tuple[int, int]:
    """A read-only descriptor of ``path`` (``what``: "the records file"), which must be a regular file, and its size.

    Opened without waiting (O_NONBLOCK), so a FIFO is refused at once instead of hanging.
    Raises :class:`RecordIOError` when the file is missing, unreadable or not a regular file.
    """
    try:
        return open_regular_file(path)
    except FileOpenError as error:
        raise RecordIOError(f"{error}; {_OPEN_ADVICE[error.reason].format(what=what)}") from None


# What to do about a file of the set that cannot be opened, by FileOpenError.reason.
_OPEN_ADVICE = {
    "missing": "a RecordIO set needs {what} here",
    "not regular": "a RecordIO set needs {what} there as a regular file",
    "unreadable": "check its permissions",
}


def _read_small_file(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, read through one descriptor.

    No more than the file's size (plus one byte, to see it grow) is ever asked for.
    """
    descriptor, size = _open_regular_file(path, what)
    try:
        data = read_at_most(descriptor, size) if size <= max_bytes else b""
    except OSError as error:
        raise RecordIOError(f"{path} cannot be read ({error.strerror})") from None
    finally:
        os.close(descriptor)
    if size > max_bytes:
        raise RecordIOError(f"{path} is too large for {what} ({size:,} bytes, at most {max_bytes:,}): is it right?")
    if len(data) != size:
        raise RecordIOError(f"{path} changed while it was read; open the set again when it is written")
    return data


# ---------------------------------------------------------------------------------------------
# train.idx


class _Index(NamedTuple):
    keys: np.ndarray  # (R,) int64, sorted
    offsets: np.ndarray  # (R,) int64, the offset of each key's record
    malformed_lines: list[int]  # 1-based line numbers


def _parse_index(text: bytes, path: Path) -> _Index:
    """The keys and offsets of a ``train.idx`` file's lines, sorted by key.

    Lines are ``key<TAB>offset`` (any whitespace between); blank lines are ignored, and a
    line that is not two non-negative integers is counted as malformed and left out. The
    work is done on the whole file at once with numpy (a million lines in a fraction of a
    second).

    Args:
        text: the file's bytes.
        path: the file, for messages.

    Returns:
        the sorted keys, their offsets and the malformed lines' numbers.

    Raises:
        RecordIOError: a key appears twice, or no line is well formed.
    """
    raw = np.frombuffer(text, dtype=np.uint8)  # (B,)
    newlines = np.flatnonzero(raw == 10)  # (L,) or (L - 1,) where the last line has no newline
    num_lines = newlines.size + int(raw.size > 0 and raw[-1] != 10)
    in_token = ~_IS_INDEX_WHITESPACE[raw]  # (B,)
    token_starts = np.flatnonzero(in_token & ~np.concatenate([[False], in_token[:-1]]))  # (T,)
    token_ends = np.flatnonzero(in_token & ~np.concatenate([in_token[1:], [False]])) + 1  # (T,)
    token_line = np.searchsorted(newlines, token_starts)  # (T,) 0-based line of each token
    tokens_per_line = np.bincount(token_line, minlength=num_lines)  # (L,)

    malformed = (tokens_per_line != 0) & (tokens_per_line != 2)  # (L,)
    stray_bytes = np.flatnonzero(in_token & ~_IS_DIGIT[raw])  # a sign, a letter, a stray byte
    malformed[np.searchsorted(newlines, stray_bytes)] = True
    malformed[token_line[token_ends - token_starts > _MAX_INDEX_DIGITS]] = True
    well_formed = (tokens_per_line == 2) & ~malformed  # (L,)
    if not well_formed.any():
        raise RecordIOError(
            f"{path} holds no 'key<TAB>offset' line ({num_lines} lines): it is not a RecordIO index; "
            f"rebuild it from the .rec file or fetch the set again"
        )

    kept_tokens = well_formed[token_line]  # (T,)
    if not kept_tokens.all():  # blank out the malformed lines' tokens, leaving only well-formed numbers
        edges = np.zeros(raw.size + 1, dtype=np.int8)  # +1 where a dropped token starts, -1 where it ends
        edges[token_starts[~kept_tokens]] = 1
        edges[token_ends[~kept_tokens]] = -1
        raw = np.where(np.cumsum(edges[:-1], dtype=np.int8) > 0, np.uint8(ord(" ")), raw)  # (B,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # a short read is caught by the count below
        numbers = np.fromstring(raw.tobytes(), dtype=np.int64, sep=" ")  # (2K,): digits and whitespace only
    if numbers.size != 2 * int(well_formed.sum()):
        raise RecordIOError(f"{path} could not be parsed as 'key<TAB>offset' lines; rebuild it")
    numbers = numbers.reshape(-1, 2)  # (K, 2): key, offset
    order = np.argsort(numbers[:, 0], kind="stable")
    keys = np.ascontiguousarray(numbers[order, 0])  # (K,)
    offsets = np.ascontiguousarray(numbers[order, 1])  # (K,)
    repeated = np.flatnonzero(keys[1:] == keys[:-1])
    if repeated.size:
        raise RecordIOError(
            f"{path} lists key {int(keys[repeated[0]])} twice ({repeated.size} repeated keys): the index is corrupt; "
            f"rebuild it from the .rec file or fetch the set again"
        )
    return _Index(keys, offsets, (np.flatnonzero(malformed) + 1).tolist())


# ---------------------------------------------------------------------------------------------
# Record heads


# Why a photo record is left out, by code (0: usable); the first that applies is the reason.
SKIP_REASONS = (
    "",
    "its offset in train.idx is past the end of train.rec",
    "no record starts at its offset (wrong magic number)",
    "it is one part of a split record (cflag != 0), which facetrip does not read",
    f"its length is absurd (over {MAX_RECORD_BYTES:,} bytes)",
    "it is truncated (it runs past the end of train.rec)",
    "it is too short to hold its header",
    f"its label count is absurd (over {MAX_LABELS_PER_RECORD})",
    "its labels run past the record's end",
    "it holds no image",
    "it could not be read whole (has the file changed?)",
    "its label is not a non-negative integer",
)


def _head_problems(heads: np.ndarray, offsets: np.ndarray, bytes_read: np.ndarray, file_size: int) -> np.ndarray:
    """(R,) uint8 codes into :data:`SKIP_REASONS` (0: usable) of photo records' heads, checked all at once.

    Args:
        heads: (R,) records of :data:`_PHOTO_HEAD`, read at (R,) ``offsets`` of a file of
            ``file_size`` bytes, ``bytes_read`` (R,) of each head's bytes read.
    """
    length = (heads["cflag_length"] & LENGTH_MASK).astype(np.int64)  # (R,)
    cflag = heads["cflag_length"] >> _LENGTH_BITS  # (R,)
    flag = heads["flag"].astype(np.int64)  # (R,)
    label = _label_of(heads).astype(np.float64)  # (R,)
    with np.errstate(invalid="ignore"):
        bad_label = ~np.isfinite(label) | (label < 0) | (label != np.floor(label)) | (label >= MAX_EXACT_LABEL)
    failures = [  # in the order of SKIP_REASONS[1:]
        bytes_read < RECORD_PREFIX.size,
        heads["magic"] != RECORD_MAGIC,
        cflag != 0,
        length > MAX_RECORD_BYTES,
        offsets + RECORD_PREFIX.size + length > file_size,
        length < IR_HEADER.size,
        flag > MAX_LABELS_PER_RECORD,
        IR_HEADER.size + _LABEL.size * flag > length,
        IR_HEADER.size + _LABEL.size * flag == length,
        bytes_read < _HEADER_END + _LABEL.size * (flag > 0),
        bad_label,
    ]
    codes = np.zeros(len(heads), dtype=np.uint8)  # (R,)
    for code in range(len(failures), 0, -1):  # the first failure wins
        codes[failures[code - 1]] = code
    return codes


def _label_of(heads: np.ndarray) -> np.ndarray:
    """(R,) float32 identity label of each head: the first extra label when there are some, else the label field."""
    return np.where(heads["flag"] > 0, heads["first_label"], heads["label"])


# Heads are read and checked this many records at a time, so that what is held meanwhile stays small.
_HEADS_PER_BATCH = 1 << 16


def _scan_photo_heads(descriptor: int, offsets: np.ndarray, file_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The label of each photo record and why it cannot be used, from its first 36 bytes (one ``os.pread`` each).

    Returns:
        ``(labels, codes)`` of the records at (R,) ``offsets`` of the open records file:
        (R,) int64 labels (0 where the code is not 0) and (R,) uint8 codes into :data:`SKIP_REASONS`.
    """
    labels = np.zeros(len(offsets), dtype=np.int64)  # (R,)
    codes = np.zeros(len(offsets), dtype=np.uint8)  # (R,)
    size = _PHOTO_HEAD_BYTES
    for start in range(0, len(offsets), _HEADS_PER_BATCH):
        batch = offsets[start : start + _HEADS_PER_BATCH]  # (b,)
        pieces = [os.pread(descriptor, size, offset) for offset in batch.tolist()]
        bytes_read = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))  # (b,)
        whole = (bytes_read == size).all()  # else some reads stopped at the file's end: zero-filled
        joined = b"".join(pieces) if whole else b"".join(piece.ljust(size, b"\0") for piece in pieces)
        heads = np.frombuffer(joined, dtype=_PHOTO_HEAD)  # (b,)
        batch_codes = _head_problems(heads, batch, bytes_read, file_size)  # (b,)
        codes[start : start + len(batch)] = batch_codes
        with np.errstate(invalid="ignore"):
            labels[start : start + len(batch)] = np.where(batch_codes == 0, _label_of(heads), 0).astype(np.int64)
    return labels, codes


def _read_header_record(descriptor: int, offset: int, file_size: int, path: Path) -> _Header | None:
    """insightface's header record at ``offset`` (key 0): two labels and nothing else; None when it is a photo.

    Raises :class:`RecordIOError` when record 0 is unreadable or its labels are not ``(N + 1, N + 1 + C)``.
    """
    data = os.pread(descriptor, _HEADER_END + 2 * _LABEL.size, offset)
    if len(data) < _HEADER_END:
        raise RecordIOError(f"{path}: record 0 is cut off by the end of the file; fetch the set again")
    magic, cflag_length = RECORD_PREFIX.unpack_from(data)
    flag = IR_HEADER.unpack_from(data, RECORD_PREFIX.size)[0]
    if magic != RECORD_MAGIC or cflag_length >> _LENGTH_BITS:
        raise RecordIOError(
            f"{path}: no record starts at record 0's offset {offset}: train.idx does not belong to this file; "
            f"rebuild the index or fetch the set again"
        )
    length = cflag_length & LENGTH_MASK
    if flag != 2 or length != IR_HEADER.size + 2 * _LABEL.size:
        return None  # a photo: the set has no header record
    if len(data) < _HEADER_END + 2 * _LABEL.size:
        raise RecordIOError(f"{path}: the header record (key 0) is truncated; fetch the set again")
    first, end = struct.unpack_from("<2f", data, _HEADER_END)
    if not all(math.isfinite(value) and value == int(value) for value in (first, end)) or not 1 <= first <= end:
        raise RecordIOError(
            f"{path}: the header record (key 0) has labels ({first}, {end}), not (photos + 1, photos + 1 + "
            f"identities): the set is corrupt; fetch it again"
        )
    return _Header(num_photos=int(first) - 1, end_key=int(end))


# ---------------------------------------------------------------------------------------------
# The set


class RecordSet:
    """An open insightface RecordIO face set: its photos' keys and labels, and random access to their images.

    Photos are in key order; ``set[i]`` (or :meth:`photo`) is the i-th, :meth:`read` takes a
    record key. Reads use ``os.pread`` on one descriptor and keep no file position, so
    threads may read at once. Close the set (or use it in a ``with`` block) when done.

    Attributes:
        path: the set's folder.
        photo_keys: (N,) int64 record keys of the usable photos, ascending.
        skipped: ``(key, reason)`` of each photo record left out (key None for a malformed
            line of ``train.idx``).
        has_header: the set starts with insightface's header record.
        declared_identities: ``num_classes`` of the ``property`` file, or None.
        image_size: ``(height, width)`` of the ``property`` file, or None.
    """

    def __init__(self, path: Path, descriptor: int, file_size: int, photos: dict[str, np.ndarray],
                 skipped: list[tuple[int | None, str]], has_header: bool, declared: tuple[int, int, int] | None):
        self.path = path
        self._descriptor = descriptor
        self._closer = weakref.finalize(self, os.close, descriptor)
        self._file_size = file_size
        self.photo_keys = photos["keys"]  # (N,) int64
        self._photo_offsets = photos["offsets"]  # (N,) int64
        self._labels = photos["labels"]  # (N,) int64
        self._num_identities = int(np.unique(self._labels).size)
        self.skipped = skipped
        self.has_header = has_header
        self.declared_identities = declared[0] if declared else None
        self.image_size = declared[1:] if declared else None

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS_FILE

    @property
    def photo_offsets(self) -> np.ndarray:
        """(N,) int64 byte offset of each photo record in ``train.rec``, in key order."""
        return self._photo_offsets

    @property
    def num_photos(self) -> int:
        return int(self.photo_keys.size)

    @property
    def num_identities(self) -> int:
        """How many distinct identity labels the usable photos carry."""
        return self._num_identities

    def __len__(self) -> int:
        return self.num_photos

    def labels(self) -> np.ndarray:
        """(N,) int64 identity label of each photo, in key order (a copy)."""
        return self._labels.copy()

    def photo(self, position: int) -> PhotoRecord:
        """The photo at ``position`` (0 .. N - 1) in key order; see :meth:`read`."""
        if not -self.num_photos <= position < self.num_photos:
            raise IndexError(f"photo {position} of a set of {self.num_photos}")
        return self._read_at(int(self._photo_offsets[position]), int(self.photo_keys[position]))

    __getitem__ = photo

    def read(self, key: int) -> PhotoRecord:
        """The photo stored under record ``key``: its label and its image's encoded bytes.

        The bytes are the record's, untouched: decoding them (and refusing what does not
        decode) is the caller's work.

        Args:
            key: a key of :attr:`photo_keys`.

        Returns:
            ``(label, image)``.

        Raises:
            KeyError: ``key`` is not a usable photo of the set.
            RecordIOError: the record has changed on disk since the set was opened and is now corrupt.
        """
        position = int(np.searchsorted(self.photo_keys, key))
        if position >= self.num_photos or self.photo_keys[position] != key:
            raise KeyError(f"{self.records_path} has no usable photo under key {key}")
        return self._read_at(int(self._photo_offsets[position]), int(key))

    def _read_at(self, offset: int, key: int) -> PhotoRecord:
        if not self._closer.alive:
            raise ValueError(f"{self.records_path} is closed")
        head = os.pread(self._descriptor, _PHOTO_HEAD_BYTES, offset)
        heads = np.frombuffer(head.ljust(_PHOTO_HEAD_BYTES, b"\0"), dtype=_PHOTO_HEAD)  # (1,)
        code = _head_problems(heads, np.array([offset]), np.array([len(head)]), self._file_size)[0]
        if code:
            raise RecordIOError(f"{self.records_path}: record {key} is unusable: {SKIP_REASONS[code]}; "
                                          f"has the file changed since it was opened? Open the set again")
        length = int(heads["cflag_length"][0] & LENGTH_MASK)
        flag = int(heads["flag"][0])
        label = _label_of(heads)[0]
        payload = os.pread(self._descriptor, length, offset + RECORD_PREFIX.size)
        if len(payload) != length:
            raise RecordIOError(f"{self.records_path}: record {key} is cut off by the end of the file; "
                                          f"has it changed since it was opened? Open the set again")
        return PhotoRecord(int(label), payload[IR_HEADER.size + _LABEL.size * flag :])

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> RecordSet:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RecordSet({str(self.path)!r}: {self.num_photos} photos, {self.num_identities} identities)"


def open_known_records(path: str | Path, keys, offsets) -> RecordSet:
    """Photos of a set opened before, at keys and offsets it gave: ``train.idx`` is not read again.

    For the workers that each read a part of a set: opening the whole set (reading the
    index, checking every head) per part would cost the set's size per part. Each record's
    head is still checked as it is read (:meth:`RecordSet.read`).

    Args:
        path: the set's folder.
        keys: (M,) record keys.
        offsets: (M,) their offsets in ``train.rec`` (:attr:`RecordSet.photo_offsets`).

    Raises:
        RecordIOError: ``train.rec`` is missing or not a regular file.
    """
    folder = Path(path)
    keys, offsets = np.asarray(keys, np.int64).reshape(-1), np.asarray(offsets, np.int64).reshape(-1)
    order = np.argsort(keys, kind="stable")
    descriptor, file_size = _open_regular_file(folder / RECORDS_FILE, "the records file")
    return RecordSet(folder, descriptor, file_size,
                     {"keys": keys[order], "offsets": offsets[order], "labels": np.zeros(len(keys), np.int64)},
                     [], False, None)


def open_record_set(path: str | Path, warn: bool = True) -> RecordSet:
    """Open the insightface RecordIO set in folder ``path``, checking every photo record's head.

    Reads ``train.idx`` whole and, for each photo record, its first 36 bytes (magic,
    length, IRHeader and first extra label) with ``os.pread``; images are not read. A
    record that cannot be used is left out and listed in :attr:`RecordSet.skipped`, with
    one warning for them all.

    Args:
        path: the folder holding ``train.rec``, ``train.idx`` and optionally ``property``.
        warn: log the warnings (records left out, a malformed ``property`` file); off where
            the same set is opened again by the workers reading its photos, once it was
            opened, and warned about, to list them.

    Returns:
        the open set.

    Raises:
        RecordIOError: naming the file, when a file is missing or not a regular file, the
            index is not one or repeats a key, the header record contradicts the index, or
            no photo record is usable.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise RecordIOError(f"{folder} is not a folder: a RecordIO set is a folder holding "
                                      f"{RECORDS_FILE} and {INDEX_FILE}")
    index_path, records_path = folder / INDEX_FILE, folder / RECORDS_FILE
    index = _parse_index(_read_small_file(index_path, "the record index", MAX_INDEX_BYTES), index_path)
    declared = _read_property(folder / PROPERTY_FILE, warn)

    descriptor, file_size = _open_regular_file(records_path, "the records file")
    try:
        keys, offsets = index.keys, index.offsets
        header = None
        if keys[0] == 0 and 0 <= offsets[0] < file_size:
            header = _read_header_record(descriptor, int(offsets[0]), file_size, records_path)
        if header is not None:
            photos = _photo_range_of_header(header, keys, len(index.malformed_lines), index_path)
            keys, offsets = keys[photos], offsets[photos]  # (N,) views of the photos' keys 1..N
        labels, codes = _scan_photo_heads(descriptor, offsets, file_size)  # (N,), (N,)
    except OSError as error:
        os.close(descriptor)
        raise RecordIOError(f"{records_path} cannot be read ({error.strerror})") from None
    except BaseException:
        os.close(descriptor)
        raise

    usable = codes == 0  # (N,)
    skipped: list[tuple[int | None, str]] = [(None, f"{INDEX_FILE} line {line} is not 'key<TAB>offset'")
                                             for line in index.malformed_lines]
    skipped += [(int(key), SKIP_REASONS[code]) for key, code in zip(keys[~usable], codes[~usable])]
    if not usable.any():
        os.close(descriptor)
        first = f"; record {skipped[-1][0]}: {skipped[-1][1]}" if len(keys) else ""
        raise RecordIOError(f"{records_path} holds no usable photo record ({len(keys)} listed in "
                                      f"{INDEX_FILE}{first}): fetch the set again")
    if skipped and warn:
        _warn_skipped(folder, skipped, len(keys))
    photos = {"keys": keys[usable], "offsets": offsets[usable], "labels": labels[usable]}  # (N,) int64 each
    return RecordSet(folder, descriptor, file_size, photos, skipped, header is not None, declared)


def _photo_range_of_header(header: _Header, keys: np.ndarray, malformed_lines: int, index_path: Path) -> slice:
    """Where the photos' keys ``1 .. N`` lie among the sorted index keys, checked against the header.

    Keys missing from the index are tolerated only as many as the index has malformed lines
    (those are skipped); any other disagreement is refused.

    Raises:
        RecordIOError: the index lists keys past the header's last, or too few photo keys.
    """
    if keys[-1] >= header.end_key:
        raise RecordIOError(
            f"{index_path} lists key {int(keys[-1])}, but the header record says the set's keys end at "
            f"{header.end_key - 1}: the index does not belong to this .rec; rebuild it or fetch the set again"
        )
    start, stop = np.searchsorted(keys, [1, header.num_photos + 1])
    listed = int(stop - start)
    if listed == 0 or header.num_photos - listed > malformed_lines:
        raise RecordIOError(
            f"{index_path} lists {listed} of the {header.num_photos} photo keys (1 .. {header.num_photos}) the "
            f"header record names: the index does not belong to this .rec, or the set is incomplete; "
            f"rebuild the index or fetch the set again"
        )
    return slice(int(start), int(stop))


def _read_property(path: Path, warn: bool) -> tuple[int, int, int] | None:
    """``(num_classes, height, width)`` of the ``property`` file, or None (absent; unreadable: warned if ``warn``)."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        text = _read_small_file(path, "the set's property line", _MAX_PROPERTY_BYTES).decode("ascii")
        numbers = tuple(int(field) for field in text.strip().split(","))
        if len(numbers) != 3 or min(numbers) < 0:
            raise ValueError
    except (RecordIOError, UnicodeDecodeError, ValueError) as error:
        if warn:
            detail = str(error) if isinstance(error, RecordIOError) else f"{path} is not 'num_classes,height,width'"
            logger.warning("%s; it is ignored.", detail)
        return None
    return numbers


def _warn_skipped(folder: Path, skipped: Sequence[tuple[int | None, str]], listed: int) -> None:
    """One warning for everything left out: malformed index lines, and photo records by reason."""
    malformed_lines = sum(key is None for key, _ in skipped)
    reasons = collections.Counter(reason for key, reason in skipped if key is not None)
    parts = [f"{malformed_lines} malformed line(s) of {INDEX_FILE}"] if malformed_lines else []
    if reasons:
        by_reason = "; ".join(f"{count} as {reason}" for reason, count in reasons.most_common())
        parts.append(f"{sum(reasons.values())} of {listed} photo records ({by_reason})")
    first_key, first_reason = skipped[0]
    first = f"record {first_key}: {first_reason}" if first_key is not None else first_reason
    logger.warning("%s: left out %s; first: %s.", folder, " and ".join(parts), first)
