"""The report of an evaluation as one self-contained HTML page: numbers, curves and the photos behind the errors.

:func:`report_page_html` turns what :func:`facetrip.evaluation.report.evaluate_run` computed
(the report written to ``metrics.json`` and the :class:`EvaluatedPairs`) into a page that
opens from a file: styles are inline, every image is a ``data:`` URI (PNG plots, JPEG chips
and thumbnails), and nothing is loaded from the network. Text from files and photos (names,
paths) is HTML-escaped. The page shows, in order:

- what was evaluated (run, model, training source, data, threshold rule) and the table the
  terminal prints;
- the ROC and DET curves with the run's threshold and the TAR at each target FAR marked, and
  histograms of same-person and different-person distances with the threshold;
- the saved threshold's false accept rate against its target, with the calibration interval;
- the hardest errors at the run's threshold (:func:`facetrip.evaluation.metrics.hardest_errors`):
  the two face chips the model read, thumbnails of the photos, names, distance and paths;
- the identities with the most false rejects and the pairs of people confused most often;
- the photos where no face was found, and those with several;
- training curves (from ``metrics.csv``) and the weight-interpolation choice, drawn by the caller.

Nothing here reads files: the caller hands in images as encoded bytes and plots as PNG bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from typing import Any, Iterable, Sequence

import numpy as np

from facetrip.evaluation.metrics import FAR_TARGETS, far_key, hardest_errors, rates_at_threshold, roc

# Pairs shown of each kind of error, and photos of each detection problem.
DEFAULT_HARDEST_ERRORS = 24
MAX_PROBLEM_PHOTOS = 48
THUMBNAIL_SIDE = 120
CHIP_SIDE = 112
_JPEG_QUALITY = 82


@dataclasses.dataclass
class EvaluatedPairs:
    """The pairs of an evaluation with what the report page needs to show them.

    Attributes:
        distances: (M,) the model's pair distances.
        same: (M,) bool, whether the two images show one person.
        first, second: (M,) int indices of each pair's images into the arrays below.
        identity_of: (U,) identity name of each image.
        file_names: (U,) where each image came from.
        model_images: (U,) encoded images as the model read them (face chips), or None.
        photos: (U,) encoded images as loaded (the photos before alignment).
        no_face: file names of the photos where no face was found.
        several_faces: file names of the photos with several faces.
        photo_folder: the folder the file names are relative to, when ``photos`` are not the
            photos themselves (a prepared set holds chips): the shown photos are read from it.
    """

    distances: np.ndarray
    same: np.ndarray
    first: np.ndarray
    second: np.ndarray
    identity_of: np.ndarray
    file_names: np.ndarray
    model_images: np.ndarray | None
    photos: np.ndarray
    no_face: list[str] = dataclasses.field(default_factory=list)
    several_faces: list[str] = dataclasses.field(default_factory=list)
    photo_folder: str | None = None

    def photo(self, position: int) -> bytes:
        """The encoded photo of image ``position``: read from :attr:`photo_folder` when there is one and it holds it."""
        if self.photo_folder is not None:
            from pathlib import PurePath

            from facetrip.data.images import ImageReadError, read_photo_file

            name = PurePath(str(self.file_names[position]))
            if not name.is_absolute() and ".." not in name.parts:  # a name inside the folder, from the set's index
                try:
                    return read_photo_file(PurePath(self.photo_folder).joinpath(name))
                except ImageReadError:  # moved or changed since the set was prepared: show what the set holds
                    pass
        return bytes(self.photos[position])


def decision_threshold(report: dict[str, Any]) -> tuple[float, str]:
    """The threshold the report's errors are counted at, and its rule in words.

    The run's saved threshold when it has one, else the equal-error threshold of these pairs.

    Args:
        report: an evaluation report (``metrics.json``).

    Returns:
        ``(threshold, rule)``.
    """
    saved = report.get("threshold")
    if saved is not None:
        return float(saved["threshold"]), f"the run's threshold ({saved['rule']})"
    return float(report["model"]["eer_threshold"]), "the equal-error threshold of these pairs (the run saved none)"


def hardest_error_rows(pairs: EvaluatedPairs, threshold: float, count: int = DEFAULT_HARDEST_ERRORS) -> dict[str, list[dict]]:
    """The hardest false accepts and false rejects at a threshold, as rows of names, files and distances.

    Args:
        pairs: the evaluated pairs.
        threshold: accept a pair when its distance is at most this.
        count: most pairs of each kind.

    Returns:
        ``{"false_accepts": [...], "false_rejects": [...]}``, each row ``{"pair", "distance",
        "identities": [a, b], "files": [a, b]}`` (``pair``: the index into the pairs), the
        most extreme first.
    """
    false_accepts, false_rejects = hardest_errors(pairs.distances, pairs.same, threshold, count)

    def rows(indices: np.ndarray) -> list[dict]:
        return [{
            "pair": int(index),
            "distance": float(pairs.distances[index]),
            "identities": [str(pairs.identity_of[pairs.first[index]]), str(pairs.identity_of[pairs.second[index]])],
            "files": [str(pairs.file_names[pairs.first[index]]), str(pairs.file_names[pairs.second[index]])],
        } for index in indices]

    return {"false_accepts": rows(false_accepts), "false_rejects": rows(false_rejects)}


# ----------------------------------------------------------------------------- images


def png_data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def jpeg_thumbnail_uri(encoded: bytes, side: int = THUMBNAIL_SIDE, name: str = "image") -> str | None:
    """An encoded image shrunk to fit ``side`` pixels, upright (EXIF), as a JPEG ``data:`` URI.

    Args:
        encoded: the image's bytes (any format facetrip reads).
        side: the longer side of the thumbnail, at most.
        name: what to call the image if it cannot be decoded.

    Returns:
        The URI, or None when the bytes are not an image facetrip can decode.
    """
    from PIL import ImageOps

    from facetrip.data.images import ImageReadError, decode_bytes

    try:
        image, _ = decode_bytes(bytes(encoded), name)  # size-checked before any pixel is decoded
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
        if image.mode == "L":
            image = image.convert("RGB")
        image.thumbnail((side, side))
    except (ImageReadError, OSError, ValueError):
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_tag(uri: str | None, alt: str, css_class: str = "") -> str:
    if uri is None:
        return f'<span class="missing {css_class}">not readable</span>'
    return f'<img class="{css_class}" src="{uri}" alt="{html.escape(alt)}">'


# ----------------------------------------------------------------------------- sections


def _percent(rate: float | None) -> str:
    if rate is None or (isinstance(rate, float) and not np.isfinite(rate)):
        return "-"
    return f"{rate * 100:.1f}%" if rate * 100 >= 0.1 or rate == 0 else f"{rate * 100:.2g}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    """An HTML table; cells are already escaped HTML."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if column >= numeric_from else ""}">{cell}</td>' for column, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""  # a two-column list of facts has no header
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _escaped(value: Any) -> str:
    return html.escape(str(value))


