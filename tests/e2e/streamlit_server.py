"""The real app for the browser tests: `streamlit run app.py` on a free port over a given runs root,
and the system Chromium that drives it (never `playwright install`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from cbd_core import jobs

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(root: Path, env: dict[str, str] | None = None, log_name: str = "streamlit.log") -> Iterator[str]:
    """Serve the app over `root` (its log in root/<log_name>) for Chromium; yields its URL. On exit the
    server and any worker it started over `root` are stopped."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is missing ({CHROMIUM}): `apt-get install -y chromium` (.ci/run does it)")
    with serving_app(root, env, log_name) as url:
        yield url


@contextlib.contextmanager
def serving_app(root: Path, env: dict[str, str] | None = None, log_name: str = "streamlit.log",
                flags: tuple[str, ...] = ()) -> Iterator[str]:
    """`running_app` without a browser: a fresh server over `root`, with Streamlit's `flags` added."""
    port = free_port()
    log = open(root / log_name, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false", *flags],
        cwd=ROOT, env={**os.environ, "BACKDOOR_LAB_RUNS": str(root), **(env or {})}, stdout=log,
        stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"streamlit exited: {(root / log_name).read_text()[-2000:]}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)
        jobs.stop_workers(root)
        log.close()


@contextlib.contextmanager
def chromium_browser() -> Iterator:
    """The system Chromium, headless, driven by Playwright; closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()
