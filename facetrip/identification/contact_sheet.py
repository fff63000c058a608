"""A contact sheet: the photos of one cluster as a grid of captioned thumbnails, as PNG bytes (Pillow)."""

from __future__ import annotations

import io
import math

THUMBNAIL = 112  # pixels a side
CAPTION = 14  # pixels under each thumbnail
MAX_PHOTOS = 60  # shown on one sheet; the title says how many more there are
_COLUMNS = 8
_BACKGROUND, _TEXT = (255, 255, 255), (40, 40, 40)


def contact_sheet_png(encoded_images, captions, title: str, max_photos: int = MAX_PHOTOS) -> bytes:
    """A grid of thumbnails, each with its caption, under a title line.

    Args:
        encoded_images: encoded photos (bytes of any format Pillow reads); one that cannot
            be decoded is drawn as a grey square.
        captions: one short text per photo (its file name), cut to the thumbnail's width.
        title: the first line of the sheet.
        max_photos: the most photos drawn; the title says how many were left out.

    Returns:
        PNG bytes.
    """
    from PIL import Image, ImageDraw, ImageFont

    encoded_images, captions = list(encoded_images), [str(caption) for caption in captions]
    shown = min(len(encoded_images), max_photos)
    columns = max(1, min(_COLUMNS, shown))
    rows = max(1, math.ceil(shown / columns))
    font = ImageFont.load_default()
    header = 22
    cell_height = THUMBNAIL + CAPTION
    sheet = Image.new("RGB", (columns * THUMBNAIL, header + rows * cell_height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    more = f" (first {shown} shown)" if shown < len(encoded_images) else ""
    draw.text((4, 4), _fitted(draw, title + more, columns * THUMBNAIL - 8, font), fill=_TEXT, font=font)
    for position in range(shown):
        x, y = (position % columns) * THUMBNAIL, header + (position // columns) * cell_height
        sheet.paste(_thumbnail(encoded_images[position]), (x, y))
        draw.text((x + 2, y + THUMBNAIL + 1), _fitted(draw, captions[position], THUMBNAIL - 4, font), fill=_TEXT, font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def _thumbnail(encoded: bytes):
    """A THUMBNAIL-square RGB thumbnail of an encoded photo, letterboxed; grey if it cannot be decoded."""
    from PIL import Image

    square = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (200, 200, 200))
    try:
        with Image.open(io.BytesIO(bytes(encoded))) as image:
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            photo = image.convert("RGB")
    except Exception:  # noqa: BLE001 - any undecodable photo is a grey square, not a failed sheet
        return square
    square.paste(photo, ((THUMBNAIL - photo.width) // 2, (THUMBNAIL - photo.height) // 2))
    return square


def _fitted(draw, text: str, width: int, font) -> str:
    """``text`` cut (with an ellipsis) to at most ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
