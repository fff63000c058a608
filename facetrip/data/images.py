"""One image path for training and inference: bytes -> decoded pixels -> model input.

Training batches (from tfds records) and a user's photo (from a file) both go through
:func:`preprocess_encoded`, so a face is turned into a tensor the same way everywhere.

A user's file is read once (:func:`read_photo_file`), and those bytes are what is checked
and what is used. Only the formats of :data:`PIL_FORMATS` are opened, and only the first
frame is decoded; its size is checked before any pixel is. A photo longer than
:data:`WORKING_MAX_SIDE` is decoded reduced where its format allows (JPEG) and resized to
fit right after decoding; one that only decodes at its full size is refused when that would
take more than :data:`MAX_FULL_DECODE_BYTES`. What TensorFlow then decodes is that checked
frame: single-frame JPEG, PNG and BMP bytes in grey or RGB within the working size pass
through untouched, anything else (PGM, TIFF, GIF, palettes, 16-bit, several frames, larger
photos) is re-encoded as PNG from the decoded frame by :func:`decodable_bytes`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from facetrip.untrusted_files import FileOpenError, open_regular_file, read_at_most

# Extensions facetrip treats as images when it scans a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp")

# The PIL formats facetrip opens (those of IMAGE_EXTENSIONS; PPM covers PGM and PBM). No other
# plugin is ever asked, whatever a file's name: PIL's EPS plugin, say, would run Ghostscript.
PIL_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "PPM", "TIFF", "WEBP")

# Formats whose bytes reach tf.io.decode_image untouched (PIL format names), when they hold a
# single frame in grey or RGB. Not GIF: TensorFlow sizes a GIF's pixels to its largest frame,
# which may be far larger than the frame PIL decoded and checked.
_PASSED_TO_TENSORFLOW = {"JPEG", "PNG", "BMP"}

# Images above this many pixels are refused before decoding, whatever their format (a
# decompression bomb declares billions).
MAX_IMAGE_PIXELS = 100_000_000

# Photos are worked on (their faces found and cut, or resized to a model's input) at most
# this many pixels on their longer side. A longer photo is decoded reduced where its format
# allows (JPEG: libjpeg decodes at 1/2, 1/4 or 1/8 of the size) and resized to fit right
# after decoding (Lanczos); photos within it are decoded as they are. The face detector
# searches a photo at most 1000 pixels long, where it finds faces of 80 pixels and up, and a
# chip holds the face in about 100 of its 150 pixels: any face found in a longer photo keeps
# at least 160 pixels at 2048, so the chip loses nothing it would show.
WORKING_MAX_SIDE = 2048

# A photo decoded at its full size before it is reduced is refused when decoding it would take
# more than this (bytes a pixel below): 50.3 megapixels (8192 x 6144, a 50-megapixel phone
# photo) of RGB or grey PNG, TIFF, BMP or PGM, 40 of palette PNG or GIF, 12.6 of WebP, 67 of
# progressive JPEG at 4:2:0 chroma subsampling and 33.5 at 4:4:4. Measured with `verify` on
# the pretrained network, a 50-megapixel PNG peaks at 1.22 times an ordinary photo's memory.
MAX_FULL_DECODE_BYTES = 192 << 20

# What decoding takes a pixel at full size, measured with Pillow 13: PIL holds a frame in 4
# bytes a pixel (RGB too), a palette frame in 1 and then 4 once converted to RGB to be
# resized; Pillow's WebP decoder holds the frame 4 times over (15.4 measured). A baseline
# JPEG decoded reduced takes nothing at full size; a progressive one (or one whose first scan
# lacks a colour component) holds every DCT coefficient, 2 bytes each (3 bytes a pixel at
# 4:2:0 chroma subsampling, 6 at 4:4:4).
_FULL_DECODE_BYTES_PER_PIXEL = {"WEBP": 16}
_PALETTE_MODES = ("P", "PA")
_JPEG_COEFFICIENT_BYTES = 2

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
    frame, so a huge image or a decompression bomb is refused without exhausting memory. A
    frame longer than :data:`WORKING_MAX_SIDE` comes reduced to it (:func:`_decode_first_frame`).

    Args:
        data: the encoded image (JPEG, PNG, PGM, ...).
        name: what to call the image in an error message (its file name).

    Returns:
        ``(image, format)``: the decoded first frame as a PIL image, at most WORKING_MAX_SIDE
        pixels on its longer side (its EXIF kept), and PIL's format name.
    """
    image, image_format, _ = _decode_first_frame(data, name)
    return image, image_format


