"""A data set written out as an image folder, ``root/<identity>/<image>``: the inverse of ``folder:PATH``.

Users export a source (the embedded ORL faces, a tfds set) to look at its photos, to hand
single photos to ``verify`` and ``embed``, or to edit it and train on the copy with
``--data folder:PATH``. The photos are written as they are stored (the encoded bytes,
untouched), each under its own file name with the extension of its format.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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
        DataError: ``directory`` holds files already, or cannot be written.
    """
    target = Path(directory).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target} exists and is not an empty folder: choose a new one, nothing was written.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as error:
        raise DataError(f"cannot write {target}: {error.strerror or error}.") from None
    try:
        used: set[Path] = set()
        for encoded, label, file_name in zip(faces.encoded, faces.labels, faces.file_names):
            identity = safe_part(str(faces.identity_names[int(label)]))
            stem = safe_part(Path(str(file_name)).stem)
            path = Path(identity) / f"{stem}{extension_of(bytes(encoded))}"
            number = 1
            while path in used:  # two photos of one identity with the same stem
                number += 1
                path = Path(identity) / f"{stem}-{number}{path.suffix}"
            used.add(path)
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
