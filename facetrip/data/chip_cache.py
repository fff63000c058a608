"""The face-chip cache: PNG chips on disk and in memory, keyed by the photo's bytes.

Chips are cached per photo (keyed by the SHA-1 of its encoded bytes) as PNG files under
:func:`chip_cache_dir`, and in a small in-process memo. The folder names
:data:`~facetrip.data.chip_cutting.ALIGNMENT_VERSION`, so a change of any step that shapes
a chip starts a fresh cache. What the folder holds is not trusted: a cache file is used
only when it is a regular file (not a link, a FIFO or a device), decodes to a 150 x 150 RGB
chip, and names in a text chunk the photo key and alignment version it was stored under;
anything else is computed again and replaced. Files are written under a fresh name,
created exclusively, then renamed.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import secrets
import stat
import struct
import threading
import zlib
from pathlib import Path

from facetrip.data import chip_cutting
from facetrip.data.chip_png import decode_chip
from facetrip.data.images import ImageReadError
from facetrip.data.regular_files import read_at_most

# The on-disk cache lives in $FACETRIP_CACHE_DIR (default: $XDG_CACHE_HOME/facetrip, else
# ~/.cache/facetrip); an empty FACETRIP_CACHE_DIR turns it off.
CACHE_ENV = "FACETRIP_CACHE_DIR"
_CACHE_FOLDER = "face_chips"

# Chips kept in memory as PNG (about 30 KB each): at most ~30 MB per process.
_MEMO_SIZE = 1024

# A cache file is the chip's PNG with one more text chunk, right after the PNG header, that
# names the photo key and the alignment version it was stored under: a well-formed chip of
# another photo (or of another alignment) copied to a key's file is not that photo's chip.
_CACHE_ENTRY_KEY = "facetrip:cache_entry"
_PNG_HEADER = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
_PNG_HEADER_END = len(_PNG_HEADER) + 13 + 4  # the signature and the IHDR chunk: its 13 bytes and CRC

# A 150 x 150 RGB chip takes some 30-70 KB as PNG: a larger cache file is not one.
_MAX_CACHE_FILE_BYTES = 1 << 20

# Cache files are read without following a link at their name and without waiting on a FIFO,
# and written to a fresh name that must not exist yet (no file or link planted there is used).
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CACHE_READ_FLAGS = os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | _O_CLOEXEC
_CACHE_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC


def cache_root() -> Path | None:
    """facetrip's cache folder ($FACETRIP_CACHE_DIR, $XDG_CACHE_HOME/facetrip, ~/.cache/facetrip), None when off."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured).expanduser() if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "facetrip"


def chip_cache_dir() -> Path | None:
    """The folder of the cached face chips of this alignment version, or None when caching is off."""
    root = cache_root()
    return root / _CACHE_FOLDER / chip_cutting.ALIGNMENT_VERSION if root is not None else None


class _ChipMemo:
    """The most recently used PNG chips of this process, by photo key."""

    def __init__(self, size: int):
        self._size = size
        self._chips: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            png = self._chips.get(key)
            if png is not None:
                self._chips.move_to_end(key)
            return png

    def put(self, key: str, png: bytes) -> None:
        with self._lock:
            self._chips[key] = png
            self._chips.move_to_end(key)
            while len(self._chips) > self._size:
                self._chips.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._chips.clear()


_memo = _ChipMemo(_MEMO_SIZE)


def photo_key(data: bytes) -> str:
    """The cache key of a photo: the SHA-1 of its encoded bytes, in hex."""
    return hashlib.sha1(data).hexdigest()


def _cache_path(key: str) -> Path | None:
    folder = chip_cache_dir()
    return folder / key[:2] / f"{key}.png" if folder is not None else None


