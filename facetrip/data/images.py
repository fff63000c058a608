"""One image path for training and inference: bytes -> decoded pixels -> model input.

Training batches (from tfds records) and a user's photo (from a file) both go through
:func:`preprocess_encoded`, so a face is turned into a tensor the same way everywhere.
Files in formats TensorFlow cannot decode (PGM, TIFF, ...) are first re-encoded as PNG
by :func:`read_image_bytes`; JPEG and PNG bytes pass through untouched.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

# Extensions facetrip treats as images when it scans a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp")

# Formats tf.io.decode_image reads directly (PIL format names).
_TF_DECODABLE = {"JPEG", "PNG", "GIF", "BMP"}


class ImageReadError(ValueError):
    """An image file is missing, unreadable or corrupt."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def decode_file(path: str | Path):
    """Open and fully decode an image with PIL; raises :class:`ImageReadError` with the file name."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated or corrupt files fail here, not mid-epoch
            return image.copy(), image.format
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: not a readable image ({error})") from None


def image_to_png_bytes(image) -> bytes:
    """PNG bytes of a PIL image, converted to grey ('L') or RGB."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_image_bytes(path: str | Path) -> bytes:
    """Bytes of an image file that :func:`preprocess_encoded` can decode.

    JPEG / PNG / GIF / BMP files in grey or RGB are returned as they are; anything else
    PIL can read (PGM, TIFF, palette or 16-bit images, ...) is re-encoded as PNG.

    Raises:
        ImageReadError: the file is missing or not a readable image.
    """
    image, image_format = decode_file(path)
    if image_format in _TF_DECODABLE and image.mode in ("L", "RGB"):
        return Path(path).read_bytes()
    return image_to_png_bytes(image)


def preprocess_encoded(encoded, image_size: tuple[int, int], channels: int):
    """Decode image bytes into the model's input: float32 (height, width, channels) in [0, 1].

    Args:
        encoded: scalar string tensor, JPEG / PNG / GIF / BMP bytes.
        image_size: (height, width) of the output.
        channels: 1 (grey) or 3 (RGB); the image is converted either way as needed.

    Returns:
        float32 tensor (height, width, channels).
    """
    import tensorflow as tf

    pixels = tf.io.decode_image(encoded, channels=0, expand_animations=False)  # (h, w, c) uint8
    pixels = convert_channels(pixels, channels)
    resized = tf.image.resize(tf.cast(pixels, tf.float32), image_size, antialias=True)  # (H, W, C)
    resized = tf.ensure_shape(resized, [*image_size, channels])
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def convert_channels(pixels, channels: int):
    """(h, w, c) image with c in {1, 2, 3, 4} to (h, w, ``channels``); alpha is dropped."""
    import tensorflow as tf

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    present = tf.shape(pixels)[-1]
    colour = tf.cond(
        present >= 3,
        lambda: pixels[..., :3],
        lambda: tf.image.grayscale_to_rgb(pixels[..., :1]),
    )  # (h, w, 3)
    if channels == 3:
        return colour
    return tf.cond(present >= 3, lambda: tf.image.rgb_to_grayscale(colour), lambda: pixels[..., :1])


def load_image(path: str | Path, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """A user's photo as model input, through the same path as the training images."""
    return preprocess_encoded(read_image_bytes(path), image_size, channels).numpy()
