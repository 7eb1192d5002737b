"""Debian's headless Chromium for the browser tests: one way to find it and launch it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip without Chromium locally; in CI (CI set) a missing browser is a failure, not a skip."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(
            f"CI must run the browser tests but {CHROMIUM} is missing (apt-get install chromium)"
        )
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); CI installs and runs these")


@contextmanager
def chromium() -> Iterator[Any]:
    """Never a downloaded browser: Debian's Chromium, headless, closed on exit."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
