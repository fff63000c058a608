"""Writing face sets in insightface's RecordIO layout (``train.rec``, ``train.idx``, ``property``).

    (label, encoded image) pairs -> header record 0, photo records 1 .. N, identity-range records -> the set's folder

The layout is the one :mod:`facetrip.data.recordio` reads and describes; this module only
writes it, for tests and benchmarks, one photo at a time, so a set of any size is
written without holding it.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from facetrip.data.recordio import (
    INDEX_FILE,
    IR_HEADER,
    LENGTH_MASK,
    MAX_EXACT_LABEL,
    PROPERTY_FILE,
    RECORD_MAGIC,
    RECORD_PREFIX,
    RECORDS_FILE,
)


def pack_record(labels: float | Sequence[float], image: bytes, record_id: int = 0) -> bytes:
    """One RecordIO record: prefix, IRHeader, labels, payload and padding.

    Args:
        labels: one label (``flag`` 0, in the header's label field) or a list of labels
            (``flag = len(labels)``, the label field 0).
        image: the payload after the labels (encoded image bytes; empty for header records).
        record_id: the IRHeader's id (insightface writes the record's key).

    Returns:
        the record's bytes, a multiple of 4 long.
    """
    if isinstance(labels, (int, float, np.integer, np.floating)):
        header = IR_HEADER.pack(0, float(labels), record_id, 0)
    else:
        labels = [float(label) for label in labels]
        header = IR_HEADER.pack(len(labels), 0.0, record_id, 0) + struct.pack(f"<{len(labels)}f", *labels)
    payload = header + bytes(image)
    if len(payload) > LENGTH_MASK:
        raise ValueError(f"a record holds at most {LENGTH_MASK:,} bytes, not {len(payload):,}")
    return RECORD_PREFIX.pack(RECORD_MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4)


def write_record_set(
    path: str | Path,
    items: Iterable[tuple[float | Sequence[float], bytes]],
    header: bool = True,
    identity_ranges: bool = True,
    image_size: tuple[int, int] | None = None,
) -> int:
    """Write a face set in insightface's RecordIO layout, one photo at a time.

    With ``header``, record 0 holds the labels ``(N + 1, N + 1 + C)`` and no image (it is
    written first as a placeholder and filled in at the end), photos are keys ``1 .. N``
    and, with ``identity_ranges``, records ``N + 1 .. N + C`` hold each identity's keys as
    ``(first key, last key + 1)``, identities in ascending label order. Without ``header``
    the photos are keys ``0 .. N - 1`` and no range is written.

    Args:
        path: the folder to write ``train.rec``, ``train.idx`` and ``property`` into.
        items: ``(label, image)`` pairs: an identity label (a non-negative integer) or a
            list of float labels whose first is the identity, and the encoded image bytes.
        header: write insightface's header record 0.
        identity_ranges: write the identity-range records (with ``header`` only); the
            photos of each identity must then come one after another.
        image_size: ``(height, width)`` for the ``property`` file; by default the first
            image's size, as PIL reads it.

    Returns:
        the number of photos written.

    Raises:
        ValueError: a label is not a non-negative integer, or (with identity ranges) an
            identity's photos are not consecutive.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    ranges: dict[int, list[int]] = {}  # identity -> [first key, last key + 1]
    previous_identity = None
    key = 1 if header else 0
    with open(folder / RECORDS_FILE, "wb") as records, open(folder / INDEX_FILE, "w", encoding="ascii") as index:
        if header:
            index.write(f"0\t{records.tell()}\n")
            records.write(pack_record([0.0, 0.0], b""))  # placeholder, filled in at the end
        for labels, image in items:
            identity = _identity_of(labels)
            if image_size is None:
                image_size = _image_size(image)
            if header and identity_ranges:
                if identity != previous_identity and identity in ranges:
                    raise ValueError(f"photo {key} (identity {identity}) comes after other identities' photos: "
                                     f"identity ranges need each identity's photos one after another")
                ranges.setdefault(identity, [key, key])[1] = key + 1
            else:
                ranges.setdefault(identity, [])
            previous_identity = identity
            index.write(f"{key}\t{records.tell()}\n")
            records.write(pack_record(labels, image, record_id=key))
            key += 1
        num_photos = key - 1 if header else key
        if header:
            range_records = sorted(ranges.items()) if identity_ranges else []
            for identity, (first, end) in range_records:
                index.write(f"{key}\t{records.tell()}\n")
                records.write(pack_record([float(first), float(end)], b"", record_id=key))
                key += 1
            records.seek(0)
            records.write(pack_record([float(num_photos + 1), float(num_photos + 1 + len(range_records))], b""))
    if image_size is not None:
        (folder / PROPERTY_FILE).write_text(f"{len(ranges)},{image_size[0]},{image_size[1]}\n", encoding="ascii")
    return num_photos


def _identity_of(labels: float | Sequence[float]) -> int:
    first = labels if isinstance(labels, (int, float, np.integer, np.floating)) else (list(labels) or [math.nan])[0]
    if not (math.isfinite(first) and first >= 0 and first == int(first) and first < MAX_EXACT_LABEL):
        raise ValueError(f"an identity label is a non-negative integer below {MAX_EXACT_LABEL}, not {first!r}")
    return int(first)


def _image_size(image: bytes) -> tuple[int, int] | None:
    """``(height, width)`` of encoded image bytes as PIL reads their header, or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as opened:
            return opened.height, opened.width
    except (UnidentifiedImageError, OSError, ValueError):
        return None
