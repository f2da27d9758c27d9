"""Debian's Chromium, headless, driven by Playwright (which never downloads a browser)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.asynccontextmanager
async def launched() -> AsyncIterator[Any]:
    """A running browser; the test is skipped, saying why, where Chromium or Playwright is not."""
    if not await asyncio.to_thread(CHROMIUM.exists):
        pytest.skip(
            "Debian's chromium is not installed (apt-get install -y chromium; `make test` does it)"
        )
    pw = pytest.importorskip("playwright.async_api", reason="playwright is not installed")
    async with pw.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