def cached_chip_png(key: str) -> bytes | None:
    """The PNG chip of a photo from the memo or the disk, or None.

    None also for a cache file that is not this photo's chip of this alignment (see
    :func:`_chip_of_cache_file`): the chip is then computed again and the file replaced.

    Args:
        key: the photo key (:func:`photo_key`).

    Returns:
        the PNG chip, as :func:`~facetrip.data.chip_png.encode_chip` wrote it, or None.
    """
    png = _memo.get(key)
    if png is not None:
        return png
    path = _cache_path(key)
    if path is None:
        return None
    cache_file = _read_cache_file(path)
    png = _chip_of_cache_file(key, cache_file) if cache_file is not None else None
    if png is not None:
        _memo.put(key, png)
    return png


def _read_cache_file(path: Path) -> bytes | None:
    """The bytes of a cache file, or None when it is absent, unreadable, too large or not a regular file.

    A link at ``path`` is not followed and a FIFO is not waited on: both are refused at once.

    Args:
        path: the cache file.

    Returns:
        its bytes, or None.
    """
    try:
        # Checked before opening, as opening a device can do things of its own (a tape rewinds).
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        descriptor = os.open(path, _CACHE_READ_FLAGS)
    except OSError:  # absent, unreadable, or replaced by a link since (ELOOP)
        return None
    try:
        status = os.fstat(descriptor)  # what was opened: the file may have been replaced since
        if not stat.S_ISREG(status.st_mode) or status.st_size > _MAX_CACHE_FILE_BYTES:
            return None
        cache_file = read_at_most(descriptor, _MAX_CACHE_FILE_BYTES)
    except OSError:
        return None
    finally:
        os.close(descriptor)
    return cache_file if len(cache_file) <= _MAX_CACHE_FILE_BYTES else None


def _cache_label(key: str) -> bytes:
    """The PNG text chunk that names a cache file's photo key and alignment version."""
    payload = _CACHE_ENTRY_KEY.encode("latin-1") + b"\0" + f"{key} {chip_cutting.ALIGNMENT_VERSION}".encode("latin-1")
    return struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", zlib.crc32(b"tEXt" + payload))


def _cache_file_of(key: str, png: bytes) -> bytes:
    """What a photo's PNG chip is cached as: the PNG with :func:`_cache_label` right after its header."""
    if not png.startswith(_PNG_HEADER):
        raise ValueError("a face chip is a PNG starting with its IHDR chunk")
    return png[:_PNG_HEADER_END] + _cache_label(key) + png[_PNG_HEADER_END:]


def _chip_of_cache_file(key: str, cache_file: bytes) -> bytes | None:
    """The PNG chip a cache file holds for ``key``, or None when it is not this photo's chip of this alignment.

    Args:
        key: the photo key the file was read under.
        cache_file: the file's bytes (:func:`_cache_file_of`).

    Returns:
        the PNG chip without the label, byte for byte what
        :func:`~facetrip.data.chip_png.encode_chip` wrote, or None when the label is missing
        or names another key or alignment, or the chip does not decode to 150 x 150 RGB.
    """
    label = _cache_label(key)
    if not cache_file.startswith(_PNG_HEADER) or cache_file[_PNG_HEADER_END : _PNG_HEADER_END + len(label)] != label:
        return None
    png = cache_file[:_PNG_HEADER_END] + cache_file[_PNG_HEADER_END + len(label) :]
    try:
        decode_chip(png)
    except ImageReadError:
        return None
    return png


def store_chip_png(key: str, png: bytes) -> None:
    """Keep a photo's PNG chip in the memo and, when caching is on, on disk (atomically).

    The file is written under a fresh random name, created exclusively without following
    links (with the user's umask, like any file they write), then renamed over the cache
    file: readers never see half a file, and a file or link planted at either name is
    replaced, never written through.

    Args:
        key: the photo key (:func:`photo_key`).
        png: the PNG chip (:func:`~facetrip.data.chip_png.encode_chip`).
    """
    _memo.put(key, png)
    path = _cache_path(key)
    if path is None:
        return
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, _CACHE_WRITE_FLAGS, 0o666)
        created = True
        with os.fdopen(descriptor, "wb") as file:
            file.write(_cache_file_of(key, png))
        os.replace(temporary, path)
    except OSError:  # a read-only or full disk only costs the time to compute it again
        if created:
            with contextlib.suppress(OSError):
                temporary.unlink()