def _what_was_evaluated(report: dict, metadata: dict, threshold: float, rule: str) -> str:
    pairs = report["pairs"]
    model = (f"{metadata.get('backbone', '?')}, {metadata.get('embedding_dim', '?')}-d embeddings, "
             f"{report['image_size'][0]}x{report['image_size'][1]}x{report['channels']} input, {report['metric']} distance"
             + (", flip added at test time" if metadata.get("flip_tta") else ""))
    saved = report.get("threshold") or {}
    target = saved.get("target_far")
    rows = [
        ("Run", _escaped(report["run"])),
        ("Model", _escaped(model)),
        ("Training source", _escaped(report.get("training_source", "?"))),
        ("Data", _escaped(f"{report['source']}: {pairs['same']:,} same + {pairs['different']:,} different pairs, "
                          f"{pairs['images']:,} images" + (f" of {pairs['identities']:,} identities" if pairs["identities"] else "")
                          + f"; {pairs['how']}")),
        ("Pairs file", _escaped(pairs["file"] or ("none (pairs of the evaluated identities)" if pairs["identities"]
                                                  else "none (the data set's own pairs)"))),
        ("Threshold", _escaped(f"{threshold:.4f}, {rule}" + (f"; target FAR {_percent(target)}" if target is not None else ""))),
        ("facetrip", _escaped(report.get("facetrip_version", "?"))),
    ]
    return "<h2>What was evaluated</h2>" + _table(["", ""], rows, numeric_from=9)


