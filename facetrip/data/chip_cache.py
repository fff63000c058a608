"""The face-chip cache: PNG chips on disk and in memory, keyed by the photo's bytes.

Chips are cached per photo (keyed by the SHA-256 of its encoded bytes) as PNG files under
:func:`chip_cache_dir`, and in a small in-process memo. The folder names
:data:`~facetrip.data.chip_cutting.ALIGNMENT_VERSION`, so a change of any step that shapes
a chip starts a fresh cache.

The cache is the user's alone. Its folders are made 0700 and its files 0600, whatever the
umask, and before the cache is read or written its folders are checked (:func:`_private_folder`):
one that belongs to another user, or that others may write and that cannot be closed to
them, is refused with :class:`UntrustedCacheError`. What the folder holds is not trusted
either: a cache file is used only when it is a regular file (not a link, a FIFO or a
device), decodes to a 150 x 150 RGB chip, and carries in a text chunk a tag that vouches
for it: HMAC-SHA256, under the user's secret key (:func:`cache_key_file`, kept outside the
cache), of the photo key, the alignment version and the chip. A chip copied from another
photo, another alignment or another cache, or made up by whoever could write the folder,
has no valid tag: it is computed again and replaced, never used. Files are written under a
fresh name, created exclusively, then renamed.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import stat
import struct
import threading
import zlib
from pathlib import Path

from facetrip.data import chip_cutting
from facetrip.data.chip_png import decode_chip
from facetrip.data.errors import DataError
from facetrip.data.images import ImageReadError
from facetrip.untrusted_files import read_at_most

logger = logging.getLogger(__name__)

# The on-disk cache lives in $FACETRIP_CACHE_DIR (default: $XDG_CACHE_HOME/facetrip, else
# ~/.cache/facetrip); an empty FACETRIP_CACHE_DIR turns it off.
CACHE_ENV = "FACETRIP_CACHE_DIR"
_CACHE_FOLDER = "face_chips"

# The secret key that vouches for cache files lives in $FACETRIP_CACHE_KEY_FILE (default:
# $XDG_CONFIG_HOME/facetrip/cache.key, else ~/.config/facetrip/cache.key): outside the cache,
# so that whoever can copy or write cache files learns nothing of it.
KEY_FILE_ENV = "FACETRIP_CACHE_KEY_FILE"
_KEY_FILE_NAME = "cache.key"
_KEY_BYTES = 32

# What a refusal tells the user to do, besides closing the folder or removing the key.
_CACHE_DIR_FIX = f"set {CACHE_ENV} to a folder of your own, or {CACHE_ENV}= (empty) to turn the cache off"
_KEY_FOLDER_FIX = (f"set {KEY_FILE_ENV} to a file in a folder of your own, "
                   f"or {CACHE_ENV}= (empty) to turn the cache off")
_KEY_FILE_FIX = (f"remove it (a new key is made, and cached chips are computed again), set {KEY_FILE_ENV} "
                 f"to another file, or set {CACHE_ENV}= (empty) to turn the cache off")

# Chips kept in memory as PNG (about 30 KB each): at most ~30 MB per process.
_MEMO_SIZE = 1024

# A cache file is the chip's PNG with one more text chunk, right after the PNG header, that
# names the photo key and the alignment version it was stored under and carries the tag that
# vouches for the three (:func:`_entry_tag`): a well-formed chip of another photo (or of another
# alignment, or with a tag made without the user's key) at a key's file is not that photo's chip.
_CACHE_ENTRY_KEY = "facetrip:cache_entry"
_TAG_HEX_CHARS = 2 * hashlib.sha256().digest_size
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


def cache_key_file() -> Path:
    """The file of the secret key that vouches for cache files.

    ``$FACETRIP_CACHE_KEY_FILE``, else ``$XDG_CONFIG_HOME/facetrip/cache.key``, else
    ``~/.config/facetrip/cache.key``: outside the cache folder, readable by its owner only.

    Returns:
        the key file's path (it may not exist yet: it is made on the cache's first use).
    """
    configured = os.environ.get(KEY_FILE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "facetrip" / _KEY_FILE_NAME


class UntrustedCacheError(DataError, ImageReadError):
    """The chip cache's folder or key is not the user's alone: one line naming it, why, and what to do.

    Both a :class:`~facetrip.data.errors.DataError` and an
    :class:`~facetrip.data.images.ImageReadError`, so that every command that cuts face chips
    ends on it in one line, whichever of the two it maps.
    """


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
    """The cache key of a photo: the SHA-256 of its encoded bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def _cache_path(key: str) -> Path | None:
    folder = chip_cache_dir()
    return folder / key[:2] / f"{key}.png" if folder is not None else None


