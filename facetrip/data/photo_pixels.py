"""A photo as the 8-bit RGB pixels dlib's detectors and chip cutter read.

A decoded photo is turned upright by its EXIF orientation (phone photos) and made 8-bit
RGB: grey copied to three channels, alpha dropped, 16-bit scaled. EXIF that cannot be read
leaves the photo as it is stored.
"""

from __future__ import annotations

import functools

import numpy as np

from facetrip.data.images import exif_orientation, to_8bit


def rgb_from_image(image) -> np.ndarray:
    """A decoded PIL image, upright by its EXIF orientation, as (h, w, 3) uint8 RGB.

    The image is copied only where a step changes it (a turn, a conversion to RGB), and once
    into the array.

    Args:
        image: a decoded PIL image of any mode.

    Returns:
        (h, w, 3) uint8 RGB pixels, h and w those of the upright photo.
    """
    orientation = exif_orientation(image)  # before to_8bit, which drops the EXIF of 16-bit images
    upright = image.transpose(_turns()[orientation]) if orientation != 1 else image
    eight_bit = to_8bit(upright)
    rgb = eight_bit if eight_bit.mode == "RGB" else eight_bit.convert("RGB")
    del upright, eight_bit  # only the RGB image is held while the array is made
    return np.asarray(rgb)  # (h, w, 3)


@functools.cache
def _turns():
    """The transposition that turns a photo upright, by EXIF orientation (as PIL's ImageOps.exif_transpose)."""
    from PIL import Image

    transpose = Image.Transpose
    return {2: transpose.FLIP_LEFT_RIGHT, 3: transpose.ROTATE_180, 4: transpose.FLIP_TOP_BOTTOM, 5: transpose.TRANSPOSE,
            6: transpose.ROTATE_270, 7: transpose.TRANSVERSE, 8: transpose.ROTATE_90}


def as_rgb(pixels: np.ndarray) -> np.ndarray:
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