def _results_table(report: dict) -> str:
    header = ["", "AUC", "EER", *(f"TAR at FAR {target * 100:g}%" for target in FAR_TARGETS),
              f"{report['model']['accuracy']['num_folds']}-fold accuracy"]
    rows = []
    for label, metrics in [("model", report["model"]), *report.get("baselines", {}).items()]:
        accuracy = metrics["accuracy"]
        rows.append([_escaped(label), f"{metrics['auc']:.4f}", _percent(metrics["eer"]),
                     *(f"{metrics[far_key(target)]:.3f}" for target in FAR_TARGETS),
                     f"{_percent(accuracy['mean'])} &plusmn; {_percent(accuracy['std'])}"])
    note = ""
    if report.get("baselines_skipped"):
        note = f"<p class=\"note\">Baselines skipped: {_escaped(report['baselines_skipped'])}.</p>"
    return "<h2>Results</h2>" + _table(header, rows) + note


def _curves(report: dict, pairs: EvaluatedPairs, threshold: float) -> str:
    from facetrip.evaluation.plots import distance_histograms_png, roc_and_det_png

    false_accept, true_accept, _ = roc(pairs.distances, pairs.same)
    points = {}
    at_threshold = rates_at_threshold(pairs.distances, pairs.same, threshold)
    points[f"threshold {threshold:.4f}"] = (at_threshold["far"], 1.0 - at_threshold["frr"])
    for target in FAR_TARGETS:
        key = far_key(target) + "_threshold"
        if report["model"].get(key) is not None and np.isfinite(report["model"][key]):
            rates = rates_at_threshold(pairs.distances, pairs.same, report["model"][key])
            points[f"TAR at FAR <= {target * 100:g}%"] = (rates["far"], 1.0 - rates["frr"])
    curves = png_data_uri(roc_and_det_png(false_accept, true_accept, points))
    histograms = png_data_uri(distance_histograms_png(pairs.distances, pairs.same, threshold))
    return ("<h2>Curves</h2>" + _image_tag(curves, "ROC and DET curves", "plot")
            + _image_tag(histograms, "distance histograms", "plot"))


def _threshold_section(report: dict) -> str:
    saved = report.get("threshold")
    if saved is None:
        return ("<h2>The saved threshold</h2><p>The run saved no threshold: errors below are counted at the "
                "equal-error threshold of these pairs.</p>")
    rows = [
        ("threshold", f"{saved['threshold']:.4f}"),
        ("rule", _escaped(saved["rule"])),
        ("FAR on these pairs", _percent(saved["far"])),
        ("target FAR", _percent(saved.get("target_far"))),
        ("FAR on the calibration pairs", _percent(saved.get("calibration_far"))),
    ]
    interval = saved.get("calibration_far_interval")
    if interval is not None:
        rows.append(("95% interval of the calibration FAR", f"{_percent(interval[0])} &ndash; {_percent(interval[1])}"))
        verdict = "yes" if saved.get("far_within_calibration_interval") else "no"
        rows.append(("FAR here within that interval", verdict))
    rows += [("FRR on these pairs", _percent(saved["frr"])), ("accuracy on these pairs", _percent(saved["accuracy"]))]
    return "<h2>The saved threshold</h2>" + _table(["", ""], rows, numeric_from=1)