def cached_chip_png(key: str) -> bytes | None:
    """The PNG chip of a photo from the memo or the disk, or None.

    None also for a cache file that is not this photo's chip of this alignment, vouched for
    by the user's key (see :func:`_chip_of_cache_file`): the chip is then computed again and
    the file replaced. The cache's folders and key are checked first (:func:`_trusted_cache_dir`,
    :func:`_cache_key`).

    Args:
        key: the photo key (:func:`photo_key`).

    Returns:
        the PNG chip, as :func:`~facetrip.data.chip_png.encode_chip` wrote it, or None.

    Raises:
        UntrustedCacheError: a cache folder or the key file is not the user's alone.
    """
    png = _memo.get(key)
    if png is not None:
        return png
    if _trusted_cache_dir() is None:
        return None
    secret = _cache_key()
    path = _cache_path(key)
    if secret is None or path is None:
        return None
    cache_file = _read_cache_file(path)
    png = _chip_of_cache_file(key, cache_file, secret) if cache_file is not None else None
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


def _entry_tag(secret: bytes, key: str, png: bytes) -> str:
    """The tag that vouches for a cache entry: HMAC-SHA256 of its photo key, alignment version and PNG chip.

    Args:
        secret: the user's cache key (:func:`_cache_key`).
        key: the photo key (64 hex digits).
        png: the PNG chip, without the label.

    Returns:
        the tag, in hex.
    """
    # NUL-separated: neither a photo key nor the alignment version holds one, and the chip comes last.
    message = b"\0".join((_CACHE_ENTRY_KEY.encode("latin-1"), key.encode("latin-1"),
                          chip_cutting.ALIGNMENT_VERSION.encode("latin-1"), png))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _cache_label(key: str, tag: str) -> bytes:
    """The PNG text chunk that names a cache file's photo key and alignment version and carries its tag."""
    text = f"{key} {chip_cutting.ALIGNMENT_VERSION} {tag}"
    payload = _CACHE_ENTRY_KEY.encode("latin-1") + b"\0" + text.encode("latin-1")
    return struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", zlib.crc32(b"tEXt" + payload))


def _cache_file_of(key: str, png: bytes, secret: bytes) -> bytes:
    """What a photo's PNG chip is cached as: the PNG with :func:`_cache_label` right after its header."""
    if not png.startswith(_PNG_HEADER):
        raise ValueError("a face chip is a PNG starting with its IHDR chunk")
    return png[:_PNG_HEADER_END] + _cache_label(key, _entry_tag(secret, key, png)) + png[_PNG_HEADER_END:]


def _chip_of_cache_file(key: str, cache_file: bytes, secret: bytes) -> bytes | None:
    """The PNG chip a cache file holds for ``key``, or None when it is not this photo's chip of this alignment.

    Args:
        key: the photo key the file was read under.
        cache_file: the file's bytes (:func:`_cache_file_of`).
        secret: the user's cache key (:func:`_cache_key`).

    Returns:
        the PNG chip without the label, byte for byte what
        :func:`~facetrip.data.chip_png.encode_chip` wrote, or None when the label is missing,
        names another key or alignment, or its tag is not the one the user's key gives the
        chip (compared in constant time), or the chip does not decode to 150 x 150 RGB.
    """
    if not cache_file.startswith(_PNG_HEADER):
        return None
    label_end = _PNG_HEADER_END + len(_cache_label(key, "0" * _TAG_HEX_CHARS))
    png = cache_file[:_PNG_HEADER_END] + cache_file[label_end:]
    expected = _cache_label(key, _entry_tag(secret, key, png))
    if not hmac.compare_digest(cache_file[_PNG_HEADER_END:label_end], expected):
        return None
    try:
        decode_chip(png)
    except ImageReadError:
        return None
    return png


def store_chip_png(key: str, png: bytes) -> None:
    """Keep a photo's PNG chip in the memo and, when caching is on, on disk (atomically).

    The file is written under a fresh random name, created exclusively without following
    links and readable by the user only (0600, whatever the umask), then renamed over the
    cache file: readers never see half a file, and a file or link planted at either name is
    replaced, never written through. It carries the tag of :func:`_entry_tag`.

    Args:
        key: the photo key (:func:`photo_key`).
        png: the PNG chip (:func:`~facetrip.data.chip_png.encode_chip`).

    Raises:
        UntrustedCacheError: a cache folder or the key file is not the user's alone.
    """
    _memo.put(key, png)
    if _trusted_cache_dir() is None:
        return
    secret = _cache_key()
    path = _cache_path(key)
    if secret is None or path is None:
        return
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    created = False
    try:
        if not _private_folder(path.parent, True, "The face-chip cache folder", _CACHE_DIR_FIX):
            return
        descriptor = os.open(temporary, _CACHE_WRITE_FLAGS, 0o600)
        created = True
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # the umask may have taken the owner's own bits
            file.write(_cache_file_of(key, png, secret))
        os.replace(temporary, path)
    except OSError:  # a read-only or full disk only costs the time to compute it again
        if created:
            with contextlib.suppress(OSError):
                temporary.unlink()


