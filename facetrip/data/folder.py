"""An image folder of identities, ``root/<identity>/<image>`` (the LFW layout), as a tfds dataset.

Each folder gets its own builder config, named after the folder and a fingerprint of its
files (relative path, size, modification time): preparing the same unchanged folder
again reuses what tfds stored, and a changed folder is prepared anew.

Unreadable or corrupt files are left out with one warning that names them; images are
stored as RGB (JPEG and PNG bytes untouched, other formats as PNG).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from facetrip.data.errors import DataError
from facetrip.data.images import ImageReadError, decode_file, is_image_file, to_8bit

logger = logging.getLogger(__name__)

_SHOWN_BAD_FILES = 5


def list_identity_images(root: Path) -> dict[str, list[Path]]:
    """``{identity: [image paths]}`` for every sub-folder of ``root`` (images found recursively).

    Raises:
        DataError: ``root`` is not a folder or holds no identity sub-folder with images.
    """
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist or is not a folder.")
    identities = {}
    for folder in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        images = sorted(path for path in folder.rglob("*") if path.is_file() and is_image_file(path))
        if images:
            identities[folder.name] = images
    if not identities:
        raise DataError(
            f"Image folder {root} holds no images in the expected layout root/<identity>/<image> "
            f"(jpg, png, bmp, gif, pgm, ...)."
        )
    return identities


def fingerprint(root: Path, identities: dict[str, list[Path]]) -> str:
    """A short hash of every image's relative path, size and modification time."""
    digest = hashlib.sha1()
    for paths in identities.values():
        for path in paths:
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


@dataclasses.dataclass(eq=False)
class IdentityFolderConfig(tfds.core.BuilderConfig):
    root: str = ""


class IdentityFolder(tfds.core.GeneratorBasedBuilder):
    """Faces from ``root/<identity>/<image>``; one builder config per folder content."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=f"Identity-labelled images from the folder {self.builder_config.root}.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.Text(),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        root = Path(self.builder_config.root)
        return {"train": self._generate_examples(root, list_identity_images(root))}

    def _generate_examples(self, root: Path, identities: dict[str, list[Path]]):
        """Decode each image once; unreadable ones are skipped and reported together at the end."""
        unreadable, num_readable = [], 0
        for identity, paths in identities.items():
            for path in paths:
                try:
                    image, image_format = decode_file(path)
                except ImageReadError as error:
                    unreadable.append(str(error))
                    continue
                file_name = path.relative_to(root).as_posix()
                if image_format in ("JPEG", "PNG") and image.mode == "RGB":
                    picture = io.BytesIO(path.read_bytes())  # stored untouched
                else:
                    picture = np.asarray(to_8bit(image).convert("RGB"), np.uint8)  # stored as PNG
                num_readable += 1
                yield file_name, {"image": picture, "label": identity, "file_name": file_name}
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
