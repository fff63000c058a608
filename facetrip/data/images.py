"""One image path for training and inference: bytes -> decoded pixels -> model input.

Training batches (from tfds records) and a user's photo (from a file) both go through
:func:`preprocess_encoded`, so a face is turned into a tensor the same way everywhere.
Files in formats TensorFlow cannot decode (PGM, TIFF, ...) are first re-encoded as PNG
by :func:`read_image_bytes`; JPEG and PNG bytes pass through untouched.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

# Extensions facetrip treats as images when it scans a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp")

# Formats tf.io.decode_image reads directly (PIL format names).
_TF_DECODABLE = {"JPEG", "PNG", "GIF", "BMP"}

# Images above this many pixels are refused before decoding (10,000 x 10,000 would take
# 300 MB as RGB; a decompression bomb far more).
MAX_IMAGE_PIXELS = 100_000_000


class ImageReadError(ValueError):
    """An image file is missing, unreadable or corrupt."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def decode_file(path: str | Path):
    """Open and fully decode an image with PIL; raises :class:`ImageReadError` naming the file.

    The size is checked from the header before any pixel is decoded, so a huge image or a
    decompression bomb is refused without exhausting memory.

    Returns:
        ``(image, format)``: a decoded PIL image and PIL's format name (JPEG, PNG, ...).
    """
    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"{path} is a directory, not an image file")
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path} is empty (0 bytes)")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageReadError(f"{path} cannot be read ({error.strerror})") from None
    return decode_bytes(data, str(path))


def decode_bytes(data: bytes, name: str = "image bytes"):
    """Fully decode encoded image bytes with PIL; raises :class:`ImageReadError` naming ``name``.

    Args:
        data: the encoded image (JPEG, PNG, PGM, ...).
        name: what to call the image in an error message (its file name).

    Returns:
        ``(image, format)``: a decoded PIL image and PIL's format name.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ImageReadError(_too_large(name, f"{width} x {height} pixels"))
                image.load()  # decode now: truncated or corrupt files fail here, not mid-epoch
                return image.copy(), image.format
    except ImageReadError:
        raise
    except Image.DecompressionBombError:  # PIL's own limit, checked while it reads the header
        raise ImageReadError(_too_large(name, "above PIL's own limit")) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{name} is not a readable image ({str(error).splitlines()[0][:120]})") from None


def _too_large(path, size: str) -> str:
    return f"{path} is too large to decode ({size}; facetrip decodes at most {MAX_IMAGE_PIXELS:,} pixels): resize it first"


def to_8bit(image):
    """Grey or RGB 8-bit PIL image: 16/32-bit grey is scaled to 0..255, alpha and palettes are dropped."""
    from PIL import Image

    if image.mode in ("L", "RGB"):
        return image
    if image.mode.startswith("I") or image.mode == "F":
        pixels = np.asarray(image, np.float64)
        peak = 65535.0 if pixels.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(pixels / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("1", "LA"):
        return image.convert("L")
    return image.convert("RGB")  # RGBA, CMYK, palettes, ...


def image_to_png_bytes(image) -> bytes:
    """PNG bytes of a PIL image, converted to 8-bit grey ('L') or RGB."""
    buffer = io.BytesIO()
    to_8bit(image).save(buffer, format="PNG")
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