# ---------------------------------------------------------------------------------------------
# The cache's privacy: its folders and its key


def check_chip_cache() -> None:
    """Refuse now, rather than at the first photo, a chip cache that is not the user's alone.

    For callers that hand the cache to code which records a failure per photo (worker
    processes preparing a set): the same checks :func:`cached_chip_png` and
    :func:`store_chip_png` make, folders and key made where missing. Nothing is checked
    when caching is off.

    Raises:
        UntrustedCacheError: a cache folder or the key file is not the user's alone.
    """
    if _trusted_cache_dir() is not None:
        _cache_key()


def _trusted_cache_dir() -> Path | None:
    """:func:`chip_cache_dir`, with the folders above it up to the cache root, made and checked private.

    Each folder is checked by :func:`_private_folder`: the cache root is facetrip's own
    (closed with chmod 700 when others may read or write it) unless ``$FACETRIP_CACHE_DIR``
    names it, and then the user's (refused when others may write it, never changed); the
    folders facetrip makes in it are facetrip's own.

    Returns:
        the folder of this alignment's chips, or None when caching is off or the folder cannot
        be made (a read-only disk, a file in its way): chips are then computed every time.

    Raises:
        UntrustedCacheError: a folder belongs to another user, or others may write it and it
            cannot be closed to them.
    """
    folder = chip_cache_dir()
    if folder is None:
        return None
    root_is_facetrips = not os.environ.get(CACHE_ENV)
    for path, facetrips_own in ((folder.parent.parent, root_is_facetrips), (folder.parent, True), (folder, True)):
        if not _private_folder(path, facetrips_own, "The face-chip cache folder", _CACHE_DIR_FIX):
            return None
    return folder


def _private_folder(folder: Path, facetrips_own: bool, what: str, fix: str) -> bool:
    """Make sure a folder of the cache (or of its key) exists and is the user's alone.

    A missing folder is made, with any missing folder above it, 0700 whatever the umask. A
    folder that exists must belong to the user. One of facetrip's own that others may read or
    write (made 0755 by an older facetrip, or 0775 under a umask of 002) is closed to them with
    chmod 700; a folder the user named that others may write is refused rather than changed.
    Links are followed: the user may keep the cache elsewhere.

    Args:
        folder: the folder.
        facetrips_own: whether facetrip made it (and may close it) or the user named it.
        what: what to call it in a refusal (``"The face-chip cache folder"``).
        fix: the end of a refusal: what else the user can do.

    Returns:
        True when the folder is there and private; False when it is not a folder or cannot be
        made (the cache is then off).

    Raises:
        UntrustedCacheError: it belongs to another user, or others may write it and it cannot
            (or, being the user's, may not) be closed to them.
    """
    try:
        status = os.stat(folder)
    except FileNotFoundError:
        if not _make_private_folders(folder):
            return False
        try:
            status = os.stat(folder)
        except OSError:
            return False
    except OSError:
        return False
    if not stat.S_ISDIR(status.st_mode):
        return False
    if status.st_uid != os.geteuid():
        raise UntrustedCacheError(f"{what} {folder} belongs to {_user_called(status.st_uid)}, not to you: {fix}.")
    mode = stat.S_IMODE(status.st_mode)
    if not facetrips_own:
        if mode & 0o022:
            raise UntrustedCacheError(f"{what} {folder} is writable by other users (mode {mode:04o}): "
                                      f"run chmod 700 {folder}, or {fix}.")
        return True
    if mode & 0o077:
        try:
            os.chmod(folder, 0o700)
        except OSError as error:
            raise UntrustedCacheError(f"{what} {folder} is open to other users (mode {mode:04o}) and cannot be "
                                      f"closed to them ({error.strerror}): run chmod 700 {folder}, or {fix}.") from None
    return True


def _make_private_folders(folder: Path) -> bool:
    """Make ``folder`` and any missing folder above it, each 0700 whatever the umask; False when that fails."""
    missing = [folder]
    while missing[-1].parent != missing[-1] and not os.path.lexists(missing[-1].parent):
        missing.append(missing[-1].parent)
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:  # made meanwhile (by another facetrip, say): checked by the caller
                continue
            os.chmod(path, 0o700)  # the umask may have taken the owner's own bits
    except OSError:
        return False
    return True


