"""Headless Chromium (Debian's ``chromium`` package) for screenshots of Flower and weblogs.

Called with an argument list, never through a shell.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import ContimgError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in CANDIDATES:
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def screenshot_command(exe: str, url: str, out: Path, *, width: int = 1400, height: int = 900,
                       wait_ms: int = 4000, profile: Path | None = None) -> list[str]:
    """The argument list that saves a PNG of ``url`` after ``wait_ms`` of (virtual) page time."""
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}",
            f"--screenshot={out}"]
    if profile is not None:
        args.append(f"--user-data-dir={profile}")
    return [*args, url]


def screenshot(url: str, out: str | Path, *, width: int = 1400, height: int = 900, wait_ms: int = 4000,
               timeout_s: float = 120.0) -> Path:
    """Save a PNG of ``url`` with headless Chromium; returns the path.

    Raises
    ------
    ContimgError
        Chromium is not installed, or it wrote no image.
    """
    exe = find_chromium()
    if exe is None:
        raise ContimgError("chromium is not installed; install Debian's package (apt-get install chromium)")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="contimg-chromium-") as profile:
        cmd = screenshot_command(exe, url, out, width=width, height=height, wait_ms=wait_ms, profile=Path(profile))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if not out.is_file() or out.stat().st_size == 0:
        raise ContimgError(f"chromium wrote no screenshot of {url}: {r.stderr.strip().splitlines()[-1:]}")
    return out


def dump_dom(url: str, *, wait_ms: int = 3000, timeout_s: float = 120.0) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``), as HTML text.

    Raises
    ------
    ContimgError
        Chromium is not installed or printed nothing.
    """
    exe = find_chromium()
    if exe is None:
        raise ContimgError("chromium is not installed; install Debian's package (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="contimg-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", f"--virtual-time-budget={wait_ms}", "--dump-dom", url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if not r.stdout.strip():
        raise ContimgError(f"chromium printed no DOM for {url}: {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout
