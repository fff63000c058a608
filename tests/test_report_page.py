"""`facetrip report` and the report page of `facetrip evaluate`: the hardest errors, the numbers, the images, bad input."""

import base64
import dataclasses
import html
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import run_cli
from helpers import call_within, one_line_error

from facetrip.evaluation.metrics import hardest_errors

IMAGE_SOURCES = re.compile(r'<img[^>]*\ssrc="([^"]*)"')


def _reference_hardest(distances, same, threshold, count):
    """The hardest errors by plain Python: wrong-side pairs sorted by distance, ties by pair index."""
    accepts = sorted((distance, index) for index, (distance, is_same) in enumerate(zip(distances, same))
                     if not is_same and distance <= threshold)
    rejects = sorted((-distance, index) for index, (distance, is_same) in enumerate(zip(distances, same))
                     if is_same and distance > threshold)
    return [index for _, index in accepts[:count]], [index for _, index in rejects[:count]]


@pytest.mark.parametrize("seed", range(5))
def test_the_hardest_errors_equal_a_plain_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    distances = rng.integers(0, 12, 300) / 10.0  # many ties, some exactly at the threshold
    same = rng.random(300) < 0.3
    for threshold in (0.0, 0.5, 0.6, 1.1):
        for count in (1, 5, 300):
            accepts, rejects = hardest_errors(distances, same, threshold, count)
            assert (accepts.tolist(), rejects.tolist()) == _reference_hardest(distances, same, threshold, count)


def test_the_hardest_errors_of_a_set_built_to_have_known_answers():
    """Same pairs at 0.1..0.9 and different pairs at 0.15..0.95; at 0.5 the wrong ones are known by construction."""
    same_distances = np.arange(1, 10) / 10.0  # rejected at 0.5: 0.6 .. 0.9
    different_distances = np.arange(1, 10) / 10.0 + 0.05  # accepted at 0.5: 0.15 .. 0.45
    distances = np.concatenate([same_distances, different_distances])
    same = np.arange(18) < 9
    accepts, rejects = hardest_errors(distances, same, 0.5, 3)
    assert distances[accepts].tolist() == pytest.approx([0.15, 0.25, 0.35])
    assert distances[rejects].tolist() == pytest.approx([0.9, 0.8, 0.7])
    accepts, rejects = hardest_errors(distances, same, 0.5, 100)
    assert len(accepts) == 4 and len(rejects) == 4  # 0.15..0.45 accepted, 0.6..0.9 rejected
    assert hardest_errors(distances, same, 10.0, 5)[1].size == 0  # nothing rejected above every distance


def _image_sources(page: str) -> list[str]:
    return IMAGE_SOURCES.findall(page)


