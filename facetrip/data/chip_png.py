"""Face chips as PNG bytes: what the cache, prepared data sets and worker processes hand around.

A chip's PNG carries, in text chunks, how many faces the detector found, which detector
found them and the alignment version that cut it, so a chip read back says all a
:class:`~facetrip.data.chip_cutting.FaceChip` says.
"""

from __future__ import annotations

import io

import numpy as np

from facetrip.data import chip_cutting
from facetrip.data.chip_cutting import CHIP_SIZE, FaceChip
from facetrip.data.face_detection import CNN_DETECTOR, HOG_DETECTOR, NO_DETECTOR
from facetrip.data.images import ImageReadError

# PNG text chunks of a chip: how many faces the detector found survives the cache with it.
_FACES_DETECTED_KEY = "facetrip:faces_detected"
_DETECTOR_KEY = "facetrip:detector"
_ALIGNMENT_KEY = "facetrip:alignment"


def encode_chip(chip: FaceChip) -> bytes:
    """PNG bytes (RGB) of a chip; the detection count and the alignment version ride in text chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(_FACES_DETECTED_KEY, str(int(chip.faces_detected)))
    info.add_text(_DETECTOR_KEY, chip.detector)
    info.add_text(_ALIGNMENT_KEY, chip_cutting.ALIGNMENT_VERSION)
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
