"""Reading a file facetrip did not just write: regular files only, within a cap, parsed within bounds.

Every file a command reads that it did not write itself in the same process (a run's
metadata, split and config, training records, an index's manifest, data and ANN files,
pairs files, TF_CONFIG) may come from anyone. This module is the one way they are read:

- Only a regular file is read. A FIFO, a device or a socket is refused at once: the path is
  checked before opening, opened with ``O_NONBLOCK`` (never waiting for a writer), and what
  was opened is checked again (the file may have been replaced in between).
- At most the caller's cap is read, whatever the file's size says or becomes. The bytes that
  are checked (a hash, a header) are the bytes that are used: nothing is read twice.
- JSON and TOML are parsed only within a nesting depth (:data:`MAX_NESTING`), counted on the
  text before any parser sees it, so that no parser recurses past Python's stack.
- A NumPy ``.npz`` member's header (shape and dtype) is checked against what the caller
  expects, and its size against a cap, before anything is allocated.

Each failure is an :class:`UntrustedFileError`: one line naming the file and saying why.
Callers add what to do about it in their own error class.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Read-only, never waiting for a writer (should a FIFO take the place of the regular file
# just checked, it opens at once and is then refused) and never becoming the process's terminal.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)

# The deepest nesting of arrays and objects (TOML: tables and dotted keys too) accepted in a
# JSON or TOML file. facetrip's own files nest at most 5 deep; Python's parsers recurse once
# per level and stop near 1,000.
MAX_NESTING = 64

# Caps for the kinds of small text files facetrip reads; larger ones are not facetrip's.
JSON_SIZE_LIMIT = 16 << 20
TOML_SIZE_LIMIT = 1 << 20


class FileOpenError(OSError):
    """A file that cannot be opened as a regular file: the message names it and says why, in one clause.

    Attributes:
        path: the file.
        reason: ``"missing"``, ``"not regular"`` (a directory, a FIFO, a device or a socket)
            or ``"unreadable"`` (permissions, a loop of links, ...).
    """

    def __init__(self, path: Path, reason: str, message: str):
        super().__init__(message)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return self.args[0]


class UntrustedFileError(ValueError):
    """A file facetrip reads but did not write cannot be used: one line naming it and saying why.

    Attributes:
        path: the file (or the name of the setting, for text that did not come from a file).
        reason: ``"missing"``, ``"not regular"``, ``"unreadable"``, ``"too large"``,
            ``"not text"``, ``"too deep"``, ``"corrupt"`` or ``"unexpected"`` (well formed,
            but not what the caller expects: a shape, a type).
    """

    def __init__(self, path: str | Path, reason: str, message: str):
        super().__init__(message)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return self.args[0]


def open_regular_file(path: str | Path) -> tuple[int, int]:
    """A read-only descriptor of ``path``, which must be a regular file, and the file's size.

    The path is checked before opening (opening a device can do things of its own: a tape
    rewinds), the file is opened without waiting (O_NONBLOCK), and what was opened is
    checked again. Symbolic links are followed. The caller closes the descriptor.

    Args:
        path: the file.

    Returns:
        ``(descriptor, size in bytes when opened)``.

    Raises:
        FileOpenError: ``path`` is missing, not a regular file, or cannot be opened; the
            message is one clause naming the file (``"PATH: no such file"``, ``"PATH is a
            directory"``, ``"PATH cannot be read (Permission denied)"``).
    """
    path = Path(path)
    try:
        _check_regular(os.stat(path), path)
        descriptor = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise FileOpenError(path, "missing", f"{path}: no such file") from None
    except FileOpenError:
        raise
    except OSError as error:
        raise FileOpenError(path, "unreadable", f"{path} cannot be read ({error.strerror or error})") from None
    try:
        status = os.fstat(descriptor)
        _check_regular(status, path)  # what was opened: the file may have been replaced since
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor, status.st_size


def _check_regular(status: os.stat_result, path: Path) -> None:
    """Raise :class:`FileOpenError` unless ``status`` is that of a regular file."""
    if stat.S_ISDIR(status.st_mode):
        raise FileOpenError(path, "not regular", f"{path} is a directory")
    if not stat.S_ISREG(status.st_mode):
        raise FileOpenError(path, "not regular", f"{path} is not a regular file (a FIFO, device or socket)")


def read_at_most(descriptor: int, max_bytes: int) -> bytes:
    """The bytes of an open file up to its end, but never more than ``max_bytes + 1``.

    Args:
        descriptor: a file descriptor open for reading.
        max_bytes: the most bytes the caller accepts; one byte more says the file is larger
            (it may have grown since it was checked).

    Returns:
        the bytes read.

    Raises:
        OSError: the read failed.
    """
    chunks, size = [], 0
    while size <= max_bytes:
        chunk = os.read(descriptor, min(1 << 24, max_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_untrusted_bytes(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes, read once.

    Args:
        path: the file.
        max_bytes: the largest size accepted.
        what: the file in words, for the message (``"run metadata"``).

    Returns:
        The file's bytes (``len <= max_bytes``).

    Raises:
        UntrustedFileError: missing (reason ``"missing"``), a directory, FIFO, device or
            socket, unreadable, or larger than ``max_bytes``.
    """
    path = Path(path)
    try:
        descriptor, size = open_regular_file(path)
    except FileOpenError as error:
        raise UntrustedFileError(path, error.reason, str(error)) from None
    try:
        if size > max_bytes:
            raise _too_large(path, what, max_bytes)
        data = read_at_most(descriptor, max_bytes)
    except OSError as error:
        raise UntrustedFileError(path, "unreadable", f"{path} cannot be read ({error.strerror or error})") from None
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:  # it grew while being read
        raise _too_large(path, what, max_bytes)
    return data


def _too_large(path: Path, what: str, max_bytes: int) -> UntrustedFileError:
    return UntrustedFileError(path, "too large", f"{path} is larger than facetrip reads for a {what} ({max_bytes:,} bytes)")


def read_untrusted_text(path: str | Path, max_bytes: int, what: str = "file") -> str:
    """The text of a UTF-8 file (a byte-order mark dropped) of at most ``max_bytes`` bytes.

    Raises:
        UntrustedFileError: as :func:`read_untrusted_bytes`, or the bytes are not UTF-8
            (reason ``"not text"``).
    """
    data = read_untrusted_bytes(path, max_bytes, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UntrustedFileError(path, "not text", f"{path} is not UTF-8 text, as a {what} must be") from None


def json_nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text, strings skipped; one pass, no recursion.

    Args:
        text: the text, well formed or not.

    Returns:
        The largest number of ``[`` / ``{`` open at once outside strings.
    """
    depth = deepest = 0
    in_string = escaped = False
    for character in text:
        if in_string:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif character in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif character in "]}":
            depth -= 1
    return deepest


def toml_nesting_depth(text: str) -> int:
    """An upper bound of the nesting a TOML text builds: arrays, inline tables, table headers and dotted keys.

    ``a.b.c = 1`` nests three tables as surely as ``a = {b = {c = 1}}`` does, so a key's
    dots count as levels on top of the brackets open around it. Strings (basic, literal and
    multi-line) and comments are skipped. One pass, no recursion.

    Args:
        text: the text, well formed or not.

    Returns:
        The largest (brackets open + dots in the key being read) anywhere in the text.
    """
    stack: list[str] = []  # the open brackets: "[" array or table header, "{" inline table
    deepest = dots = 0
    in_key = True  # reading a key (dots nest) rather than a value (dots are decimals)
    index, length = 0, len(text)
    while index < length:
        character = text[index]
        if character in "\"'":
            index = _after_toml_string(text, index)
            continue
        if character == "#":
            newline = text.find("\n", index)
            index = length if newline < 0 else newline
            continue
        if character == "\n":
            if not stack or stack[-1] == "{":
                in_key, dots = True, 0
        elif character == "=":
            in_key, dots = False, 0
        elif character == "." and in_key:
            dots += 1
        elif character in "[{":
            if character == "{":
                in_key, dots = True, 0
            stack.append(character)
        elif character in "]}":
            if stack:
                stack.pop()
            if not stack:
                dots = 0
        elif character == "," and stack and stack[-1] == "{":
            in_key, dots = True, 0
        deepest = max(deepest, len(stack) + dots)
        index += 1
    return deepest


def _after_toml_string(text: str, start: int) -> int:
    """The index just after the TOML string that starts at ``start`` (the end of the text if unclosed)."""
    quote = text[start]
    if text.startswith(quote * 3, start):
        end = text.find(quote * 3, start + 3)
        while end >= 0 and quote == '"' and _escaped(text, end):
            end = text.find(quote * 3, end + 1)
        return len(text) if end < 0 else end + 3
    index = start + 1
    while index < len(text) and text[index] not in (quote, "\n"):
        index += 2 if quote == '"' and text[index] == "\\" else 1
    return index + 1


def _escaped(text: str, index: int) -> bool:
    """Whether the character at ``index`` follows an odd run of backslashes."""
    backslashes = 0
    while index - backslashes - 1 >= 0 and text[index - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def parse_json_text(text: str, source: str | Path, max_depth: int = MAX_NESTING) -> Any:
    """JSON text parsed within a nesting depth.

    Args:
        text: the JSON text.
        source: where it came from (a file, ``TF_CONFIG``), for the message.
        max_depth: the deepest nesting accepted.

    Returns:
        The parsed value.

    Raises:
        UntrustedFileError: nested deeper than ``max_depth`` (``"too deep"``), or not JSON
            (``"corrupt"``; a number too long to convert included).
    """
    if json_nesting_depth(text) > max_depth:
        raise UntrustedFileError(source, "too deep", f"{source} nests deeper than {max_depth} levels: not a file facetrip writes")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise UntrustedFileError(source, "corrupt", f"{source} is corrupt (not JSON)") from None


def parse_toml_text(text: str, source: str | Path, max_depth: int = MAX_NESTING) -> dict:
    """TOML text parsed within a nesting depth (see :func:`toml_nesting_depth`).

    Raises:
        UntrustedFileError: nested deeper than ``max_depth`` (``"too deep"``), or not TOML
            (``"corrupt"``, with the parser's own words on where).
    """
    if toml_nesting_depth(text) > max_depth:
        raise UntrustedFileError(source, "too deep", f"{source} nests deeper than {max_depth} levels: not a facetrip config")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UntrustedFileError(source, "corrupt", f"{source} is not valid TOML ({error})") from None
    except RecursionError:
        raise UntrustedFileError(source, "too deep", f"{source} nests too deep: not a facetrip config") from None


def read_untrusted_json(path: str | Path, max_bytes: int = JSON_SIZE_LIMIT, what: str = "JSON file",
                        max_depth: int = MAX_NESTING) -> Any:
    """A JSON file that facetrip did not just write: a regular file, within a size cap and a nesting depth.

    Raises:
        UntrustedFileError: see :func:`read_untrusted_text` and :func:`parse_json_text`.
    """
    return parse_json_text(read_untrusted_text(path, max_bytes, what), path, max_depth)


def read_untrusted_toml(path: str | Path, max_bytes: int = TOML_SIZE_LIMIT, what: str = "config",
                        max_depth: int = MAX_NESTING) -> dict:
    """A TOML file that facetrip did not just write: a regular file, within a size cap and a nesting depth.

    Raises:
        UntrustedFileError: see :func:`read_untrusted_text` and :func:`parse_toml_text`.
    """
    return parse_toml_text(read_untrusted_text(path, max_bytes, what), path, max_depth)


# What a member of an archive may be: (shape, dtype kinds). A shape's None is any length;
# the kinds are NumPy's dtype.kind letters ("f" float, "U" text, "iu" integers, "b" bool).
ArraySpec = tuple[Optional[tuple[Optional[int], ...]], str]
# facetrip's archives hold a handful of arrays.
_MAX_MEMBERS = 64


# Any array of numbers, booleans or text (never Python objects or raw records).
PLAIN_KINDS = "biufcUS"


def load_npz_checked(data: bytes, specs: Optional[Mapping[str, ArraySpec]], source: str | Path,
                     max_array_bytes: int = 1 << 30) -> dict:
    """The arrays of ``.npz`` bytes, each header checked before its array is allocated.

    Only the members named in ``specs`` are read. For each, the ``.npy`` header is read
    alone; its shape must match the spec (None matches any length), its dtype must be one
    of the spec's kinds and hold no Python objects, and its size must be at most
    ``max_array_bytes``. Only then is the array read.

    Args:
        data: the archive's bytes (already checked against a hash, if the caller has one).
        specs: member name (without ``.npy``) -> (shape, dtype kinds); None reads every
            member of the archive, of any shape, of the :data:`PLAIN_KINDS`.
        source: the file, for the message.
        max_array_bytes: the largest array accepted.

    Returns:
        member name -> array.

    Raises:
        UntrustedFileError: not a zip archive, a member missing or damaged (``"corrupt"``),
            or one whose shape, dtype or size is not the expected one (``"unexpected"``).
    """
    import numpy as np

    arrays = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if specs is None:
                members = [name for name in archive.namelist() if name.endswith(".npy")]
                if len(members) > _MAX_MEMBERS:
                    raise UntrustedFileError(source, "unexpected", f"{source} holds {len(members):,} arrays, not a file facetrip writes")
                specs = {name[:-4]: (None, PLAIN_KINDS) for name in members}
            for name, (shape, kinds) in specs.items():
                try:
                    info = archive.getinfo(f"{name}.npy")
                except KeyError:
                    raise UntrustedFileError(source, "corrupt", f"{source} is corrupt (it has no {name!r} array)") from None
                if info.compress_type != zipfile.ZIP_STORED:  # np.savez stores; a deflated member could expand 1000-fold
                    raise UntrustedFileError(source, "unexpected", f"{source}: its {name!r} array is compressed, "
                                             "which no file facetrip writes is")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        found_shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version in ((2, 0), (3, 0)):
                        found_shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f"format version {version}")
                    _check_header(name, found_shape, dtype, shape, kinds, source, max_array_bytes)
                    count = int(np.prod(found_shape, dtype=np.int64))
                    if info.file_size - member.tell() < count * dtype.itemsize:
                        raise UntrustedFileError(source, "corrupt", f"{source} is corrupt (its {name!r} array is cut short)")
                    array = np.empty(count, dtype)  # read straight into its own memory: one copy, never two
                    if count and member.readinto(array.view(np.uint8)) != count * dtype.itemsize:
                        raise UntrustedFileError(source, "corrupt", f"{source} is corrupt (its {name!r} array is cut short)")
                    arrays[name] = array.reshape(found_shape[::-1]).transpose() if fortran else array.reshape(found_shape)
    except UntrustedFileError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as error:
        raise UntrustedFileError(source, "corrupt", f"{source} is corrupt ({_short(error)})") from None
    return arrays


def _check_header(name: str, found_shape: tuple, dtype, shape: tuple, kinds: str, source, max_array_bytes: int) -> None:
    """Raise :class:`UntrustedFileError` unless an array header is the one expected and small enough."""
    if dtype.hasobject or dtype.kind not in kinds or dtype.itemsize == 0:
        raise UntrustedFileError(source, "unexpected", f"{source}: its {name!r} array is of type {dtype.str}, not one facetrip writes")
    if shape is not None and len(found_shape) != len(shape) or shape is not None and any(want is not None and want != got for want, got in zip(shape, found_shape)):
        expected = " x ".join("N" if want is None else str(want) for want in shape) or "a scalar"
        raise UntrustedFileError(source, "unexpected",
                                 f"{source}: its {name!r} array has shape {tuple(found_shape)}, expected {expected}")
    size = dtype.itemsize
    for length in found_shape:
        size *= length
    if size > max_array_bytes:
        raise UntrustedFileError(source, "too large", f"{source}: its {name!r} array would take {size:,} bytes "
                                 f"(facetrip reads at most {max_array_bytes:,})")


def _short(error: BaseException) -> str:
    """An error's text on one line, at most 120 characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."
