"""An image folder of identities, ``root/<identity>/<image>`` (the LFW layout), as a tfds dataset.

Each folder gets its own builder config, named after the folder and a fingerprint of its
absolute path and its files (relative path and content digest): preparing the same
unchanged folder again reuses what tfds stored, and a changed folder (a photo added,
removed or replaced, even by one of the same name, size and modification time) or
another folder with the same names is prepared anew.

Unreadable or corrupt files are left out with one warning that names them; images are
stored as RGB (JPEG and PNG bytes untouched, other formats as PNG). Identity and file
names are stored as text: any name works, and the bytes of a name that is not UTF-8 are
stored as ``\\xHH`` escapes (``b"\\xff.png"`` becomes ``\\xff.png``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from facetrip.data.errors import DataError
from facetrip.data.offline_builder import OfflinePreparationMessages
from facetrip.data.images import (
    IMAGE_EXTENSIONS,
    WORKING_MAX_SIDE,
    ImageReadError,
    decode_bytes,
    read_photo_file,
    to_8bit,
)
from facetrip.data.names import utf8_name
from facetrip.untrusted_files import open_regular_file

logger = logging.getLogger(__name__)

_SHOWN_BAD_FILES = 5


def list_identity_images(root: Path) -> dict[str, list[Path]]:
    """``{identity: [image paths]}`` for every sub-folder of ``root`` (images found recursively).

    Raises:
        DataError: ``root`` is not a folder or holds no identity sub-folder with images, or
            two identities or files would be stored under one name (:func:`~facetrip.data.names.utf8_name`).
    """
    return {identity: sorted(Path(entry.path) for entry in entries)
            for identity, entries in scan_identity_images(root).items()}


def scan_identity_images(root: Path) -> dict[str, list[os.DirEntry]]:
    """``{identity: [directory entries of its images]}``, identities sorted, entries in directory order.

    One ``os.scandir`` walk (an entry's ``stat()`` is one system call, cached): about ten
    times faster than pathlib's ``rglob`` on a million photos. Folders below an identity
    are walked, symbolic links to folders included, each real folder once.

    Raises:
        DataError: as :func:`list_identity_images`.
    """
    identities = {}
    unreadable: list[str] = []
    for folder in identity_folders(root):
        images = list(image_entries(folder.path, unreadable))
        if images:
            identities[folder.name] = images
    warn_unreadable(root, unreadable)
    if not identities:
        raise no_images_error(root)
    if not all(name.isascii() for name in identities) or not all(
            entry.path.isascii() for entries in identities.values() for entry in entries):
        _check_stored_names_are_distinct(root, {identity: [Path(entry.path) for entry in entries]
                                                for identity, entries in identities.items()})
    return identities


def identity_folders(root: Path) -> list[os.DirEntry]:
    """The identity folders of ``root`` (not hidden), sorted by name.

    Raises:
        DataError: ``root`` is not a folder, or cannot be read.
    """
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist or is not a folder.")
    try:
        with os.scandir(root) as top:
            return sorted((entry for entry in top if not entry.name.startswith(".") and _is_dir(entry)),
                          key=lambda entry: entry.name)
    except OSError as error:
        raise DataError(f"Cannot read image folder {root}: {error.strerror or error}.") from None


def warn_unreadable(root: Path, unreadable: list[str]) -> None:
    """One warning for the folders below ``root`` that could not be read (their photos are left out)."""
    if unreadable:
        logger.warning("Left out %d folder(s) of %s that cannot be read, e.g. %s.", len(unreadable), root,
                       utf8_name(unreadable[0]))


def no_images_error(root: Path) -> DataError:
    return DataError(
        f"Image folder {root} holds no images in the expected layout root/<identity>/<image> "
        f"(jpg, png, bmp, gif, pgm, ...)."
    )


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def image_entries(folder: str, unreadable: list[str]):
    """The image files below ``folder`` (recursively), each real folder walked once; unreadable folders are listed in ``unreadable``."""
    pending, seen = [folder], set()
    while pending:
        current = pending.pop()
        try:
            status = os.stat(current)
            if (status.st_dev, status.st_ino) in seen:
                continue
            seen.add((status.st_dev, status.st_ino))
            with os.scandir(current) as entries:
                for entry in entries:
                    name = entry.name
                    if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".") and _is_file(entry):
                        yield entry
                    elif _is_dir(entry):
                        pending.append(entry.path)
        except OSError:
            unreadable.append(current)  # it holds no photo facetrip can read


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _check_stored_names_are_distinct(root: Path, identities: dict[str, list[Path]]) -> None:
    """Refuse a folder where two identities, or two files, would be stored under one name.

    Only a name that is not UTF-8 next to one spelling out its ``\\xHH`` escapes can do that;
    stored together they would merge two identities (or clash as tfds keys).

    Args:
        root: the folder.
        identities: ``{identity: [image paths]}`` of ``root``.

    Raises:
        DataError: naming both and what they would be stored as.
    """
    names = {name for identity, paths in identities.items() for name in (identity, *_relative_names(root, paths))}
    stored_as: dict[str, str] = {}
    for name in sorted(names):  # sorted: the same pair is named every time, a folder before its files
        if name.isascii():  # stored as it is (the only names that change hold bytes >= 0x80)
            continue
        stored = utf8_name(name)
        other = name if stored == name else (stored if stored in names else stored_as.get(stored, name))
        stored_as.setdefault(stored, name)
        if other != name:
            # as bytes: stored, the two names read alike
            raise DataError(
                f"Image folder {utf8_name(str(root))}: {os.fsencode(other)!r} and {os.fsencode(name)!r} would both be "
                f"stored as {stored!r}: rename one."
            )


def _relative_names(root: Path, paths: list[Path]) -> list[str]:
    """The paths below ``root`` relative to it, as strings (string slicing: pathlib's relative_to is slower).

    Args:
        root: the folder.
        paths: files inside it.

    Returns:
        ``identity/.../file`` for each path, with the platform's separator.
    """
    prefix = len(os.path.join(str(root), ""))
    return [str(path)[prefix:] for path in paths]


def fingerprint(root: Path, identities: dict[str, list[Path]]) -> str:
    """A short hash of the folder's absolute path and every image's relative path and content.

    The content digest, not the size and modification time, tells a replaced photo from the
    one before (a copy that keeps the old time stamp, or one written within the file system's
    time-stamp resolution, changes neither), and touching a photo does not prepare the
    folder again. Measured on LFW (13,233 photos, 162 MB, warm page cache, 2 busy CPU
    cores): 0.5 s of CPU, 0.3 s more than hashing sizes and modification times, next to
    0.5 s for listing the folder, 7-9 s for loading the prepared copy and 35 s for
    preparing it. It reads every photo, so it grows with the folder's bytes as loading does.

    Args:
        root: the folder, absolute (two folders with the same names are different data).
        identities: :func:`list_identity_images` of ``root``.

    Returns:
        12 hex digits.
    """
    digest = hashlib.sha1(os.fsencode(root) + b"\n")
    for paths in identities.values():
        for path, name in zip(paths, _relative_names(root, paths)):
            try:
                with os.fdopen(open_regular_file(path)[0], "rb") as handle:  # a FIFO put in its place: refused, never waited on
                    content = hashlib.file_digest(handle, "sha1").hexdigest().encode()  # text: no \0 or \n inside
            except OSError as error:  # left out, with a warning, when the folder is prepared
                content = type(error).__name__.encode()
            # the bytes of the name, so that names that are not UTF-8 hash too
            digest.update(os.fsencode(name) + b"\0" + content + b"\n")
    return digest.hexdigest()[:12]


@dataclasses.dataclass(eq=False)
class IdentityFolderConfig(tfds.core.BuilderConfig):
    root: str = ""


class IdentityFolder(OfflinePreparationMessages, tfds.core.GeneratorBasedBuilder):
    """Faces from ``root/<identity>/<image>``; one builder config per folder content."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=f"Identity-labelled images from the folder {utf8_name(self.builder_config.root)}.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.Text(),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def image_count(self) -> int:
        return sum(len(paths) for paths in list_identity_images(Path(self.builder_config.root)).values())

    def _split_generators(self, dl_manager):
        del dl_manager
        root = Path(self.builder_config.root)
        return {"train": self._generate_examples(root, list_identity_images(root))}

    def _generate_examples(self, root: Path, identities: dict[str, list[Path]]):
        """Decode each image once; unreadable ones are skipped and reported together at the end.

        Raises:
            DataError: no image is readable.
        """
        unreadable, num_readable = [], 0
        for identity, paths in identities.items():
            for path in paths:
                file_name = utf8_name(path.relative_to(root).as_posix())
                try:
                    data = read_photo_file(path)  # read once: the bytes checked are the bytes stored
                    image, image_format = decode_bytes(data, str(path))
                except ImageReadError as error:
                    unreadable.append(utf8_name(str(error)))
                    continue
                if image_format in ("JPEG", "PNG") and image.mode == "RGB" and max(image.size) < WORKING_MAX_SIDE:
                    picture = io.BytesIO(data)  # stored untouched (a longer photo comes reduced: stored as PNG)
                else:
                    picture = np.asarray(to_8bit(image).convert("RGB"), np.uint8)  # stored as PNG
                num_readable += 1
                yield file_name, {"image": picture, "label": utf8_name(identity), "file_name": file_name}
        if unreadable:
            shown = "; ".join(unreadable[:_SHOWN_BAD_FILES])
            more = f" and {len(unreadable) - _SHOWN_BAD_FILES} more" if len(unreadable) > _SHOWN_BAD_FILES else ""
            logger.warning("Skipped %d unreadable image(s) in %s: %s%s", len(unreadable), root, shown, more)
        if not num_readable:
            raise DataError(f"Image folder {root} holds no readable image.")


def folder_builder(root: str | Path, data_dir: str | None = None) -> IdentityFolder:
    """The tfds builder of an image folder, keyed by the folder's current content."""
    root = Path(root).expanduser().resolve()
    identities = list_identity_images(root)
    slug = re.sub(r"[^a-zA-Z0-9_]+", "_", root.name).strip("_").lower() or "folder"
    config = IdentityFolderConfig(name=f"{slug}_{fingerprint(root, identities)}", root=str(root))
    return IdentityFolder(config=config, data_dir=data_dir)
