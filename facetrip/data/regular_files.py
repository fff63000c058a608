"""Opening a file that must be a regular file: without waiting, checked before and after opening, read within a cap.

A user's photo and the files of a RecordIO set are opened the same way: the path must
name a regular file (a FIFO, a device or a socket is refused at once, never waited on or
read forever), what was opened is checked again (the file may have been replaced in
between), and a read never asks for more than the caller's limit. Each caller turns the
errors into its own one-line message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Read-only, never waiting for a writer (should a FIFO take the place of the regular file
# just checked, it opens at once and is then refused) and never becoming the process's terminal.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


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
        raise FileOpenError(path, "unreadable", f"{path} cannot be read ({error.strerror})") from None
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
