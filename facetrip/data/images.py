"""One image path for training and inference: bytes -> decoded pixels -> model input.

Training batches (from tfds records) and a user's photo (from a file) both go through
:func:`preprocess_encoded`, so a face is turned into a tensor the same way everywhere.

A user's file is read once (:func:`read_photo_file`), and those bytes are what is checked
and what is used. Only the formats of :data:`PIL_FORMATS` are opened, and only the first
frame is decoded; its size is checked before any pixel is. What TensorFlow then decodes is
that checked frame: single-frame JPEG, PNG and BMP bytes in grey or RGB pass through
untouched, anything else (PGM, TIFF, GIF, palettes, 16-bit, several frames) is re-encoded
as PNG from the decoded frame by :func:`decodable_bytes`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from facetrip.data.regular_files import FileOpenError, open_regular_file, read_at_most

# Extensions facetrip treats as images when it scans a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp")

# The PIL formats facetrip opens (those of IMAGE_EXTENSIONS; PPM covers PGM and PBM). No other
# plugin is ever asked, whatever a file's name: PIL's EPS plugin, say, would run Ghostscript.
PIL_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "PPM", "TIFF", "WEBP")

# Formats whose bytes reach tf.io.decode_image untouched (PIL format names), when they hold a
# single frame in grey or RGB. Not GIF: TensorFlow sizes a GIF's pixels to its largest frame,
# which may be far larger than the frame PIL decoded and checked.
_PASSED_TO_TENSORFLOW = {"JPEG", "PNG", "BMP"}

# Images above this many pixels are refused before decoding (10,000 x 10,000 would take
# 300 MB as RGB; a decompression bomb far more).
MAX_IMAGE_PIXELS = 100_000_000

# Files above this size are refused before they are read: 100 million pixels of 16-bit RGBA,
# uncompressed, take 800 MB.
MAX_IMAGE_FILE_BYTES = 1 << 30


class ImageReadError(ValueError):
    """An image file is missing, unreadable or corrupt."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_photo_file(path: str | Path) -> bytes:
    """The bytes of an image file, read once through one descriptor.

    The file is opened without waiting for anything and must be a regular file, so a FIFO,
    a device (/dev/zero) or a socket is refused at once instead of hanging or filling memory.
    Symbolic links are followed: a user's photo may be one.

    Args:
        path: the image file.

    Returns:
        the file's bytes, as they were when read: decode and use these, not the file again.

    Raises:
        ImageReadError: naming the file, when it is missing, a directory, not a regular file,
            empty, too large or unreadable.
    """
    path = Path(path)
    try:
        descriptor, size = open_regular_file(path)
    except FileOpenError as error:
        raise ImageReadError(f"{error}, not an image file" if error.reason == "not regular" else str(error)) from None
    try:
        if size > MAX_IMAGE_FILE_BYTES:
            raise ImageReadError(_too_large_file(path, size))
        data = read_at_most(descriptor, MAX_IMAGE_FILE_BYTES)
    except OSError as error:
        raise ImageReadError(f"{path} cannot be read ({error.strerror})") from None
    finally:
        os.close(descriptor)
    if not data:
        raise ImageReadError(f"{path} is empty (0 bytes)")
    if len(data) > MAX_IMAGE_FILE_BYTES:
        raise ImageReadError(_too_large_file(path, len(data)))
    return data


def _too_large_file(path, size: int) -> str:
    return f"{path} is too large to read ({size:,} bytes; facetrip reads image files of at most {MAX_IMAGE_FILE_BYTES:,} bytes)"


def decode_file(path: str | Path):
    """Open and fully decode an image file with PIL; raises :class:`ImageReadError` naming the file.

    The file is read once (:func:`read_photo_file`) and those bytes are decoded
    (:func:`decode_bytes`): the size is checked before any pixel is decoded.

    Args:
        path: the image file.

    Returns:
        ``(image, format)``: a decoded PIL image (the first frame) and PIL's format name (JPEG, PNG, ...).
    """
    return decode_bytes(read_photo_file(path), str(path))


def decode_bytes(data: bytes, name: str = "image bytes"):
    """Fully decode the first frame of encoded image bytes with PIL; raises :class:`ImageReadError` naming ``name``.

    Only the formats of :data:`PIL_FORMATS` are tried, whatever the bytes claim to be. The
    size is checked from the header before any pixel is decoded, and again on the decoded
    frame, so a huge image or a decompression bomb is refused without exhausting memory.

    Args:
        data: the encoded image (JPEG, PNG, PGM, ...).
        name: what to call the image in an error message (its file name).

    Returns:
        ``(image, format)``: the decoded first frame as a PIL image, and PIL's format name.
    """
    image, image_format, _ = _decode_first_frame(data, name)
    return image, image_format


