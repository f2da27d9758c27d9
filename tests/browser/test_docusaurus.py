"""The Docusaurus plugin on a real Docusaurus build of a real book, in headless Chromium.

examples/docusaurus, the plugin added in one line, is built by `@docusaurus/core` once per session:
book-b in English and Urdu (book-a in English too, for the chapter id check). The build is served
under /book/ on one origin; the chat server, with book-b ingested by `textbook-chat ingest
--base-url /book/docs`, runs on another with that origin in ALLOWED_ORIGINS: a book on a static
host and a chat server elsewhere. Readers sign up to examples/better-auth, which runs behind the
book's origin (/api/auth/), and the plugin's default token, Better-Auth's `authClient.token()`,
is what the chat server verifies against Better-Auth's JWKS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest

from server.services import Services
from server.settings import Settings
from server.tools.fake_llm import FakeLLM, expected_reply
from tests.browser.docusaurus_site import (
    BASE_URL,
    DOCS_URL,
    SiteBuilds,
    book_app,
    sign_up,
)
from tests.browser.test_widget import Tab, squash
from tests.conftest import (
    CORPORA,
    AppServer,
    LiveServer,
    fresh_database,
    model_config,
)
from tests.e2e.better_auth import BetterAuth, header, run_better_auth

pytestmark = pytest.mark.slow

BOOK = CORPORA / "book-b"
# A chapter whose URL comes from its `slug:` front matter, not its file name (04-vision-…md).
PAGE_ID = "vision-language-action"
PAGE = f"{DOCS_URL}/vision-language-action"
URDU_TITLE = "کتاب سے پوچھیں"  # the plugin's `title` for the ur locale (docusaurus.config.js)
HAS_DOC_ID = "(id) => document.documentElement.classList.contains('docs-doc-id-' + id)"


@dataclasses.dataclass
class BookSite:
    """book-b's build served under /book/, with Better-Auth behind the same origin."""

    server: AppServer
    auth: BetterAuth

    @property
    def http_url(self) -> str:
        return self.server.http_url


@pytest.fixture(scope="module")
async def book_site(
    site_builds: SiteBuilds, admin_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BookSite]:
    if not BOOK.is_dir():
        pytest.skip("../shared/corpora is not here")
    build = await site_builds.get(BOOK)
    app = book_app(build.out)
    server = AppServer(app)  # its port, so its origin, is known before it serves
    tmp = tmp_path_factory.mktemp("better-auth")
    async with run_better_auth(admin_dsn, tmp, TRUSTED_ORIGINS=server.http_url) as auth:
        app.state.auth_url = auth.url
        async with server:
            yield BookSite(server, auth)


async def ingest(env: dict[str, str], log: Path) -> None:
    """`textbook-chat ingest BOOK --base-url /book/docs`, as the README says."""
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server.cli", "ingest", str(BOOK), "--base-url", DOCS_URL,
            env={**os.environ, **env}, stdout=sink, stderr=sink,
        )  # fmt: skip
        code = await proc.wait()
    if code != 0:
        tail = await asyncio.to_thread(log.read_text, errors="replace")
        raise AssertionError(f"ingest failed ({code}):\n{tail[-3000:]}")