def _assert_self_contained(page: str) -> int:
    """Every image of the page is an inline data: URI that decodes; no URL outside the page. Returns the image count."""
    from PIL import Image

    sources = _image_sources(page)
    assert sources, "the page has no image"
    for source in sources:
        assert source.startswith("data:image/"), source[:60]
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        image.load()
        assert image.width > 0 and image.height > 0
    assert not re.search(r"(?:https?|ftp)://|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.IGNORECASE)
    assert "<script" not in page and "<link" not in page
    return len(sources)


@pytest.fixture(scope="module")
def evaluated_run(finished_run, tmp_path_factory):
    """A copy of the tiny run, evaluated with `facetrip evaluate` (which writes report.html)."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(finished_run[0], run_dir)
    for name in ("report.html", "metrics.json"):
        (run_dir / name).unlink(missing_ok=True)
    result = run_cli("evaluate", run_dir)
    assert result.exit_code == 0, result.output
    assert "Wrote the report page" in result.output
    return run_dir


def _cells(page: str, section: str) -> list[list[str]]:
    """The rows of the first table after the heading ``section``, as unescaped cell texts."""
    start = page.index(f"<h2>{section}")
    table = page[start:page.index("</table>", start)]
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table)]


def test_the_page_shows_the_numbers_of_metrics_json(evaluated_run):
    page = (evaluated_run / "report.html").read_text()
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    rows = {row[0]: row[1:] for row in _cells(page, "Results")[1:]}
    assert set(rows) == {"model", *metrics["baselines"]}
    for label, values in [("model", metrics["model"]), *metrics["baselines"].items()]:
        assert rows[label][0] == f"{values['auc']:.4f}"
        assert rows[label][1] == f"{values['eer'] * 100:.1f}%"
        assert rows[label][2:5] == [f"{values[key]:.3f}" for key in ("tar_at_far_10pct", "tar_at_far_1pct", "tar_at_far_0.1pct")]
    threshold = {row[0]: row[1] for row in _cells(page, "The saved threshold")}
    assert threshold["threshold"] == f"{metrics['threshold']['threshold']:.4f}"
    assert threshold["FAR on these pairs"] == f"{metrics['threshold']['far'] * 100:.1f}%"
    assert threshold["FRR on these pairs"] == f"{metrics['threshold']['frr'] * 100:.1f}%"
    # the hardest errors listed are metrics.json's, in its order, at the run's threshold
    hardest = metrics["hardest_errors"]
    assert hardest["threshold"] == metrics["threshold"]["threshold"]
    shown = [float(value) for value in re.findall(r'<span class="distance">([0-9.]+)</span>', page)]
    listed = [row["distance"] for row in hardest["false_accepts"] + hardest["false_rejects"]]
    assert shown == pytest.approx(listed, abs=5e-5) and listed
    for row in hardest["false_accepts"] + hardest["false_rejects"]:
        assert html.escape(row["files"][0]) in page and html.escape(row["files"][1]) in page
    assert all(row["distance"] <= hardest["threshold"] for row in hardest["false_accepts"])
    assert all(row["distance"] > hardest["threshold"] for row in hardest["false_rejects"])
    identities = _cells(page, "Per identity")
    assert [row[0] for row in identities[1:]] == [row["identity"] for row in metrics["errors_at_threshold"]["false_rejects"]]


def test_the_page_is_self_contained_and_every_image_decodes(evaluated_run):
    page = (evaluated_run / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    images = _assert_self_contained(page)
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    shown_pairs = len(metrics["hardest_errors"]["false_accepts"]) + len(metrics["hardest_errors"]["false_rejects"])
    assert images >= 2 * shown_pairs + 3  # two photos per pair, the curves, the histograms, the training curves
    assert "<h2>Training</h2>" in page and 'alt="training curves"' in page  # the tiny run logged metrics.csv


def test_a_face_chip_run_shows_the_chips_the_model_read_and_the_photos(pretrained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(pretrained_run, run_dir)
    output = tmp_path / "page.html"
    result = run_cli("report", run_dir, "-o", output, "--no-baselines", "--hardest", "3")
    assert result.exit_code == 0, result.output
    page = output.read_text()
    _assert_self_contained(page)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    shown = len(metrics["hardest_errors"]["false_accepts"]) + len(metrics["hardest_errors"]["false_rejects"])
    assert 0 < shown <= 6
    # ORL's prepared set holds only the chips: each is shown once, not again as its "photo"
    assert page.count('class="chip"') == 2 * shown and page.count('class="thumb"') == 0
    assert "where the data holds them" in page
    assert "Face detection" in page and "photos aligned" in page
    # --overwrite replaces the page facetrip wrote; without it, the page is kept
    before = output.read_bytes()
    one_line_error(run_cli("report", run_dir, "-o", output, "--no-baselines"), "--overwrite")
    assert output.read_bytes() == before


def _png(shade: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (30, 40), (shade, shade, shade)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("photos_differ", [True, False])
def test_an_error_card_shows_a_photo_only_when_it_is_not_the_chip(photos_differ):
    """A folder source has photos apart from the chips; a prepared set of chips only (tfds ORL) has not: no duplicate."""
    from facetrip.evaluation.report_page import EvaluatedPairs, _hardest_errors_section, hardest_error_rows

    chips = np.array([_png(40), _png(90)], dtype=object)
    photos = np.array([_png(200), _png(250)], dtype=object) if photos_differ else chips
    pairs = EvaluatedPairs(distances=np.array([0.2]), same=np.array([False]), first=np.array([0]),
                           second=np.array([1]), identity_of=np.array(["a", "b"]), file_names=np.array(["a/1", "b/1"]),
                           model_images=chips, photos=photos)
    section = _hardest_errors_section(hardest_error_rows(pairs, 0.5), pairs, 0.5, "rule")
    assert section.count('class="chip"') == 2
    assert section.count('class="thumb"') == (2 if photos_differ else 0)
    whole = dataclasses.replace(pairs, model_images=None)  # a run reading whole images: the photos, once
    section = _hardest_errors_section(hardest_error_rows(whole, 0.5), whole, 0.5, "rule")
    assert section.count('class="chip"') == 0 and section.count('class="thumb"') == 2
    assert "face chips" not in section


def test_names_and_paths_from_the_data_are_escaped(evaluated_run):
    from facetrip.evaluation.report import evaluate_run
    from facetrip.evaluation.report_page import report_page_html
    from facetrip.runs import read_metadata

    seen = []
    report = evaluate_run(evaluated_run, baselines=False, pairs_seen=seen.append)
    pairs = seen[0]
    hostile = np.array([f'<b onmouseover="x">{name}&amp;</b>' for name in pairs.identity_of], dtype=object)
    pairs.identity_of = hostile
    pairs.file_names = np.array([f"<img src=http://x/{index}>" for index in range(len(pairs.file_names))], dtype=object)
    report["source"] = "folder:<script>alert(1)</script>"
    page = report_page_html(report, pairs, read_metadata(evaluated_run))
    assert "<b onmouseover" not in page and "<script>" not in page and "<img src=http" not in page
    assert "&lt;b onmouseover=&quot;x&quot;&gt;" in page and "&lt;script&gt;" in page
    _assert_self_contained(page.replace("http://x/", "x/"))  # the escaped names hold the only URL-like text


def test_evaluate_no_report_writes_no_page(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    (run_dir / "report.html").unlink(missing_ok=True)
    result = run_cli("evaluate", run_dir, "--no-report", "--no-baselines")
    assert result.exit_code == 0, result.output
    assert not (run_dir / "report.html").exists() and (run_dir / "metrics.json").is_file()


def test_evaluate_json_keeps_stdout_json_with_the_page(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    result = run_cli("evaluate", run_dir, "--json", "--no-baselines")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hardest_errors"]["count"] == 24
    assert "Wrote the report page" in result.stderr and (run_dir / "report.html").is_file()


def test_evaluate_keeps_a_users_file_named_like_the_page(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    (run_dir / "report.html").write_text("my notes")
    result = run_cli("evaluate", run_dir, "--no-baselines")
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").read_text() == "my notes"
    assert "Report page not written" in result.stderr


def test_bad_input_gets_one_line(finished_run, tmp_path):
    one_line_error(run_cli("report", tmp_path / "no-such-run"))
    folder = tmp_path / "folder"
    folder.mkdir()
    one_line_error(run_cli("report", finished_run[0], "-o", folder), "is a folder")
    users_file = tmp_path / "mine.html"
    users_file.write_text("<html>mine</html>")
    one_line_error(run_cli("report", finished_run[0], "-o", users_file, "--overwrite"), "not a facetrip report page")
    assert users_file.read_text() == "<html>mine</html>"
    one_line_error(run_cli("report", finished_run[0], "--index", tmp_path / "no-index"))


def test_a_page_in_a_missing_folder_is_refused_before_the_evaluation(tmp_path):
    from test_insightface_bin import stand_in_run

    run_dir = stand_in_run(tmp_path / "run", face_chips=False)
    one_line_error(run_cli("report", run_dir, "-o", tmp_path / "no-such-folder" / "page.html"), "is not a folder")
    assert not (run_dir / "metrics.json").exists()  # nothing evaluated, nothing replaced


def test_a_fifo_is_not_taken_for_a_page(tmp_path):
    from facetrip.evaluation.report_page import is_report_page

    fifo = tmp_path / "page.html"
    os.mkfifo(fifo)
    assert call_within(10, lambda: is_report_page(fifo), fifo) is False
    page = tmp_path / "real.html"
    from facetrip.evaluation.report_page import page_html

    page.write_text(page_html("t", ["<p>x</p>"]))
    assert is_report_page(page) and not is_report_page(tmp_path / "missing.html")


def test_report_with_an_index_shows_its_identification_curve(evaluated_run, data_dir, tmp_path):
    index_dir = tmp_path / "people.idx"
    result = run_cli("index", evaluated_run, "orl_faces", "-o", index_dir, "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    output = tmp_path / "page.html"
    result = run_cli("report", evaluated_run, "-o", output, "--index", index_dir, "--no-baselines", "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    page = output.read_text()
    _assert_self_contained(page)
    rows = {row[0]: row[1] for row in _cells(page, "Identification")}
    assert rows["gallery"].startswith("40 people, 400 photos")
    assert rows["probes, leaving one out"].startswith("400 known, 400 strangers")
    assert 'alt="DIR against FPIR"' in page and "identify's default" in rows


def test_the_report_page_passes_the_browser_check(evaluated_run, tmp_path):
    """scripts/check_report.py in headless Chromium: every image decodes, no console error, no request; a screenshot."""
    import shutil as which
    import subprocess
    import sys
    from importlib.util import find_spec

    from conftest import REPO

    chromium = os.environ.get("CHROMIUM") or which.which("chromium") or which.which("chromium-browser")
    if chromium is None or find_spec("playwright") is None:
        pytest.skip("no Chromium or no Playwright (apt-get install chromium; pip install -e '.[dev]'): .ci/run installs both")
    screenshot = tmp_path / "page.png"
    result = subprocess.run([sys.executable, REPO / "scripts" / "check_report.py", evaluated_run / "report.html",
                             "--screenshot", screenshot], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    images = len(_image_sources((evaluated_run / "report.html").read_text()))
    assert f"{images} images decoded, 0 console errors, 0 network requests" in result.stdout
    from PIL import Image

    with Image.open(screenshot) as shot:
        assert shot.width >= 800 and shot.height > 2000  # the whole page, not the first screen


def test_train_writes_the_report_page_after_its_evaluation(finished_run):
    run_dir, output = finished_run
    assert "Wrote the report page" in output
    page = (run_dir / "report.html").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"{metrics['model']['auc']:.4f}" in page and page.startswith("<!DOCTYPE html>")


def test_a_bin_set_names_no_people_on_the_page_or_the_terminal(tmp_path, data_dir):
    """A bin:FILE set labels each image by its pair: no "pair 3 / pair 3" for different people, no per-person table."""
    from test_insightface_bin import orl_pairs, stand_in_run, write_bin

    run_dir = stand_in_run(tmp_path / "run", face_chips=False)
    path = write_bin(tmp_path / "set.bin", orl_pairs(20))
    output = tmp_path / "page.html"
    result = run_cli("report", run_dir, "--data", f"bin:{path}", "--data-dir", data_dir, "--no-baselines", "-o", output)
    assert result.exit_code == 0, result.output
    assert "Errors at the model's EER threshold" not in result.output  # "pair 3 / pair 3 100%" means nothing
    page = output.read_text()
    _assert_self_contained(page)
    assert not re.search(r"<b>pair \d+</b> / <b>pair", page)
    assert "no breakdown by person" in page and "the data set&#x27;s own pairs" in page
    assert "pairs of the evaluated identities" not in page


def test_a_run_whose_metrics_cannot_be_saved_still_gets_its_page_elsewhere(finished_run, tmp_path):
    """roc.png is a folder in the run: metrics.json cannot be saved (exit 2, one line), but the page at -o is written."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    (run_dir / "roc.png").unlink(missing_ok=True)
    (run_dir / "roc.png" / "keep").mkdir(parents=True)
    output = tmp_path / "page.html"
    result = run_cli("report", run_dir, "-o", output, "--no-baselines")
    one_line_error(result, str(run_dir / "roc.png"), "not saved")
    assert output.read_text().startswith("<!DOCTYPE html>") and "Wrote the report page" in result.stdout