def _decode_first_frame(data: bytes, name: str):
    """:func:`decode_bytes`, and whether TensorFlow may decode ``data`` as it is.

    A frame within :data:`WORKING_MAX_SIDE` is decoded as it is. A longer one is decoded
    reduced where the format allows (:func:`_prepare_decoding`) and resized to fit right
    after decoding (:func:`_within_working_size`), the full-size frame dropped at once.

    Returns:
        ``(image, format, passes_as_is)``: ``passes_as_is`` is True for single-frame JPEG,
        PNG or BMP bytes in grey or RGB within the working size, whose pixels TensorFlow
        decodes exactly as PIL did.
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
                if _prepare_decoding(image, data, name):  # the decoder was asked for a reduced frame
                    passes_as_is = False
                image.load()  # decode now (the first frame only): truncated or corrupt files fail here, not mid-epoch
                _check_size(image, name)  # what was decoded
                image_format = image.format
                working = _within_working_size(image)
                if working is image:
                    return image.copy(), image_format, passes_as_is
                image.close()  # the full-size frame goes before anything else is done
                return working, image_format, False
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


def _prepare_decoding(image, data: bytes, name: str) -> bool:
    """Before a frame longer than :data:`WORKING_MAX_SIDE` is decoded: ask for it reduced, or refuse it.

    A JPEG is asked of libjpeg at the largest of 1/2, 1/4 and 1/8 of its size that brings it
    within the working size (1/8 when none does). A frame that decodes at its full size is
    refused when that takes more than :data:`MAX_FULL_DECODE_BYTES`.

    Args:
        image: the PIL image, opened and not yet decoded.
        data: its encoded bytes.
        name: what to call the image in an error message.

    Returns:
        whether the decoder will deliver the frame reduced.

    Raises:
        ImageReadError: decoding the frame at its full size would take too much memory.
    """
    width, height = image.size
    longer = max(width, height)
    if longer <= WORKING_MAX_SIDE:
        return False
    reduced = False
    if image.format == "JPEG":
        scale = next((scale for scale in (2, 4, 8) if -(-longer // scale) <= WORKING_MAX_SIDE), 8)
        reduced = image.draft(image.mode, (max(1, width // scale), max(1, height // scale))) is not None
    bytes_per_pixel = _full_decode_bytes_per_pixel(image, data, reduced)
    if width * height * bytes_per_pixel > MAX_FULL_DECODE_BYTES:
        kind = "progressive or multi-scan JPEG" if reduced else image.format
        limit = int(MAX_FULL_DECODE_BYTES // bytes_per_pixel)
        raise ImageReadError(f"{name} is too large to decode ({width} x {height} pixels; facetrip decodes {kind} images "
                             f"of at most {limit:,} pixels, baseline JPEG of at most {MAX_IMAGE_PIXELS:,}): resize it first")
    return reduced


def _full_decode_bytes_per_pixel(image, data: bytes, reduced: bool) -> float:
    """Bytes a pixel of the frame at its full size that decoding ``image`` holds at once (see _FULL_DECODE_BYTES_PER_PIXEL)."""
    if not reduced:
        if image.mode in _PALETTE_MODES:
            return 5  # the palette frame, and its RGB copy to resize
        return _FULL_DECODE_BYTES_PER_PIXEL.get(image.format, 4)
    if not image.info.get("progressive") and _first_jpeg_scan_holds_every_component(data):
        return 0  # libjpeg decodes a row of blocks at a time
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * 3  # (component, horizontal, vertical sampling, table)
    largest = max(horizontal for _, horizontal, _, _ in layers) * max(vertical for _, _, vertical, _ in layers)
    return _JPEG_COEFFICIENT_BYTES * sum(horizontal * vertical for _, horizontal, vertical, _ in layers) / largest


# JPEG markers that start a frame (SOF0-SOF15 but DHT, JPG and DAC) and a scan (SOS).
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SCAN_MARKER = 0xDA


def _first_jpeg_scan_holds_every_component(data: bytes) -> bool:
    """Whether a JPEG's first scan holds all its colour components, read from its markers.

    A scan holding only some (or a progressive JPEG) makes libjpeg keep every coefficient of
    the frame until the last scan.
    """
    position, components = 2, None  # after the start-of-image marker
    while position + 4 < len(data):
        if data[position] != 0xFF:
            return False  # not a marker where one belongs: assume the worst
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
            continue
        if marker in _JPEG_FRAME_MARKERS and position + 9 < len(data):
            components = data[position + 9]
        if marker == _JPEG_SCAN_MARKER:
            return components is not None and data[position + 4] >= components
        position += 2 + int.from_bytes(data[position + 2: position + 4], "big")
    return False


# Modes PIL reduces by a whole factor (box averages) as they are: a frame of these is reduced
# so first, then resampled (Lanczos) by less than 2, holding a far smaller intermediate image
# than Lanczos all the way down (RGBA and LA would be premultiplied in a full-size copy first;
# 16-bit grey cannot be reduced so).
_REDUCED_IN_WHOLE_FACTORS = ("L", "RGB", "CMYK", "I", "F")


def _within_working_size(image):
    """A decoded frame resized so that its longer side is WORKING_MAX_SIDE; the frame itself when it fits.

    Reduced by the whole factor first where its mode allows (box averages), then resampled
    (Lanczos). A palette or 1-bit frame is made 8-bit (:func:`to_8bit`) first, to be
    resampled. The result keeps the frame's ``info`` (its EXIF orientation with it).
    """
    from PIL import Image

    width, height = image.size
    longer = max(width, height)
    if longer <= WORKING_MAX_SIDE:
        return image
    scale = WORKING_MAX_SIDE / longer
    size = (max(1, min(WORKING_MAX_SIDE, round(width * scale))), max(1, min(WORKING_MAX_SIDE, round(height * scale))))
    source = to_8bit(image) if image.mode in (*_PALETTE_MODES, "1") else image
    reducing_gap = 1.0 if source.mode in _REDUCED_IN_WHOLE_FACTORS else None
    resized = source.resize(size, Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    resized.info = dict(image.info)
    return resized


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


def exif_orientation(image) -> int:
    """A PIL image's EXIF orientation, 1 to 8: 1 (as stored) when it has none, or EXIF that cannot be read.

    Args:
        image: a PIL image (its EXIF, or its XMP orientation, is read).

    Returns:
        the orientation tag's value (6: turn 90 degrees clockwise to view, ...).
    """
    from PIL import ExifTags

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns of corrupt EXIF, and reads what it can
        try:
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        except Exception:  # noqa: BLE001 - EXIF that cannot be read says nothing of the orientation
            return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def image_to_png_bytes(image) -> bytes:
    """PNG bytes of a PIL image, converted to 8-bit grey ('L') or RGB, with its EXIF orientation.

    The orientation (a phone photo's "turn me upright") is all of its EXIF the PNG keeps: a
    face chip cut from the PNG is the one cut from the photo.
    """
    from PIL import ExifTags, Image

    orientation = exif_orientation(image)
    options = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        options["exif"] = exif
    buffer = io.BytesIO()
    to_8bit(image).save(buffer, format="PNG", **options)
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

    Single-frame JPEG / PNG / BMP bytes in grey or RGB within :data:`WORKING_MAX_SIDE` are
    returned as they are; anything else PIL can read (GIF, PGM, TIFF, palette or 16-bit
    images, several frames, longer photos, ...) is re-encoded as PNG from its decoded first
    frame, reduced to the working size, with its EXIF orientation (:func:`image_to_png_bytes`).

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
