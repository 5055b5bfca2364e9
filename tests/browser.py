"""Headless Chromium for the explorer's browser test and for CI's check of the main job's report.html.

``find_chromium()`` looks at ``$DYNAMETRIC_CHROMIUM``, then ``chromium`` / ``chromium-browser`` / ``google-chrome``
on ``PATH``, then Debian's ``/usr/bin/chromium``. ``run_headless()`` starts it with a fresh profile and nothing
that reaches the network on its own (no sync, component updates or first-run pages), so a run depends only on
the page it is given. Stdlib only: ``.ci/check_main_job.py`` imports it too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_ENV = "DYNAMETRIC_CHROMIUM"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEBIAN_CHROMIUM = "/usr/bin/chromium"
HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--no-default-browser-check", "--hide-scrollbars")
INSTALL_HINT = ("install the system package 'chromium' (Debian: apt-get install chromium) or point "
                f"${CHROMIUM_ENV} at a Chromium/Chrome binary")


def find_chromium() -> str | None:
    """The browser binary to use, or None when there is none. A set ``$DYNAMETRIC_CHROMIUM`` that is not an
    executable file is an error (a typo there must not turn into a silent skip)."""
    forced = os.environ.get(CHROMIUM_ENV)
    if forced:
        if not (os.path.isfile(forced) and os.access(forced, os.X_OK)):
            raise FileNotFoundError(f"${CHROMIUM_ENV}={forced!r} is not an executable file")
        return forced
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return DEBIAN_CHROMIUM if os.access(DEBIAN_CHROMIUM, os.X_OK) else None


def run_headless(args: list[str], *, binary: str | None = None, timeout: float = 90,
                 profile_dir: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with ``args`` (e.g. ``["--dump-dom", url]``) in a fresh user-data dir (a temporary
    one, removed afterwards, unless ``profile_dir`` is given). Returns the completed process (text output)."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError(f"no Chromium found: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as tmp:
        profile = Path(profile_dir) if profile_dir is not None else Path(tmp)
        cmd = [binary, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
