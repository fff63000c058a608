"""A data set written out as an image folder, ``root/<identity>/<image>``: the inverse of ``folder:PATH``.

Users export a source (the embedded ORL faces, a tfds set) to look at its photos, to hand
single photos to ``verify`` and ``embed``, or to edit it and train on the copy with
``--data folder:PATH``. The photos are written as they are stored (the encoded bytes,
untouched), each under its own file name with the extension of its format.

An export goes only into a new or empty folder, never over an earlier one: the copy is the
user's to edit, and replacing it would lose their edits. Two identities whose names give
one folder (``bob`` and ``bob ``, ``a/b`` and ``a_b``, or ``Bob`` and ``bob``, which a disk
that ignores case holds as one) are refused before anything is written: read back, they
would be one person.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import unicodedata
from pathlib import Path

from facetrip.data.errors import DataError

# The leading bytes of each encoding tfds stores, and the extension a file of it gets.
_EXTENSIONS = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def extension_of(encoded: bytes) -> str:
    """The file extension of encoded image bytes, by their signature (``.png``, ``.jpg``, ...).

    Raises:
        DataError: the bytes are of no format listed in ``_EXTENSIONS``.
    """
    for signature, extension in _EXTENSIONS:
        if encoded.startswith(signature):
            return extension
    raise DataError(f"an image of an unknown format (first bytes {encoded[:8]!r}) cannot be exported.")


def safe_part(name: str) -> str:
    """One path component for a name: separators and a leading dot replaced, never empty."""
    part = name.replace(os.sep, "_").replace("/", "_").replace("\0", "_").strip()
    if part.startswith("."):
        part = "_" + part[1:]
    return part or "_"


def check_export_folder(directory: str | Path) -> Path:
    """The folder an export may be written to: a missing one, or an empty folder; reads only.

    Args:
        directory: the folder the user named.

    Returns:
        The folder, ``~`` expanded.

    Raises:
        DataError: ``directory`` is a file, or a folder that holds anything.
    """
    target = Path(directory).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target} exists and is not an empty folder: choose a new one, nothing was written.")
    return target


def _on_any_disk(folder: str) -> str:
    """What a folder name is to a disk that ignores case and Unicode normalisation (macOS, Windows)."""
    return unicodedata.normalize("NFC", folder).casefold()


def identity_folders(identity_names, target: str | Path) -> list[str]:
    """The folder of each identity in an export (:func:`safe_part`), refusing two identities that would share one.

    Args:
        identity_names: the identities, in label order.
        target: the export folder, for the message.

    Returns:
        The folder name of each identity, in the same order.

    Raises:
        DataError: two identities give one folder name, or two that differ only in case or
            Unicode normalisation; the line names both.
    """
    folders: list[str] = []
    first_of: dict[str, tuple[str, str]] = {}
    for name in map(str, identity_names):
        folder = safe_part(name)
        if _on_any_disk(folder) in first_of:
            other_name, other_folder = first_of[_on_any_disk(folder)]
            where = (f"both be written to {Path(target) / folder}" if folder == other_folder else
                     f"be written to {Path(target) / other_folder} and {Path(target) / folder}, one folder on a disk "
                     f"that ignores case (macOS, Windows)")
            raise DataError(f"the identities {other_name!r} and {name!r} would {where}, and read back as one person: "
                            f"rename one of them; nothing was written.")
        first_of[_on_any_disk(folder)] = (name, folder)
        folders.append(folder)
    return folders


def export_faces(faces, directory: str | Path) -> int:
    """Write every photo of ``faces`` to ``directory/<identity>/<stem><ext>``.

    The folder is written under a temporary name beside ``directory`` and renamed into place
    at the end, so an interrupted export leaves no half-written folder.

    Args:
        faces: :class:`~facetrip.data.FaceImages` (encoded photos with identities and file names).
        directory: the folder to create; it must not exist yet, or be empty.

    Returns:
        The number of photos written.

    Raises:
        DataError: ``directory`` holds files already, two identities would share a folder
            (:func:`identity_folders`), or it cannot be written.
    """
    target = check_export_folder(directory)
    folders = identity_folders(faces.identity_names, target)  # before anything is written
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as error:
        raise DataError(f"cannot write {target}: {error.strerror or error}.") from None
    try:
        used: set[str] = set()
        for encoded, label, file_name in zip(faces.encoded, faces.labels, faces.file_names):
            identity = folders[int(label)]
            stem = safe_part(Path(str(file_name)).stem)
            path = Path(identity) / f"{stem}{extension_of(bytes(encoded))}"
            number = 1
            while _on_any_disk(path.as_posix()) in used:  # two photos of one identity with the same stem, on any disk
                number += 1
                path = Path(identity) / f"{stem}-{number}{path.suffix}"
            used.add(_on_any_disk(path.as_posix()))
            (staging / identity).mkdir(exist_ok=True)
            (staging / path).write_bytes(bytes(encoded))
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(staging, target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"cannot write {target}: {error.strerror or error}.") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(used)
