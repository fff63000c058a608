"""A photo as the 8-bit RGB pixels dlib's detectors and chip cutter read.

A decoded photo is turned upright by its EXIF orientation (phone photos) and made 8-bit
RGB: grey copied to three channels, alpha dropped, 16-bit scaled.
"""

from __future__ import annotations

import numpy as np

from facetrip.data.images import to_8bit


def rgb_from_image(image) -> np.ndarray:
    """A decoded PIL image, upright by its EXIF orientation, as (h, w, 3) uint8 RGB."""
    from PIL import ImageOps

    upright = ImageOps.exif_transpose(image)  # before to_8bit, which drops the EXIF of 16-bit images
    return np.asarray(to_8bit(upright).convert("RGB"))  # (h, w, 3)


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