def _user_called(user_id: int) -> str:
    """``user NAME`` of a user id, or ``user id N`` when it has no name here."""
    import pwd

    try:
        return f"user {pwd.getpwuid(user_id).pw_name}"
    except KeyError:
        return f"user id {user_id}"


# The key read from each key file, once per process (None: none could be made; the cache is off).
_keys: dict[Path, bytes | None] = {}
_keys_lock = threading.Lock()


def _cache_key() -> bytes | None:
    """The user's secret key of the cache (:func:`cache_key_file`), made the first time, read once per process.

    The key is 32 random bytes (:func:`secrets.token_bytes`) in a file readable by its owner
    only (0600), in a folder of theirs that others may not write (0700 when facetrip makes it).

    Returns:
        the key, or None when there is none and none can be made (a read-only home, say): the
        disk cache is then off, and a warning says so once.

    Raises:
        UntrustedCacheError: the key file or its folder is not the user's alone, or the file is
            not a key (:func:`_read_key`).
    """
    path = cache_key_file()
    with _keys_lock:
        if path not in _keys:
            _keys[path] = _read_or_make_key(path)
        return _keys[path]


def _read_or_make_key(path: Path) -> bytes | None:
    """The key in ``path``, made there first when there is none; None (with a warning) when it cannot be made."""
    folder_is_facetrips = not os.environ.get(KEY_FILE_ENV)
    if not _private_folder(path.parent, folder_is_facetrips, "The folder of facetrip's cache key", _KEY_FOLDER_FIX):
        logger.warning("The face-chip cache is off: the folder of its key, %s, cannot be made; set %s to a file "
                       "in a writable folder.", path.parent, KEY_FILE_ENV)
        return None
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        _make_key(path)
    except OSError as error:
        logger.warning("The face-chip cache is off: its key %s cannot be made (%s); set %s to a file in a "
                       "writable folder.", path, error.strerror or error, KEY_FILE_ENV)
        return None
    try:
        return _read_key(path)  # the key made here, or another process's made meanwhile
    except FileNotFoundError:  # removed at once by someone else: no key this time
        return None


def _read_key(path: Path) -> bytes:
    """The key in ``path``, which must be a regular file of the user's, readable by them only, of 32 bytes.

    A link at ``path`` is not followed and a FIFO is not waited on: both are refused at once.

    Raises:
        FileNotFoundError: there is no key file.
        UntrustedCacheError: it is not a regular file, belongs to another user, is open to
            others, cannot be read, or is not 32 bytes long.
    """
    def refused(reason: str) -> UntrustedCacheError:
        return UntrustedCacheError(f"facetrip's cache key {path} {reason}: {_KEY_FILE_FIX}.")

    not_regular = "is not a regular file (a link, a folder, a FIFO or a device)"
    try:
        # Checked before opening, as opening a device can do things of its own (a tape rewinds).
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise refused(not_regular)
        descriptor = os.open(path, _CACHE_READ_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as error:  # unreadable, or replaced by a link since (ELOOP)
        raise refused(f"cannot be read ({error.strerror})") from None
    try:
        status = os.fstat(descriptor)  # what was opened: the file may have been replaced since
        if not stat.S_ISREG(status.st_mode):
            raise refused(not_regular)
        if status.st_uid != os.geteuid():
            raise refused(f"belongs to {_user_called(status.st_uid)}, not to you")
        if stat.S_IMODE(status.st_mode) & 0o077:
            raise refused(f"is open to other users (mode {stat.S_IMODE(status.st_mode):04o}), who may have read it")
        secret = read_at_most(descriptor, _KEY_BYTES) if status.st_size == _KEY_BYTES else b""
    except OSError as error:
        raise refused(f"cannot be read ({error.strerror})") from None
    finally:
        os.close(descriptor)
    if len(secret) != _KEY_BYTES:  # of another size, or changed since it was opened
        raise refused(f"is not a facetrip cache key ({status.st_size} bytes, not {_KEY_BYTES})")
    return secret


def _make_key(path: Path) -> None:
    """Write a fresh random key to ``path``, unless another process makes one there first.

    The key is written whole to a fresh name, created exclusively and readable by the user
    only (0600, whatever the umask), then linked to ``path``, which never replaces a key
    already there: a reader sees the whole key or none. Where the file system has no hard
    links it is renamed instead.

    Raises:
        OSError: the key cannot be written.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, _CACHE_WRITE_FLAGS, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # the umask may have taken the owner's own bits
            file.write(secrets.token_bytes(_KEY_BYTES))
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process made the key first: theirs is used
            pass
        except OSError:  # no hard links here
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
