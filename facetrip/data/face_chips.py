"""From a user's photo to the face chip dlib's face network reads: one path, cached.

Every command that touches a photo (train, evaluate, embed, verify, mine) turns it into a
150 x 150 RGB face chip here, and only the chip meets the network:

1. decode the photo with PIL, at its own resolution or, when it is longer than
   :data:`~facetrip.data.images.WORKING_MAX_SIDE`, reduced to it (JPEG decoded reduced,
   other formats resized right after decoding, too large ones refused:
   :mod:`facetrip.data.images`), turn it upright by its EXIF orientation and make it 8-bit
   RGB (:mod:`facetrip.data.photo_pixels`);
2. find its faces with dlib's HOG detector, coarse to fine, and with dlib's CNN detector
   where HOG finds none (:mod:`facetrip.data.face_detection`);
3. of several faces take the largest one holding the photo's centre, else the largest, and
   count them all; when neither detector finds a face, the whole image is the face box;
4. place dlib's five landmarks in that box on the decoded photo and cut the chip with
   ``dlib.get_face_chip(rgb, shape, size=150, padding=0.25)``
   (:mod:`facetrip.data.chip_cutting`).

Chips travel as PNG (:mod:`facetrip.data.chip_png`) and are cached per photo, keyed by its
bytes, on disk and in memory (:mod:`facetrip.data.chip_cache`). :func:`chip_from_file` and
:func:`chip_from_encoded` give the chip of one photo; :func:`chip_faces` aligns a whole
:class:`~facetrip.data.sources.FaceImages`, spreading many uncached photos over worker
processes (:mod:`facetrip.data.chip_workers`). None of these modules loads TensorFlow.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facetrip.data.chip_cache import cached_chip_png, chip_cache_dir, photo_key, store_chip_png
from facetrip.data.chip_cutting import ALIGNMENT_VERSION, CHIP_PADDING, CHIP_SIZE, FaceChip, chip_from_pixels
from facetrip.data.chip_png import decode_chip, detection_of, encode_chip, faces_detected_in
from facetrip.data.chip_workers import POOL_THRESHOLD, ChipJob, compute_chip_pngs
from facetrip.data.face_detection import CNN_DETECTOR
from facetrip.data.images import decode_bytes, read_photo_file
from facetrip.data.photo_pixels import rgb_from_image
from facetrip.data.sources import FaceImages

__all__ = [
    "ALIGNMENT_VERSION",
    "CHIP_PADDING",
    "CHIP_SIZE",
    "ChipReport",
    "FaceChip",
    "chip_cache_dir",
    "chip_faces",
    "chip_from_encoded",
    "chip_from_file",
    "chip_from_pixels",
    "decode_chip",
    "encode_chip",
    "faces_detected_in",
    "rgb_from_image",
]


@dataclasses.dataclass
class ChipReport:
    """What aligning a set of photos found.

    Attributes:
        images: photos aligned.
        no_face: file names of photos without a detected face (the whole image was used).
        several_faces: file names of photos with several faces (the central or largest was used).
        from_cache: photos whose chip came from the cache.
        found_by_cnn: file names of photos whose face only the CNN detector found.
    """

    images: int
    no_face: list[str]
    several_faces: list[str]
    from_cache: int
    found_by_cnn: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. "400 photos aligned: 3 faces found only by the CNN detector, 10 without a detected face, ..."."""
        return (
            f"{_count(self.images, 'photo')} aligned: {len(self.found_by_cnn)} faces found only by the CNN detector, "
            f"{len(self.no_face)} without a detected face (whole image used), "
            f"{len(self.several_faces)} with several faces (the one at the centre, else the largest, used); "
            f"{self.from_cache} from the cache"
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _chip_cached(data: bytes, decode_rgb: Callable[[], np.ndarray]) -> FaceChip:
    """The chip of a photo given as its bytes, from the cache or computed (and then cached)."""
    key = photo_key(data)
    png = cached_chip_png(key)
    if png is not None:
        return decode_chip(png)
    chip = chip_from_pixels(decode_rgb())
    store_chip_png(key, encode_chip(chip))
    return chip


def chip_from_encoded(data: bytes) -> FaceChip:
    """The face chip of an encoded photo (JPEG, PNG, PGM, ... bytes), cached by its bytes.

    Raises:
        ImageReadError: the bytes are not a readable image.
    """
    data = bytes(data)
    return _chip_cached(data, lambda: rgb_from_image(decode_bytes(data)[0]))


def chip_from_file(path: str | Path) -> FaceChip:
    """The face chip of a photo file, cached by the file's bytes.

    Raises:
        ImageReadError: naming the file, when it is missing, not a regular file, empty,
            corrupt, of an unsupported format or too large.
    """
    path = Path(path)
    # Raises, saying what is wrong with the file (missing, a folder, a FIFO, empty, unreadable).
    data = read_photo_file(path)
    # Decoded from the bytes read once: the chip is cached under the bytes it was cut from.
    return _chip_cached(data, lambda: rgb_from_image(decode_bytes(data, str(path))[0]))


def chip_faces(
    faces: FaceImages,
    progress: Callable[[int, int], None] | None = None,
    pool_threshold: int = POOL_THRESHOLD,
) -> tuple[FaceImages, ChipReport]:
    """Every photo of a set turned into its face chip.

    Args:
        faces: the photos (encoded bytes) with their labels and file names.
        progress: called as ``progress(done, total)`` while photos are aligned.
        pool_threshold: above this many photos missing from the cache, they are aligned
            in worker processes (at most ``MAX_POOL_WORKERS``). Workers are spawned, and
            each imports the calling script as Python's spawn does: a script must guard its
            work with ``if __name__ == "__main__":``, and what it imports at its top level
            (TensorFlow, say) each worker imports too.

    Returns:
        ``(chips, report)``: the same images in the same order, labels and file names, now
        PNG face chips (``channels=3``), and what the detector found.

    Raises:
        ImageReadError: a photo is not a readable image (named by its file name).
    """
    photos = [bytes(data) for data in faces.encoded]
    names = [str(name) for name in faces.file_names]
    keys = [photo_key(data) for data in photos]
    pngs: list[bytes | None] = [cached_chip_png(key) for key in keys]
    from_cache = sum(png is not None for png in pngs)
    done = from_cache

    first_of_key: dict[str, int] = {}  # a photo that appears twice is aligned once
    for index, (key, png) in enumerate(zip(keys, pngs)):
        if png is None:
            first_of_key.setdefault(key, index)
    copies = collections.Counter(key for key, png in zip(keys, pngs) if png is None)
    jobs: list[ChipJob] = [(index, names[index], photos[index]) for index in first_of_key.values()]
    if progress is not None:
        progress(done, len(photos))

    def finished(index: int, png: bytes) -> None:
        nonlocal done
        store_chip_png(keys[index], png)
        done += copies[keys[index]]
        if progress is not None:
            progress(done, len(photos))

    computed = compute_chip_pngs(jobs, pool_threshold, finished)
    for index, key in enumerate(keys):
        if pngs[index] is None:
            pngs[index] = computed[first_of_key[key]]

    detections = [detection_of(png) for png in pngs]
    report = ChipReport(
        images=len(photos),
        no_face=[name for name, (count, _) in zip(names, detections) if count == 0],
        several_faces=[name for name, (count, _) in zip(names, detections) if count > 1],
        from_cache=from_cache,
        found_by_cnn=[name for name, (_, detector) in zip(names, detections) if detector == CNN_DETECTOR],
    )
    encoded = np.empty(len(pngs), dtype=object)
    encoded[:] = pngs
    return dataclasses.replace(faces, encoded=encoded, channels=3), report
