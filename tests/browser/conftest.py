"""The browser, and the Docusaurus site's builds shared by the tests that need one (their times
after the run)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.browser.chromium import launched
from tests.browser.docusaurus_site import BUILDS, SiteBuilds, require_site
from tests.conftest import free_port


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, one per test module."""
    async with launched() as running:
        yield running


@pytest.fixture(scope="session")
def chat_port() -> int:
    """The chat server's port: the site is built with its URL."""
    return free_port()


@pytest.fixture(scope="session")
def site_builds(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, chat_port: int
) -> SiteBuilds:
    """Builds of the example site, each book built once per session."""
    require_site()
    builds = SiteBuilds(tmp_path_factory.mktemp("docusaurus"), f"http://127.0.0.1:{chat_port}")
    request.config.stash[BUILDS] = builds
    return builds


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    builds = config.stash.get(BUILDS, None)
    if builds is None or not builds.builds:
        return
    terminalreporter.section("docusaurus builds")
    for build in builds.builds.values():
        terminalreporter.write_line(f"{build.book}: {build.seconds:.1f} s ({build.out})")
