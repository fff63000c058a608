"""What a tfds builder of local files says while it prepares: facetrip's words, not a download's.

tfds prints "Downloading and preparing dataset Unknown size (download: Unknown size, ...)"
before preparing any data set, and "Dataset ... downloaded and prepared to ..." after it,
even when nothing is downloaded. The builders of the embedded ORL faces and of a user's
folder say what they do instead, through facetrip's logger:

    Preparing orl_faces (400 images) ...
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class OfflinePreparationMessages:
    """Mixin for a ``tfds.core.GeneratorBasedBuilder`` that reads local files only.

    The builder defines :meth:`image_count`, the number of images it will prepare.
    """

    def image_count(self) -> int | None:
        """The number of images the builder prepares (None when unknown)."""
        return None

    def _log_download_bytes(self) -> None:  # tfds: called once, before preparing
        count = self.image_count()
        size = f" ({count:,} images)" if count is not None else ""
        logger.info("Preparing %s%s ...", self.name, size)
        logger.debug("Preparing into %s", self.data_dir)

    def _log_download_done(self) -> None:  # tfds: called once, after preparing
        logger.debug("Prepared %s in %s.", self.name, self.data_dir)