def _error_cards(rows: list[dict], pairs: EvaluatedPairs, what: str, names_people: bool = True) -> str:
    if not rows:
        return f"<p>No {what} at this threshold.</p>"
    cards = []
    for row in rows:
        index = row["pair"]
        images = []
        for position in (pairs.first[index], pairs.second[index]):
            name = str(pairs.file_names[position])
            chip, photo_bytes, shown = None, pairs.photo(position), True
            if pairs.model_images is not None:
                chip_bytes = bytes(pairs.model_images[position])
                chip = jpeg_thumbnail_uri(chip_bytes, CHIP_SIDE, name)
                shown = photo_bytes != chip_bytes  # a prepared set holding only chips: no photo to show twice
            photo = jpeg_thumbnail_uri(photo_bytes, THUMBNAIL_SIDE, name) if shown else None
            images.append((chip, photo, name, shown))
        chips = "".join(_image_tag(chip, f"face chip of {name}", "chip") for chip, _, name, _ in images
                        if pairs.model_images is not None)
        photos = "".join(_image_tag(photo, f"photo {name}", "thumb") for _, photo, name, shown in images if shown)
        first_name, second_name = (_escaped(name) for name in row["identities"])
        names = f"<b>{first_name}</b> / <b>{second_name}</b>" if names_people else f"<b>{first_name}</b>"  # "pair 7"
        files = "<br>".join(_escaped(name) for name in row["files"])
        cards.append(
            f'<div class="card"><div class="chips">{chips}</div><div class="photos">{photos}</div>'
            f'<div class="caption">{names}<br>distance '
            f'<span class="distance">{row["distance"]:.4f}</span><br><span class="path">{files}</span></div></div>'
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def _what_a_card_shows(pairs: EvaluatedPairs) -> str:
    if pairs.model_images is None:
        return "Each pair: the two photos, read whole by the model."
    return "Each pair: the two face chips the model read, then the photos they came from, where the data holds them."


def _hardest_errors_section(hardest: dict[str, list[dict]], pairs: EvaluatedPairs, threshold: float, rule: str,
                            names_people: bool = True) -> str:
    accepts, rejects = hardest["false_accepts"], hardest["false_rejects"]
    return (
        f"<h2>Hardest errors at {threshold:.4f}</h2><p>{_escaped(rule)}. {_what_a_card_shows(pairs)}</p>"
        f"<h3>False accepts: different people, closest first ({len(accepts)} shown)</h3>"
        + _error_cards(accepts, pairs, "false accepts", names_people)
        + f"<h3>False rejects: the same person, farthest first ({len(rejects)} shown)</h3>"
        + _error_cards(rejects, pairs, "false rejects", names_people)
    )


def _identity_section(breakdown: dict, names_people: bool = True) -> str:
    if not names_people:  # an insightface verification set: each image is labelled by its pair, not its person
        return (f"<h2>Per identity at {breakdown['threshold']:.4f}</h2><p>The data names no people (its images are "
                f"labelled by their pair): no breakdown by person.</p>")
    rejects = [[_escaped(row["identity"]), _percent(row["rate"]), f"{row['errors']:,} of {row['pairs']:,}"]
               for row in breakdown["false_rejects"]]
    accepts = [[_escaped(" / ".join(row["identities"])), _percent(row["rate"]), f"{row['errors']:,} of {row['pairs']:,}"]
               for row in breakdown["false_accepts"]]
    parts = [f"<h2>Per identity at {breakdown['threshold']:.4f}</h2>", "<h3>Highest false-reject rates</h3>"]
    parts.append(_table(["identity", "false rejects", "same pairs"], rejects) if rejects else "<p>None.</p>")
    parts.append("<h3>People confused most often</h3>")
    parts.append(_table(["people", "false accepts", "different pairs"], accepts) if accepts else "<p>None.</p>")
    return "".join(parts)


def _photo_grid(names: list[str], pairs: EvaluatedPairs, title: str) -> str:
    if not names:
        return f"<h3>{title}: none</h3>"
    position_of = {}
    for position, name in enumerate(pairs.file_names):
        position_of.setdefault(str(name), position)
    shown = [name for name in names if name in position_of][:MAX_PROBLEM_PHOTOS]
    tiles = "".join(
        f'<figure>{_image_tag(jpeg_thumbnail_uri(pairs.photo(position_of[name]), THUMBNAIL_SIDE, name), name, "thumb")}'
        f'<figcaption class="path">{_escaped(name)}</figcaption></figure>'
        for name in shown
    )
    more = f" ({len(shown)} shown)" if len(shown) < len(names) else ""
    return f'<h3>{title}: {len(names):,}{more}</h3><div class="grid">{tiles}</div>'


def _detection_section(report: dict, pairs: EvaluatedPairs) -> str:
    faces = report.get("faces")
    if faces is None:
        return "<h2>Face detection</h2><p>The run reads whole images: no face was searched for.</p>"
    return (f"<h2>Face detection</h2><p>{_escaped(faces['summary'])}.</p>"
            + _photo_grid(pairs.no_face, pairs, "No face found (the whole photo was used)")
            + _photo_grid(pairs.several_faces, pairs, "Several faces (the central or largest was used)"))


def _training_section(metadata: dict, training_curves_png: bytes | None) -> str:
    parts = ["<h2>Training</h2>"]
    if training_curves_png is not None:
        parts.append(_image_tag(png_data_uri(training_curves_png), "training curves", "plot wide"))
    else:
        parts.append("<p>No training log (metrics.csv) in the run.</p>")
    share = metadata.get("weight_interpolation")
    choice = metadata.get("weight_interpolation_choice")
    if metadata.get("epochs") == 0:
        parts.append("<p>Not fine-tuned (0 epochs): the model is the network as it was loaded.</p>")
    elif share is not None:
        parts.append(f"<p>Weight interpolation: {_escaped(share)} of the way from the pretrained weights to the "
                     f"fine-tuned ones.</p>")
    if choice:
        reason, rule = str(choice.get("reason", "")), str(choice.get("rule", ""))
        parts.append(f"<p>Chosen on the dev people: {_escaped(reason)}"
                     + ("" if rule in reason else f" ({_escaped(rule)})") + ".</p>")
        rows = [[f"{share_tried:g}", _percent(eer)] for share_tried, eer in choice.get("dev_eer", [])]
        if rows:
            parts.append(_table(["share", "dev EER"], rows))
    return "".join(parts)


# Marks a page facetrip wrote (in its first bytes): only such a page is ever replaced.
GENERATOR_TAG = '<meta name="generator" content="facetrip">'
_HEAD_BYTES = 256


def is_report_page(path) -> bool:
    """Whether a file is a page facetrip wrote (:func:`page_html`): its first bytes carry :data:`GENERATOR_TAG`.

    Reads at most a few hundred bytes of a regular file, without following links.

    Args:
        path: the file.

    Returns:
        True for a facetrip page; False for anything else, unreadable files included.
    """
    import os

    from facetrip.untrusted_files import FileOpenError, open_regular_file, read_at_most

    try:
        descriptor, _ = open_regular_file(path)
    except (FileOpenError, OSError):
        return False
    try:
        head = read_at_most(descriptor, _HEAD_BYTES)
    except OSError:
        return False
    finally:
        os.close(descriptor)
    return head.startswith(b"<!DOCTYPE html>") and GENERATOR_TAG.encode() in head


def identification_section_html(index_name: str, curve: dict[str, Any], plot_png: bytes) -> str:
    """The page's section on an index: its DIR-against-FPIR curve and identify's default operating point.

    Args:
        index_name: the index folder, as the user named it.
        curve: :func:`facetrip.identification.open_set.identification_curve`.
        plot_png: :func:`facetrip.identification.open_set.dir_fpir_plot_png` of it.

    Returns:
        An HTML fragment.
    """
    point = curve.get("operating_point") or {}
    at_target = curve.get("at_target") or {}
    sampled = " (a random sample of the photos)" if curve.get("sampled") else ""
    rows = [
        ("index", _escaped(index_name)),
        ("gallery", f"{curve['people']:,} people, {curve['photos']:,} photos; {_escaped(curve['score'])} score, "
                    f"{_escaped(curve['metric'])}"),
        ("probes, leaving one out", f"{curve['known_probes']:,} known, {curve['stranger_probes']:,} strangers{sampled}"),
    ]
    if point:
        rows += [
            ("identify's default", _escaped(point.get("threshold_rule") or "")),
            ("its threshold", f"{point['threshold']:.4f}"),
            ("DIR there (known probes named rightly)", _percent(point.get("dir"))),
            ("FPIR there (strangers named as someone)", _percent(point.get("fpir"))),
        ]
    if at_target and at_target.get("dir") is not None:  # none on a gallery of one photo a person: no known probe
        rows.append((f"DIR at FPIR {_percent(at_target['false_alarm'])} measured here",
                     f"{_percent(at_target['dir'])} (threshold {at_target['threshold']:.4f})"))
    return ("<h2>Identification</h2><p>Each gallery photo searched against the gallery without it (a known "
            "probe) and without its person (a stranger).</p>" + _table(["", ""], rows, numeric_from=9)
            + _image_tag(png_data_uri(plot_png), "DIR against FPIR", "plot"))


# The page loads nothing: only its inline images and style (a second guard beside html.escape).
_NOTHING_LOADED = ('<meta http-equiv="Content-Security-Policy" '
                   "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0; } th, td { border: 1px solid #ddd; padding: 3px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f3f3f3; }
img.plot { max-width: 100%; display: block; margin: .5em 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #ccc; border-radius: 4px; padding: 6px; width: 260px; font-size: .8em; }
.chips img, .photos img { margin-right: 4px; vertical-align: top; }
img.chip { width: 112px; height: 112px; } img.thumb { max-width: 120px; max-height: 120px; }
img.chip, img.thumb { border: 1px solid #bbb; }
.path { color: #666; word-break: break-all; font-size: .9em; } .distance { font-weight: bold; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; } figure { margin: 0; width: 124px; font-size: .75em; }
.missing { display: inline-block; width: 112px; height: 40px; color: #a00; } .note { color: #555; }
"""


def page_html(title: str, sections: Sequence[str]) -> str:
    """A whole self-contained page: a title and HTML sections, with the report's inline style.

    Args:
        title: the page's title (plain text; escaped here).
        sections: HTML fragments, already escaped.

    Returns:
        The HTML document.
    """
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{GENERATOR_TAG}{_NOTHING_LOADED}"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>" + "".join(sections) + "</body></html>\n")


def report_page_html(report: dict, pairs: EvaluatedPairs, metadata: dict, training_curves_png: bytes | None = None,
                     extra_sections: Sequence[str] = ()) -> str:
    """The evaluation report page.

    Args:
        report: the evaluation report (``metrics.json``), with ``hardest_errors`` and
            ``errors_at_threshold``.
        pairs: the evaluated pairs and their images.
        metadata: the run's ``metadata.json``.
        training_curves_png: the run's training curves, or None.
        extra_sections: more HTML fragments at the end (an identification curve).

    Returns:
        The HTML document (UTF-8 text).
    """
    threshold, rule = decision_threshold(report)
    hardest = hardest_error_rows(pairs, threshold, report["hardest_errors"]["count"])
    names_people = bool(report["pairs"]["identities"])  # 0: a bin:FILE set, its images labelled "pair N"
    sections = [
        _what_was_evaluated(report, metadata, threshold, rule),
        _results_table(report),
        _curves(report, pairs, threshold),
        _threshold_section(report),
        _hardest_errors_section(hardest, pairs, threshold, rule, names_people),
        _identity_section(report["errors_at_threshold"], names_people),
        _detection_section(report, pairs),
        _training_section(metadata, training_curves_png),
        *extra_sections,
    ]
    return page_html(f"facetrip report: {report['run']} on {report['source']}", sections)
