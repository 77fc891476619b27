"""``report.pdf`` from ``report.html`` through headless Chromium's print-to-PDF (the report's
print stylesheet keeps figures and tables whole on a page), and screenshots of the report."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pipeline.errors import CohortnetError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 180


def find_browser(explicit: str | None = None) -> str:
    """The Chromium to use: ``explicit``, ``$COHORTNET_BROWSER``, or the first on PATH. A browser
    that was named (``--browser`` or the variable) and is not there is an error, never replaced
    silently by another one."""
    for source, name in (("--browser", explicit), ("$COHORTNET_BROWSER", os.environ.get("COHORTNET_BROWSER"))):
        if name:
            if path := shutil.which(name):
                return path
            raise CohortnetError(f"{source} {name}: no such executable browser")
    for name in BROWSERS:
        if name and (path := shutil.which(name)):
            return path
    raise CohortnetError(
        "writing a PDF needs headless Chromium and none was found (looked for "
        f"{', '.join(BROWSERS)} and $COHORTNET_BROWSER); on Debian/Ubuntu: apt-get install chromium"
    )


def _run_browser(browser: str, args: list[str], page: Path, what: str) -> None:
    with tempfile.TemporaryDirectory(prefix="cohortnet-chromium-") as profile:
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", *args, page.resolve().as_uri(),
        ]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise CohortnetError(f"{what}: Chromium did not finish within {TIMEOUT_S} s ({page})") from None
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-3:]
        raise CohortnetError(f"{what}: Chromium exited with {done.returncode} ({page}): {' / '.join(tail)}")


def write_pdf(html: Path, pdf: Path, browser: str | None = None) -> Path:
    """Print ``html`` to ``pdf`` (A4 from the page's @page rule; no browser header or footer).
    Written beside the target and renamed, so a failed print leaves no half file."""
    exe = find_browser(browser)
    tmp = pdf.with_name(f".{pdf.name}.{os.getpid()}.tmp")
    try:
        _run_browser(exe, ["--no-pdf-header-footer", f"--print-to-pdf={tmp}"], html, "report.pdf")
        if not tmp.is_file() or not tmp.read_bytes()[:5] == b"%PDF-":
            raise CohortnetError(f"report.pdf: Chromium wrote no PDF for {html}")
        os.replace(tmp, pdf)
    finally:
        tmp.unlink(missing_ok=True)
    return pdf


def screenshot(html: Path, png: Path, *, width: int = 1200, height: int = 3000, browser: str | None = None) -> Path:
    """A PNG of the top ``height`` pixels of the rendered page."""
    exe = find_browser(browser)
    _run_browser(
        exe, [f"--window-size={width},{height}", f"--screenshot={png}", "--hide-scrollbars"], html, "screenshot"
    )
    if not png.is_file():
        raise CohortnetError(f"screenshot: Chromium wrote no image for {html}")
    return png