@pytest.fixture(scope="module")
async def chat(
    admin_dsn: str,
    fake_llm: FakeLLM,
    book_site: BookSite,
    chat_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[LiveServer]:
    """The chat server with book-b ingested, allowing the book's origin."""
    data_dir = tmp_path_factory.mktemp("docusaurus-chat")
    async with fresh_database(admin_dsn) as dsn:
        env = {
            "DATA_DIR": str(data_dir),
            "DATABASE_URL": dsn,
            **book_site.auth.chat_env(),  # JWKS_URL, JWT_ISSUER, JWT_AUDIENCE
            "OPENAI_BASE_URL": fake_llm.base_url,
            "OPENAI_API_KEY": "test-key",
            "EMBEDDING_PROVIDER": "openai",
            "ALLOWED_ORIGINS": book_site.http_url,
            "LOG_LEVEL": "WARNING",
        }
        await ingest(env, data_dir / "ingest.log")
        services = await Services.start(Settings.from_env(env), loopback=True)
        try:
            async with LiveServer(services, chat_port) as server:
                yield server
        finally:
            await services.close()


@dataclasses.dataclass
class BookTab(Tab):
    """A tab of a reader signed in to Better-Auth."""

    user_id: str = ""


OpenTab = Callable[..., Awaitable[BookTab]]


@pytest.fixture
async def open_tab(browser: Any, book_site: BookSite, chat: LiveServer) -> AsyncIterator[OpenTab]:
    """Opens a page of the book, hydrated and with the widget loaded, for a signed-in `user`."""
    contexts: list[Any] = []

    async def open_(path: str, *, user: str | None = "reader") -> BookTab:
        context = await browser.new_context(viewport={"width": 1280, "height": 860})
        contexts.append(context)
        user_id = ""
        if user is not None:
            user_id, cookie = await sign_up(book_site.auth.url, book_site.http_url, user)
            await context.add_cookies([cookie])
        page = await context.new_page()
        page.set_default_timeout(15_000)
        tab = BookTab(page, user_id=user_id)

        def on_socket(ws: Any) -> None:
            ws.on("framesent", lambda payload: tab.sent.append(json.loads(payload)))
            ws.on("framereceived", lambda payload: tab.received.append(json.loads(payload)))

        def on_console(message: Any) -> None:
            # The corpora come without their images: those 404s are the book's, not ours.
            if message.type == "error" and "Failed to load resource" not in message.text:
                tab.errors.append(message.text)

        page.on("websocket", on_socket)
        page.on("console", on_console)
        page.on("pageerror", lambda exc: tab.errors.append(str(exc)))
        await page.goto(book_site.http_url + path)
        await page.wait_for_selector("html[data-has-hydrated=true]", state="attached")
        await page.wait_for_selector(".tc-launcher")
        return tab

    yield open_
    for context in contexts:
        await context.close()


def expected(fake: FakeLLM) -> str:
    content: str = fake.chat_requests[-1]["messages"][-1]["content"]
    return expected_reply(content, fake.config)


async def source_hrefs(tab: BookTab) -> list[str]:
    links = tab.page.locator(".tc-sources a")
    return [await links.nth(i).get_attribute("href") for i in range(await links.count())]


async def follow_first_source(tab: BookTab) -> dict[str, Any]:
    """Click the first source of the last answer; wait for its page. The source, as sent."""
    source: dict[str, Any] = [f for f in tab.received if f["type"] == "sources"][-1]["sources"][0]
    async with tab.page.expect_navigation():  # a page load, even to the page it is on
        await tab.page.locator(".tc-bot").last.locator(".tc-sources a").first.click()
    await tab.page.wait_for_function(HAS_DOC_ID, arg=source["chapter"])
    await tab.page.wait_for_selector("html[data-has-hydrated=true]", state="attached")
    return source


# ---- the widget on the book's pages --------------------------------------------------------


async def test_ask_then_follow_a_source_to_its_page(
    open_tab: OpenTab, chat: LiveServer, book_site: BookSite, fake_llm: FakeLLM
) -> None:
    tab = await open_tab(PAGE, user="asker")
    page = tab.page
    # Loaded from the chat server, after hydration, with the doc id as the chapter.
    assert await page.evaluate("TextbookChat.serverUrl") == chat.ws_url
    assert await page.locator("[data-chapter]").get_attribute("data-chapter") == PAGE_ID
    await page.wait_for_selector(".tc-reader")
    assert await page.evaluate("TextbookChat.reader.chapter") == PAGE_ID
    await tab.open_panel()
    with model_config(fake_llm, tokens_per_answer=30):
        await tab.ask("How does a vision-language-action model turn words into robot actions?")
        assert await tab.answer() == await tab.rendered(expected(fake_llm))
    hrefs = await source_hrefs(tab)
    assert hrefs and all(h.startswith(f"{book_site.http_url}{DOCS_URL}/") for h in hrefs)
    # The token was Better-Auth's, for this reader (authClient.token(), the plugin's default).
    token = tab.sent_of("auth")[0]["token"]
    assert header(token)["alg"] == "EdDSA"
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == tab.user_id

    source = await follow_first_source(tab)
    url = urlsplit(page.url)
    assert url.path.rstrip("/") == urlsplit(source["url"]).path.rstrip("/")
    if url.fragment:  # the section's heading is there
        assert await page.locator(f"[id='{url.fragment}']").count() == 1
    assert await page.locator("[data-chapter]").get_attribute("data-chapter") == source["chapter"]
    # The conversation came along: the panel reopens with it.
    await page.wait_for_selector(".tc-root[data-state=open] .tc-user", state="attached")
    assert tab.errors == []


async def test_a_reader_not_signed_in_is_told_to_sign_in(open_tab: OpenTab) -> None:
    tab = await open_tab(PAGE, user=None)
    await tab.page.locator(".tc-launcher").click()
    status = tab.page.locator(".tc-root[data-state=error] .tc-status")
    await status.wait_for()
    assert "sign in first" in await status.inner_text()  # Better-Auth answered 401
    assert tab.sent_of("auth") == []


async def test_highlight_a_passage_and_ask_about_it(open_tab: OpenTab, fake_llm: FakeLLM) -> None:
    tab = await open_tab(PAGE, user="highlighter")
    page = tab.page
    await page.locator(".theme-doc-markdown p").first.click(click_count=3)
    button = page.locator(".tc-ask-selection")
    await button.wait_for(state="visible")
    selected = squash(await page.evaluate("getSelection().toString()"))
    await button.click()
    await tab.ask("Why does this matter for a humanoid?")
    await tab.answer()
    frame = tab.sent_of("ask")[-1]
    assert frame["selection"]["chapter"] == PAGE_ID
    assert squash(frame["selection"]["text"]) == selected
    assert frame["selection"]["page_url"] == page.url
    assert selected[:80] in squash(fake_llm.chat_requests[-1]["messages"][-1]["content"])
    assert tab.errors == []


async def test_reader_follows_client_side_navigation(open_tab: OpenTab) -> None:
    tab = await open_tab(PAGE)
    page = tab.page
    await page.wait_for_selector(".tc-reader")
    await page.evaluate("window.sameDocument = true")
    await page.locator(".pagination-nav__link--next").click()  # React Router, no page load
    changed = await page.wait_for_function(
        "(id) => { const m = document.documentElement.className.match(/docs-doc-id-(\\S+)/);"
        " return m && m[1] !== id ? m[1] : null; }",
        arg=PAGE_ID,
    )
    next_id = await changed.json_value()
    await page.wait_for_function(
        "(id) => TextbookChat.reader && TextbookChat.reader.chapter === id"
        " && TextbookChat.reader.bar.isConnected",
        arg=next_id,
    )
    assert await page.evaluate("window.sameDocument") is True
    assert await page.locator(".tc-reader").count() == 1
    assert await page.locator("[data-chapter]").get_attribute("data-chapter") == next_id
    assert tab.errors == []


# ---- the chapter reader: personalize, translate --------------------------------------------


async def test_personalize_with_a_new_profile_then_translate_to_urdu(
    open_tab: OpenTab, chat: LiveServer, fake_llm: FakeLLM
) -> None:
    tab = await open_tab(PAGE, user="new-reader")
    page = tab.page
    original_h2 = await page.locator(".theme-doc-markdown h2").first.inner_text()
    with model_config(fake_llm, echo=True):
        await page.get_by_role("button", name="Personalize for me").click()
        await page.locator("form.tc-profile").wait_for()
        await page.get_by_label("Software background").fill("Python web developer")
        await page.get_by_label("Hardware background").fill("none")
        await page.get_by_label("Level").select_option("beginner")
        # A cross-origin PUT /v1/profile: the chat server answers CORS for the book's origin.
        await page.get_by_role("button", name="Save and personalize").click()
        await page.wait_for_selector(".tc-reader-status:has-text('Personalized')")
        output = page.locator(".theme-doc-markdown .tc-reader-output")
        assert await output.get_attribute("dir") == "ltr"
        # (Docusaurus ends a heading with a zero-width space before its hash link.)
        assert await output.locator("h2").first.inner_text() == original_h2.rstrip("\u200b")
        profile = await chat.services.store.get_profile(tab.user_id)
        assert profile is not None and profile.level == "beginner"
        assert "beginner" in fake_llm.chat_requests[-1]["messages"][0]["content"]

        await page.get_by_role("button", name="Show original").click()
        assert await page.locator(".tc-reader-output").count() == 0
        assert await page.locator(".theme-doc-markdown h2").first.inner_text() == original_h2

        assert await page.get_by_label("Translate to").input_value() == "ur"
        await page.get_by_role("button", name="Translate").click()
        await page.wait_for_selector(".tc-reader-status:has-text('Translated')")
    assert await output.get_attribute("dir") == "rtl" and await output.get_attribute("lang") == "ur"
    assert await output.evaluate("el => getComputedStyle(el).direction") == "rtl"
    frames = tab.sent_of("chapter")
    assert [(f["chapter"], f["mode"], f.get("language")) for f in frames] == [
        (PAGE_ID, "personalize", None),
        (PAGE_ID, "personalize", None),  # again, once the profile was saved
        (PAGE_ID, "translate", "ur"),
    ]
    assert "Urdu" in fake_llm.chat_requests[-1]["messages"][0]["content"]
    assert tab.errors == []


# ---- the site's locale and colour mode -----------------------------------------------------


async def test_urdu_pages_are_right_to_left_and_stay_in_urdu(
    open_tab: OpenTab, book_site: BookSite, fake_llm: FakeLLM
) -> None:
    tab = await open_tab(f"{BASE_URL}ur/docs/vision-language-action", user="urdu-reader")
    page = tab.page
    assert await page.evaluate("[document.documentElement.dir, document.documentElement.lang]") == [
        "rtl",
        "ur",
    ]
    await tab.open_panel()
    assert await page.locator("#tc-title").inner_text() == URDU_TITLE
    panel = page.locator(".tc-panel")
    assert await panel.evaluate("el => getComputedStyle(el).direction") == "rtl"
    box = await panel.bounding_box()
    assert box is not None and box["x"] < 1280 / 2  # the inline end is on the left
    assert await page.get_by_label("Translate to").input_value() == "ur"  # the page's language

    with model_config(fake_llm, tokens_per_answer=20):
        await tab.ask("روبوٹ زبان کو عمل میں کیسے بدلتا ہے؟")
        await tab.answer()
    hrefs = await source_hrefs(tab)
    assert hrefs and all(h.startswith(f"{book_site.http_url}{BASE_URL}ur/docs/") for h in hrefs)
    source = await follow_first_source(tab)
    assert urlsplit(page.url).path.startswith(f"{BASE_URL}ur/docs/")
    assert await page.evaluate("document.documentElement.lang") == "ur"
    assert await page.locator("[data-chapter]").get_attribute("data-chapter") == source["chapter"]
    assert tab.errors == []


async def test_dark_mode_darkens_the_panel_and_the_reader(
    open_tab: OpenTab, fake_llm: FakeLLM
) -> None:
    tab = await open_tab(f"{DOCS_URL}/ros2-fundamentals/ros2-communication")  # it has code
    page = tab.page
    await tab.open_panel()
    style = "([selector, name]) => getComputedStyle(document.querySelector(selector))[name]"
    accent = "() => getComputedStyle(document.querySelector('.tc-reader')).getPropertyValue('--tc-accent').trim()"
    assert await page.evaluate(style, [".tc-panel", "backgroundColor"]) == "rgb(255, 255, 255)"
    assert await page.evaluate(accent) == "#2e6bd1"
    toggle = page.locator("button[aria-label*='dark and light mode']").first
    for _ in range(3):  # it cycles through system, light and dark
        if await page.evaluate("document.documentElement.dataset.theme") == "dark":
            break
        await toggle.click()
    assert await page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert await page.evaluate(style, [".tc-panel", "backgroundColor"]) == "rgb(31, 32, 35)"
    assert await page.evaluate(accent) == "#7aa7ff"
    # A rewritten chapter's code blocks are dark too, under the site's light text.
    with model_config(fake_llm, echo=True):
        await page.get_by_role("button", name="Translate").click()
        await page.wait_for_selector(".tc-reader-status:has-text('Translated')")
    code = ".tc-reader-output pre"
    assert await page.evaluate(style, [code, "backgroundColor"]) == "rgb(42, 44, 49)"
    assert await page.evaluate(style, [code, "color"]) != "rgb(28, 30, 33)"
    assert tab.errors == []
