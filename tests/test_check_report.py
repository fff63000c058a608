"""scripts/check_report.py on pages written here: a clean page passes; an image that does not decode, a console
error, an uncaught exception and any network request each fail it, named; nothing reaches the network."""

import base64
import http.server
import io
import os
import shutil
import subprocess
import sys
import threading

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "check_report.py"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or shutil.which(CHROMIUM) is None,
                       reason="no Chromium (apt-get install chromium, or set CHROMIUM): .ci/run installs it"),
    pytest.mark.skipif(__import__("importlib").util.find_spec("playwright") is None,
                       reason="Playwright is not installed (pip install -e '.[dev]')"),
]


def data_uri(image_format: str) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 120, 200)).save(buffer, format=image_format)
    return f"data:image/{image_format.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def check(tmp_path, body: str, *options):
    page = tmp_path / "page.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>t</title></head><body>{body}</body></html>")
    return subprocess.run([sys.executable, SCRIPT, page, *map(str, options)], capture_output=True, text=True, timeout=120)


def test_a_clean_page_passes_with_a_summary(tmp_path):
    result = check(tmp_path, f"<h1>ok</h1><img src='{data_uri('PNG')}' alt='png'><img src='{data_uri('JPEG')}'>")
    assert result.returncode == 0, result.stderr
    assert "2 images decoded, 0 console errors, 0 network requests" in result.stdout and not result.stderr


def test_an_image_that_does_not_decode_fails_named(tmp_path):
    result = check(tmp_path, f"<img src='{data_uri('PNG')}'><img alt='broken face' src='data:image/png;base64,iVBORw0KGgoAAAA'>")
    assert result.returncode == 1
    assert "image did not decode: <img> 2 alt='broken face'" in result.stderr
    assert "1 images decoded" in result.stdout


def test_network_requests_fail_named_and_are_blocked(tmp_path):
    """An <img> and a fetch() to a server on this machine: both named, neither reaches it (the server counts)."""
    hits = []

    class Counting(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server hook
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    local = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = check(tmp_path, f"<img src='http://example.com/x.png'><img src='{local}/y.png'>"
                                 f"<script>fetch('{local}/z.json').catch(() => {{}});</script>")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    for url in ("http://example.com/x.png", f"{local}/y.png", f"{local}/z.json"):
        assert f"network request (blocked): {url}" in result.stderr, result.stderr
    assert hits == []
    assert "3 network requests" in result.stdout


def test_console_errors_and_uncaught_exceptions_fail(tmp_path):
    result = check(tmp_path, "<script>console.error('bad thing'); throw new TypeError('worse thing');</script>")
    assert result.returncode == 1
    assert "console error: bad thing" in result.stderr
    assert "console error: uncaught TypeError: worse thing" in result.stderr
    assert "2 console errors" in result.stdout


def test_screenshot_is_a_png_that_decodes(tmp_path):
    from PIL import Image

    result = check(tmp_path, f"<img src='{data_uri('PNG')}'>", "--screenshot", tmp_path / "shot.png")
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "shot.png") as shot:
        assert shot.format == "PNG" and shot.width > 0
        shot.load()


def test_what_cannot_be_checked_is_one_line_with_exit_2(tmp_path):
    missing = subprocess.run([sys.executable, SCRIPT, tmp_path / "missing.html"], capture_output=True, text=True)
    no_browser = subprocess.run([sys.executable, SCRIPT, SCRIPT], capture_output=True, text=True,
                                env={**os.environ, "CHROMIUM": str(tmp_path / "no-chromium")})
    for result, words in ((missing, "no such file"), (no_browser, "CHROMIUM=")):
        assert result.returncode == 2 and words in result.stderr and result.stderr.count("\n") == 1, result.stderr
