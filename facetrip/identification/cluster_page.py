"""clusters.html: a clustering as one self-contained page, to open from the file with no server.

Every image is inline (a ``data:`` URI), there is no script and no external resource; a
Content-Security-Policy allows inline images and styles only, so nothing a browser shows of
the page is fetched from anywhere. File names are user data: each is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import PurePath

THUMBNAIL = 96  # pixels on the longer side of an unclustered photo's thumbnail
THUMBNAIL_QUALITY = 80  # JPEG
MAX_SHEETS = 200  # contact sheets on the page, the largest clusters first; the rest are only in their files
MAX_APART = 300  # unclustered photos on the page; the rest are only in unclustered.csv

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
section img.sheet { max-width: 100%; height: auto; border: 1px solid #ddd; }
ul.apart { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 10px; }
ul.apart li { width: 120px; font-size: 12px; overflow-wrap: anywhere; }
ul.apart .photo { width: 96px; height: 96px; display: flex; align-items: center; justify-content: center;
                  background: #eee; color: #777; }
ul.apart img.photo { object-fit: contain; }
.reason { color: #666; } .note { color: #666; }
"""
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def thumbnail_jpeg(encoded: bytes | None, size: int = THUMBNAIL) -> bytes | None:
    """A small JPEG of an encoded photo, at most ``size`` pixels a side.

    Args:
        encoded: the photo's bytes (any format Pillow reads), or None.
        size: the longest side, in pixels.

    Returns:
        JPEG bytes; None where there is no photo or it cannot be decoded.
    """
    if encoded is None:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(encoded))) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a fraction of the size
            image.thumbnail((size, size))
            photo = image.convert("RGB")
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    except Exception:  # noqa: BLE001 - an undecodable photo gets no thumbnail, not a failed page
        return None
    return buffer.getvalue()


def _data_uri(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def cluster_page_html(sheets, apart, title: str = "facetrip cluster", max_sheets: int = MAX_SHEETS,
                      max_apart: int = MAX_APART) -> str:
    """The page: one section per cluster with its contact sheet, then the photos in no cluster.

    Args:
        sheets: ``(number, size, png_bytes)`` per cluster, largest first: the cluster's number,
            how many photos it holds, and its contact sheet (``cluster_NNN.png``).
        apart: ``(file, reason, encoded_photo_or_None)`` per photo in no cluster: its name
            (any text), why (``"no face found"``, ``"alone in its cluster"``,
            ``"unreadable: ..."``) and what the model saw of it (None for an unreadable file).
        title: the page's title and heading (any text).
        max_sheets: the most contact sheets shown; the page says how many more there are.
        max_apart: the most unclustered photos shown; the page says how many more there are.

    Returns:
        The page, as HTML text.
    """
    sheets, apart = list(sheets), list(apart)
    clustered = sum(int(size) for _, size, _ in sheets)
    lines = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(sheets):,} clusters of two or more ({clustered:,} photos); {len(apart):,} photos in no cluster.</p>"]
    for number, size, png in sheets[:max_sheets]:
        lines += [f'<section id="cluster-{int(number):03d}"><h2>Cluster {int(number)}: {int(size):,} photos</h2>',
                  f'<img class="sheet" src="{_data_uri("image/png", png)}" alt="contact sheet of cluster {int(number)}">'
                  "</section>"]
    if len(sheets) > max_sheets:
        lines.append(f'<p class="note">{len(sheets) - max_sheets:,} smaller clusters are not shown here: '
                     "see their cluster_NNN.png and clusters.csv.</p>")
    if apart:
        lines += [f'<section id="unclustered"><h2>In no cluster: {len(apart):,} photos</h2>', '<ul class="apart">']
        for name, reason, encoded in apart[:max_apart]:
            full, short = html.escape(str(name)), html.escape(PurePath(str(name)).name or str(name))
            jpeg = thumbnail_jpeg(encoded)
            photo = (f'<img class="photo" src="{_data_uri("image/jpeg", jpeg)}" alt="{short}">' if jpeg is not None
                     else '<div class="photo">no image</div>')
            lines.append(f'<li title="{full}">{photo}<div>{short}</div><div class="reason">{html.escape(str(reason))}</div></li>')
        lines.append("</ul>")
        if len(apart) > max_apart:
            lines.append(f'<p class="note">{len(apart) - max_apart:,} more are not shown here: see unclustered.csv.</p>')
        lines.append("</section>")
    lines.append("</body></html>")
    return "\n".join(lines) + "\n"
