"""Check a self-contained HTML page (a report, ``clusters.html``) in headless Chromium.

The page is opened from its file with the system's Chromium, driven over the DevTools
protocol by Playwright (no browser is downloaded: Playwright starts the ``chromium`` it is
given). The check fails, one line per problem, on

- a console error (``console.error``, a resource that failed to load) or an uncaught exception;
- an ``<img>`` that did not decode (``naturalWidth == 0`` once the page has loaded);
- any request to the network: every URL other than ``file:``, ``data:``, ``blob:`` and
  ``about:`` is blocked and named. Nothing leaves the machine: requests are aborted before
  they are sent, WebSockets are answered by a stub, and Chromium resolves no host name
  (``--host-resolver-rules``) should anything slip past the interception.

Usage::

    python scripts/check_report.py OUT/clusters.html [--screenshot OUT/clusters.png]

Exit 0 with a one-line summary when the page is clean, 1 with one line per problem when it
is not, 2 when it cannot be checked (no such file, no Chromium, no Playwright). Chromium is
``$CHROMIUM`` if set, else ``chromium`` or ``chromium-browser`` on the PATH.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

# URL schemes that never leave the machine.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
# How long the page may take to load, and to go quiet after loading.
DEFAULT_TIMEOUT_S = 30.0
SETTLE_MS = 500
# Characters of a URL shown in a message (a data: URI can be megabytes).
SHOWN_URL = 80

# Loads every <img> (lazy ones too) and says which did not decode: [[index, src, alt], ...].
_UNDECODED_IMAGES = """async () => {
    const images = Array.from(document.images);
    await Promise.all(images.map(img => { img.loading = "eager"; return img.decode().catch(() => null); }));
    return images.map((img, index) => [index + 1, img.currentSrc || img.getAttribute("src") || "", img.alt || "",
                                       img.naturalWidth]);
}"""


class CheckError(Exception):
    """The page cannot be checked at all (not a problem of the page): one line, exit 2."""


@dataclasses.dataclass
class PageCheck:
    """What the check found on one page.

    Attributes:
        images: how many ``<img>`` elements the page holds.
        undecoded: one description per image that did not decode.
        console_errors: console errors and uncaught exceptions, one line each.
        network: the URLs of the network requests (all blocked), in the order made, once each.
    """

    images: int = 0
    undecoded: list[str] = dataclasses.field(default_factory=list)
    console_errors: list[str] = dataclasses.field(default_factory=list)
    network: list[str] = dataclasses.field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """One line per problem: images, then console errors, then network requests."""
        return ([f"image did not decode: {image}" for image in self.undecoded]
                + [f"console error: {error}" for error in self.console_errors]
                + [f"network request (blocked): {shown(url)}" for url in self.network])

    def summary(self) -> str:
        """``N images decoded, E console errors, R network requests``."""
        return (f"{self.images - len(self.undecoded)} images decoded, {len(self.console_errors)} console errors, "
                f"{len(self.network)} network requests")


def shown(text: str) -> str:
    """``text`` on one line and cut to :data:`SHOWN_URL` characters (with an ellipsis)."""
    text = " ".join(str(text).split())
    return text if len(text) <= SHOWN_URL else text[:SHOWN_URL - 3] + "..."


def find_chromium() -> str:
    """The Chromium to run: ``$CHROMIUM``, else ``chromium`` or ``chromium-browser`` on the PATH.

    Returns:
        The path of the executable.

    Raises:
        CheckError: none found.
    """
    named = os.environ.get("CHROMIUM")
    if named:
        found = shutil.which(named)
        if found is None:
            raise CheckError(f"CHROMIUM={named} is not an executable: set it to Chromium's path, or unset it.")
        return found
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found is not None:
            return found
    raise CheckError("No Chromium found (chromium, chromium-browser): install it (apt-get install chromium) "
                     "or set CHROMIUM to its path.")


def check_page(page_file: str | Path, chromium: str, screenshot: str | Path | None = None,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> PageCheck:
    """Open ``page_file`` in headless Chromium, with the network blocked, and collect its problems.

    Args:
        page_file: the HTML file.
        chromium: the Chromium executable (:func:`find_chromium`).
        screenshot: where to save a full-page PNG of the page; none by default.
        timeout_s: the longest the page may take to load.

    Returns:
        What was found (:class:`PageCheck`).

    Raises:
        CheckError: Playwright is missing, Chromium does not start, the page does not load
            in time, or the screenshot cannot be written.
    """
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise CheckError("Playwright is not installed: pip install playwright (no browser download is needed).") from None

    url = Path(page_file).resolve().as_uri()
    found = PageCheck()
    blocked: set[str] = set()

    def block(route) -> None:
        request_url = route.request.url
        if request_url.startswith(LOCAL_SCHEMES):
            route.continue_()
            return
        note_network(request_url)
        route.abort("blockedbyclient")

    def note_network(request_url: str) -> None:
        if request_url not in blocked:
            blocked.add(request_url)
            found.network.append(request_url)

    def on_console(message) -> None:
        if message.type != "error":
            return
        source = (message.location or {}).get("url", "")
        if source in blocked and message.text.startswith("Failed to load resource"):
            return  # the blocked request, already named as a network request
        line = (message.location or {}).get("lineNumber") or 0
        where = f" ({shown(source)}{f':{line}' if line else ''})" if source and source != url else ""
        found.console_errors.append(shown(message.text) + where)

    try:
        with sync_playwright() as playwright:
            try:
                # No sandbox: Chromium's sandbox does not start as root or in most containers, and the
                # page is a local file of ours with the network cut off.
                browser = playwright.chromium.launch(
                    executable_path=chromium, headless=True, chromium_sandbox=False,
                    args=["--host-resolver-rules=MAP * ~NOTFOUND", "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
                          "--disable-background-networking", "--no-first-run"])
            except PlaywrightError as error:
                raise CheckError(f"Chromium ({chromium}) did not start: {shown(str(error).splitlines()[0])}") from None
            try:
                page = browser.new_page()
                page.on("console", on_console)
                page.on("pageerror", lambda error: found.console_errors.append(f"uncaught {shown(error.name or 'exception')}: "
                                                                                 f"{shown(error.message)}"))
                page.route("**/*", block)
                page.route_web_socket("**/*", lambda socket: (note_network(socket.url), socket.close()))
                try:
                    page.goto(url, wait_until="load", timeout=timeout_s * 1000)
                    page.wait_for_load_state("networkidle", timeout=timeout_s * 1000)
                except PlaywrightError as error:
                    raise CheckError(f"{page_file} did not load: {shown(str(error).splitlines()[0])}") from None
                images = page.evaluate(_UNDECODED_IMAGES)
                page.wait_for_timeout(SETTLE_MS)  # errors of scripts that run late
                found.images = len(images)
                found.undecoded = [f"<img> {index}" + (f" alt={shown(alt)!r}" if alt else "") + f" src={shown(src)!r}"
                                   for index, src, alt, width in images if not width]
                if screenshot is not None:
                    try:
                        page.screenshot(path=str(screenshot), full_page=True)
                    except PlaywrightError as error:
                        raise CheckError(f"The screenshot {screenshot} was not written: "
                                         f"{shown(str(error).splitlines()[0])}") from None
            finally:
                browser.close()
    except PlaywrightError as error:  # the driver or the browser went away
        raise CheckError(f"Chromium failed while checking {page_file}: {shown(str(error).splitlines()[0])}") from None
    return found


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"check_report: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Check one page; print its problems (stderr) or the summary (stdout).

    Returns:
        0 clean, 1 problems found, 2 not checked.
    """
    parser = _OneLineParser(description="Check a self-contained HTML page in headless Chromium: images decode, "
                                        "no console errors, no network requests.")
    parser.add_argument("page", type=Path, help="the HTML file")
    parser.add_argument("--screenshot", type=Path, metavar="PNG", help="also save a full-page screenshot here")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"longest the page may take to load (default {DEFAULT_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    try:
        if not args.page.is_file():
            raise CheckError(f"{args.page}: no such file.")
        if args.screenshot is not None and not args.screenshot.parent.is_dir():
            raise CheckError(f"{args.screenshot}: its folder does not exist.")
        found = check_page(args.page, find_chromium(), args.screenshot, args.timeout)
    except CheckError as error:
        print(f"check_report: {error}", file=sys.stderr)
        return 2
    for problem in found.problems:
        print(f"{args.page}: {problem}", file=sys.stderr)
    print(f"{args.page}: {found.summary()}" + (f"; screenshot {args.screenshot}" if args.screenshot else ""))
    return 1 if found.problems else 0


if __name__ == "__main__":
    sys.exit(main())
