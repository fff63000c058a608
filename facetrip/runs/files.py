"""Writing a run's files atomically: a fresh, uniquely named temporary file, flushed, renamed into place.

A kill never leaves a half-written model or metadata file, and two writers never share a
temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable


def _new_temporary_file(directory: Path, prefix: str, suffix: str) -> Path:
    """Create an empty file with a fresh random name in ``directory`` and return its path.

    The file is created with mode 0o666 like any new file, so the kernel applies the
    process' umask (and any default ACL) itself: the renamed result gets the permissions a
    plain ``open(path, "w")`` would give it. ``tempfile.mkstemp`` would make it 0o600.

    Args:
        directory: the folder of the final file (a rename only is atomic within one file system).
        prefix: start of the name; a leading dot keeps temporaries out of listings.
        suffix: end of the name (Keras insists on ``.keras`` or ``.weights.h5``).

    Returns:
        The path of the new, empty file, which no other writer can have been given.
    """
    for _ in range(100):
        candidate = directory / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(descriptor)
        return candidate
    raise FileExistsError(f"Could not create a temporary file in {directory}.")


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to disk, so that renaming it publishes whole contents."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(directory: str | Path) -> None:
    """Flush a folder's entries (renames, removals) to disk; a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(descriptor)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's contents, in hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: str | Path, write: Callable[[Path], Any], suffix: str = ".tmp") -> None:
    """Have ``write`` fill a fresh temporary file beside ``path``, then flush it and rename it into place.

    A kill at any moment leaves ``path`` either as it was or whole with the new contents;
    at worst a uniquely named temporary file ``.NAME.<random><suffix>`` is left beside it.

    Args:
        path: the file to replace.
        write: called with the temporary path; writes the complete new contents there.
        suffix: end of the temporary name.
    """
    path = Path(path)
    temporary = _new_temporary_file(path.parent, f".{path.name}.", suffix)
    try:
        write(temporary)
        fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_all_atomically(writes: dict[Path, Callable[[Path], Any]], suffix: str = ".tmp") -> None:
    """Fill a fresh temporary file beside each path; only once every one is complete, rename them into place in order.

    A failure in any ``write`` leaves every path as it was and no temporary file behind, so
    files that belong together (an array and the table describing its rows) are never
    replaced one without the other. A kill during the renames themselves can leave the
    first files new and the others old; each file is always whole.

    Args:
        writes: ``{path: write}``, each ``write`` called with its temporary path to write the complete contents.
        suffix: end of the temporary names.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in writes.items():
            path = Path(path)
            temporary = _new_temporary_file(path.parent, f".{path.name}.", suffix)
            staged.append((temporary, path))
            write(temporary)
            fsync_file(temporary)
        for temporary, path in staged:
            os.replace(temporary, path)
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise
    for directory in {path.parent for _, path in staged}:
        fsync_directory(directory)


def write_atomically_as(directory: str | Path, write: Callable[[Path], Any], name_of: Callable[[Path], str],
                        suffix: str = ".tmp") -> Path:
    """Have ``write`` fill a fresh temporary file in ``directory``, then rename it to the name its contents give it.

    For files named after their content (a hash): the name is known only once the file is
    written. A failure leaves no temporary file behind.

    Args:
        directory: the folder of the file.
        write: called with the temporary path; writes the complete contents.
        name_of: called with the written temporary path; returns the final file name (no folder).
        suffix: end of the temporary name.

    Returns:
        The final path.
    """
    directory = Path(directory)
    temporary = _new_temporary_file(directory, ".", suffix)
    try:
        write(temporary)
        fsync_file(temporary)
        path = directory / name_of(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(directory)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`write_atomically`), with the permissions the umask gives.

    Args:
        path: the file to replace.
        data: its complete new contents.
    """
    write_atomically(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Args:
        path: the file to replace.
        text: its complete new contents.
    """
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON with sorted keys to ``path`` atomically.

    Args:
        path: the file to replace.
        data: anything ``json.dumps`` takes.
    """
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model_atomically(model, path: str | Path) -> None:
    """Save the model, without optimizer state, to a fresh temporary ``.keras`` file, then rename it into place.

    Args:
        model: the Keras model (its inputs and outputs are saved as a plain, uncompiled model).
        path: the ``.keras`` file to replace.
    """
    import keras

    inference_model = keras.Model(model.inputs, model.outputs, name=model.name)  # shares the layers, not compiled
    write_atomically(path, inference_model.save, suffix=f".partial{Path(path).suffix}")