def _decode_first_frame(data: bytes, name: str):
    """:func:`decode_bytes`, and whether TensorFlow may decode ``data`` as it is.

    Returns:
        ``(image, format, passes_as_is)``: ``passes_as_is`` is True for single-frame JPEG,
        PNG or BMP bytes in grey or RGB, whose pixels TensorFlow decodes exactly as PIL did.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit
            with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as image:
                _check_size(image, name)  # the header's size; a GIF's includes its first frame's extent
                # JPEG, PNG and BMP know from their headers whether they are animated; a GIF never
                # passes, so its frames (which PIL would walk to count them) are never counted.
                passes_as_is = (image.format in _PASSED_TO_TENSORFLOW and image.mode in ("L", "RGB")
                                and not getattr(image, "is_animated", False))
                image.load()  # decode now (the first frame only): truncated or corrupt files fail here, not mid-epoch
                _check_size(image, name)  # what was decoded
                return image.copy(), image.format, passes_as_is
    except ImageReadError:
        raise
    except Image.DecompressionBombError:  # PIL's own limit, checked while it reads the header
        raise ImageReadError(_too_large(name, "above PIL's own limit")) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name} is not a readable image (not {_FORMAT_NAMES})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(f"{name} is not a readable image ({str(error).splitlines()[0][:120]})") from None


# PIL_FORMATS as a reader knows them, for error messages.
_FORMAT_NAMES = "JPEG, PNG, GIF, BMP, PGM/PPM/PBM, TIFF or WebP"


def _check_size(image, name: str) -> None:
    """Raise :class:`ImageReadError` when a PIL image holds more than MAX_IMAGE_PIXELS pixels."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageReadError(_too_large(name, f"{width} x {height} pixels"))


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
    """Bytes of an image file that :func:`preprocess_encoded` can decode: :func:`decodable_bytes` of the file.

    The file is read once; what is returned comes from those bytes, never from a second read
    (a file replaced in between is not what was checked).

    Args:
        path: the image file.

    Returns:
        the file's bytes, or PNG bytes of its checked first frame.

    Raises:
        ImageReadError: the file is missing or not a readable image.
    """
    return decodable_bytes(read_photo_file(path), str(path))


def decode_passing_as_is(data: bytes, name: str = "image bytes"):
    """:func:`decode_bytes`, and whether TensorFlow may decode ``data`` exactly as PIL did.

    Returns:
        ``(image, passes_as_is)``: the decoded first frame as a PIL image; ``passes_as_is``
        is True for single-frame JPEG, PNG or BMP bytes in grey or RGB.

    Raises:
        ImageReadError: the bytes are not a readable image of a supported format, or too large.
    """
    image, _, passes_as_is = _decode_first_frame(bytes(data), name)
    return image, passes_as_is


def decodable_bytes(data: bytes, name: str = "image bytes") -> bytes:
    """Encoded image bytes as :func:`preprocess_encoded` may decode them: exactly the frame PIL checked.

    Single-frame JPEG / PNG / BMP bytes in grey or RGB are returned as they are; anything
    else PIL can read (GIF, PGM, TIFF, palette or 16-bit images, several frames, ...) is
    re-encoded as PNG from its decoded first frame.

    Args:
        data: the encoded image.
        name: what to call the image in an error message (its file name).

    Returns:
        ``data`` itself, or PNG bytes of its first frame.

    Raises:
        ImageReadError: the bytes are not a readable image of a supported format, or too large.
    """
    image, _, passes_as_is = _decode_first_frame(bytes(data), name)
    return bytes(data) if passes_as_is else image_to_png_bytes(image)


def preprocess_encoded(encoded, image_size: tuple[int, int], channels: int):
    """Decode image bytes into the model's input: float32 (height, width, channels) in [0, 1].

    Args:
        encoded: scalar string tensor, JPEG / PNG / BMP bytes (:func:`decodable_bytes`); GIF
            bytes are refused, as TensorFlow would size them to their largest frame.
        image_size: (height, width) of the output.
        channels: 1 (grey) or 3 (RGB); the image is converted either way as needed.

    Returns:
        float32 tensor (height, width, channels).

    Raises:
        tf.errors.InvalidArgumentError: ``encoded`` holds GIF bytes.
    """
    import tensorflow as tf

    # TensorFlow decodes every frame of a GIF at the size of the largest, unchecked: an 8 KB
    # file can ask for gigabytes. Every path of facetrip hands it PNG instead.
    not_gif = tf.debugging.Assert(
        tf.not_equal(tf.strings.substr(encoded, 0, 4), "GIF8"),
        ["GIF bytes reach TensorFlow's decoder: pass them through facetrip.data.images.decodable_bytes"],
    )
    with tf.control_dependencies([not_gif]):
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
    """A user's photo as model input, through the same path as the training images.

    Args:
        path: the image file.
        image_size: (height, width) of the output.
        channels: 1 (grey) or 3 (RGB).

    Returns:
        float32 (height, width, channels) in [0, 1].

    Raises:
        ImageReadError: naming the file, when it is missing or not a readable image.
    """
    return preprocess_encoded(read_image_bytes(path), image_size, channels).numpy()
