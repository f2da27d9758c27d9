"""The chat widget and the chapter reader in real headless Chromium, against the live server.

Chromium is Debian's package (`make test` installs it); Playwright only drives it, it never
downloads a browser. `TC_SCREENSHOTS=1` also writes the README's screenshots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from server.auth import TokenVerifier, signing_secret
from server.services import Services
from server.tools.fake_llm import FakeLLM, expected_reply
from server.web.app import create_app
from tests.conftest import ROOT, AppServer, LiveServer, model_config, token_for

SCREENSHOTS = ROOT / "docs" / "screenshots"
FIRST_CHAPTER = "what-is-physical-ai"
DONE = "() => document.querySelectorAll('.tc-bot').length >= {n} && !document.querySelector('.tc-bot[aria-busy]')"


@dataclasses.dataclass
class Tab:
    """One page and what crossed its sockets."""

    page: Any
    sent: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    received: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    dialogs: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.sent if f.get("type") == kind]

    async def answer(self, n: int = 1) -> str:
        """The text of the n-th answer once it has ended, whitespace squashed."""
        await self.page.wait_for_function(DONE.format(n=n), timeout=15_000)
        text: str = await self.page.locator(".tc-bot .tc-body").nth(n - 1).text_content()
        return squash(text)

    async def rendered(self, markdown: str) -> str:
        """The text `markdown` shows once the widget renders it, whitespace squashed."""
        text: str = await self.page.evaluate(
            "(md) => { const d = document.createElement('div');"
            " d.innerHTML = TextbookChat.renderMarkdown(md); return d.textContent; }",
            markdown,
        )
        return squash(text)

    async def ask(self, question: str) -> None:
        await self.page.locator("#tc-input").fill(question)
        await self.page.locator("#tc-input").press("Enter")

    async def open_panel(self) -> None:
        await self.page.locator(".tc-launcher").click()
        await self.page.wait_for_selector(".tc-root[data-state=open]", state="attached")


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def last_prompt(fake: FakeLLM) -> str:
    """What the fake model answered to: the last user message of the last chat request."""
    content: str = fake.chat_requests[-1]["messages"][-1]["content"]
    return content


OpenTab = Callable[..., Awaitable[Tab]]


@pytest.fixture
async def open_tab(browser: Any, live: LiveServer) -> AsyncIterator[OpenTab]:
    """Opens a page in a fresh browser context; `user` gets tokens minted by the test."""
    contexts: list[Any] = []

    async def open_(
        path: str = "/",
        *,
        user: str | None = None,
        server: LiveServer = live,
        ttl: int = 600,
        init_script: str | None = None,
    ) -> Tab:
        context = await browser.new_context(viewport={"width": 1280, "height": 860})
        contexts.append(context)
        if user is not None:
            await context.expose_function("mintTestToken", lambda: token_for(user, ttl))
            await context.add_init_script("window.getToken = () => window.mintTestToken();")
        if init_script:
            await context.add_init_script(init_script)
        page = await context.new_page()
        page.set_default_timeout(10_000)
        tab = Tab(page)

        def on_socket(ws: Any) -> None:
            ws.on("framesent", lambda payload: tab.sent.append(json.loads(payload)))
            ws.on("framereceived", lambda payload: tab.received.append(json.loads(payload)))

        async def on_dialog(dialog: Any) -> None:
            tab.dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("websocket", on_socket)
        page.on("dialog", on_dialog)
        page.on("pageerror", lambda exc: tab.errors.append(str(exc)))
        await page.goto(server.http_url + path)
        await page.wait_for_selector(".tc-launcher")
        return tab

    yield open_
    for context in contexts:
        await context.close()


@pytest.fixture(scope="module")
async def dev_server(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    """The app as `make serve` runs it: no auth configured, a dev secret, on loopback."""
    settings = services.settings.replace(jwt_secret=None, data_dir=tmp_path_factory.mktemp("dev"))
    secret = await asyncio.to_thread(signing_secret, settings, loopback=True)
    dev = dataclasses.replace(
        services, settings=settings, verifier=TokenVerifier(settings, secret, services.http)
    )
    async with LiveServer(dev) as server:
        yield server


async def screenshot(tab: Tab, name: str, **options: Any) -> None:
    if os.environ.get("TC_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await tab.page.screenshot(path=str(SCREENSHOTS / name), **options)


# ---- HTTP: the assets and the dev token -----------------------------------------------------


async def test_widget_is_small_plain_and_cacheable(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.http_url) as http:
        for name, kind in (
            ("widget.js", "javascript"),
            ("reader.js", "javascript"),
            ("widget.css", "css"),
        ):
            first = await http.get(f"/{name}")
            assert first.status_code == 200 and len(first.content) < 40_000
            assert first.headers["content-type"].startswith(f"text/{kind}")
            assert "max-age" in first.headers["cache-control"]
            etag = first.headers["etag"]
            again = await http.get(f"/{name}", headers={"If-None-Match": etag})
            assert again.status_code == 304 and again.content == b""
            assert (await http.get(f"/{name}", headers={"If-None-Match": '"x"'})).status_code == 200
        assert "import " not in (await http.get("/widget.js")).text  # no modules, no build step


async def test_dev_token_only_without_auth_on_loopback(
    live: LiveServer, dev_server: LiveServer
) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(live.http_url + "/dev/token")).status_code == 404  # JWT_SECRET set
        got = await http.get(dev_server.http_url + "/dev/token?sub=reader-7")
        assert got.status_code == 200 and got.headers["cache-control"] == "no-store"
        identity = await dev_server.services.verifier.verify(got.json()["token"])
        assert identity.user_id == "reader-7"
        assert (await http.get(dev_server.http_url + "/dev/token?sub=a%20b")).status_code == 422
    # the same services behind an app told it is not on loopback: no dev token
    remote = create_app(dev_server.services.settings, loopback=False, services=dev_server.services)
    async with AppServer(remote) as server, httpx.AsyncClient() as http:
        assert (await http.get(server.http_url + "/dev/token")).status_code == 404


async def test_demo_page_renders_the_chapter_and_every_chapter_has_a_page(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.http_url) as http:
        home = await http.get("/")
        assert home.status_code == 200
        assert "script-src 'self'" in home.headers["content-security-policy"]
        assert f'data-chapter="{FIRST_CHAPTER}"' in home.text and 'src="/widget.js"' in home.text
        locomotion = await http.get("/docs/humanoid-locomotion")
        assert (
            locomotion.status_code == 200
            and 'data-chapter="humanoid-locomotion"' in locomotion.text
        )
        assert (await http.get("/docs/no-such-page")).status_code == 404


# ---- the chat panel -------------------------------------------------------------------------


async def test_demo_asks_streams_with_sources_and_keeps_the_conversation(
    open_tab: OpenTab, dev_server: LiveServer, fake_llm: FakeLLM
) -> None:
    # No token injected: the demo page gets one from /dev/token, as right after `make serve`.
    tab = await open_tab("/", server=dev_server)
    page = tab.page
    assert await page.locator(".demo-content h2").count() >= 2  # rendered by the widget's renderer
    await page.locator(".tc-launcher").focus()
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == "tc-input"
    assert await page.locator(".tc-launcher").get_attribute("aria-expanded") == "true"
    with model_config(fake_llm, tokens_per_second=40, tokens_per_answer=40):
        await tab.ask("What is the zero-moment point?")
        await page.wait_for_selector(".tc-bot[aria-busy] .tc-sources a")
        await page.wait_for_function(
            "() => document.querySelector('.tc-bot .tc-body').innerText.split(' ').length > 4"
        )
        assert await page.locator(".tc-bot[aria-busy]").count() == 1  # still streaming
        answer = await tab.answer()
        assert answer == await tab.rendered(expected(fake_llm))
    links = page.locator(".tc-sources a")
    hrefs = [await links.nth(i).get_attribute("href") for i in range(await links.count())]
    assert hrefs and all(h.startswith(dev_server.http_url + "/docs/") for h in hrefs)
    assert await page.locator(".tc-sr-only[aria-live=polite]").inner_text()  # announced
    await page.keyboard.press("Escape")
    assert await page.locator("#tc-panel").is_hidden()
    assert await page.evaluate("document.activeElement.className") == "tc-launcher"

    # A new page load continues the conversation: history from the server, then a follow-up.
    await page.reload()
    await page.locator(".tc-launcher").click()
    await page.wait_for_selector(".tc-user")
    assert "zero-moment point" in await page.locator(".tc-user").first.inner_text()
    conversation = tab.sent_of("ask")[0].get("conversation_id")
    assert conversation is None
    await tab.ask("And how is it measured?")
    await tab.answer(2)
    follow_up = tab.sent_of("ask")[-1]
    starts = [f for f in tab.received if f["type"] == "start"]
    assert follow_up["conversation_id"] == starts[0]["conversation_id"]
    assert tab.errors == []


def expected(fake: FakeLLM) -> str:
    """The answer the fake model gave to the last request, under its current config."""
    return expected_reply(last_prompt(fake), fake.config)


async def test_highlight_a_passage_and_ask_about_it(open_tab: OpenTab, fake_llm: FakeLLM) -> None:
    tab = await open_tab("/", user="highlighter")
    page = tab.page
    paragraph = page.locator(".demo-content p").first
    await paragraph.click(click_count=3)  # a real triple-click selects the paragraph
    button = page.locator(".tc-ask-selection")
    await button.wait_for(state="visible")
    selected = squash(await page.evaluate("getSelection().toString()"))
    await button.click()
    assert await page.locator(".tc-quote").is_visible()
    await tab.ask("Why does this matter for a robot?")
    await tab.answer()
    frame = tab.sent_of("ask")[-1]
    assert squash(frame["selection"]["text"]) == selected
    assert frame["selection"]["chapter"] == FIRST_CHAPTER
    assert frame["selection"]["page_url"].endswith("/")
    prompt = json.dumps(fake_llm.chat_requests[-1]["messages"], ensure_ascii=False)
    assert selected[:80] in squash(json.loads(prompt)[-1]["content"])
    assert await page.locator(".tc-user blockquote").count() == 1


async def test_stop_ends_the_stream(open_tab: OpenTab, fake_llm: FakeLLM) -> None:
    tab = await open_tab("/", user="stopper")
    await tab.open_panel()
    with model_config(fake_llm, tokens_per_second=15, tokens_per_answer=200):
        await tab.ask("Tell me everything about sensors")
        await tab.page.wait_for_function(
            "() => document.querySelector('.tc-bot .tc-body').innerText.split(' ').length > 3"
        )
        await tab.page.locator(".tc-stop").click()
        await tab.page.wait_for_selector(".tc-bot .tc-meta:has-text('Stopped.')")
        stopped = await tab.answer()
        await asyncio.sleep(0.5)
        assert squash(await tab.page.locator(".tc-bot .tc-body").inner_text()) == stopped
    assert len(stopped.split()) < 100
    assert [f["id"] for f in tab.sent_of("cancel")] == [tab.sent_of("ask")[0]["id"]]
    done = [f for f in tab.received if f["type"] == "done"]
    assert done[-1]["finish_reason"] == "cancelled"
    assert await tab.page.locator(".tc-stop").is_hidden()


async def test_lost_socket_reconnects_and_resumes_without_duplicates(
    open_tab: OpenTab, fake_llm: FakeLLM
) -> None:
    tab = await open_tab("/", user="roamer")
    page = tab.page
    await tab.open_panel()
    with model_config(fake_llm, tokens_per_second=20, tokens_per_answer=50):
        await tab.ask("How do robots keep their balance?")
        await page.wait_for_function(
            "() => document.querySelector('.tc-bot .tc-body').innerText.split(' ').length > 4"
        )
        # The network goes away and the socket with it; the panel says so.
        await page.context.set_offline(True)
        await page.evaluate("TextbookChat.client.dropConnection()")
        await page.wait_for_selector(".tc-root[data-state=offline] .tc-status:visible")
        # Longer than the first backoff: no attempt is wasted while the browser is offline.
        await asyncio.sleep(1.0)
        await page.context.set_offline(False)
        answer = await tab.answer()
        assert answer == await tab.rendered(expected(fake_llm))
    resumes = tab.sent_of("resume")
    assert len(resumes) == 1 and resumes[0]["after_seq"] > 1
    assert len(tab.sent_of("ask")) == 1
    assert await page.evaluate("TextbookChat.client.stats.connects") == 2
    assert await page.locator(".tc-status").is_hidden()


async def test_answer_in_flight_follows_the_reader_to_a_source_page(
    open_tab: OpenTab, fake_llm: FakeLLM
) -> None:
    tab = await open_tab("/", user="wanderer")
    page = tab.page
    await tab.open_panel()
    with model_config(fake_llm, tokens_per_second=15, tokens_per_answer=45):
        await tab.ask("Where do humanoids keep their balance?")
        await page.wait_for_selector(".tc-bot[aria-busy] .tc-sources a")
        await page.locator(".tc-sources a").first.click()  # a new page, mid-answer
        await page.wait_for_url("**/docs/**")
        answer = await tab.answer()
        assert answer == await tab.rendered(expected(fake_llm))
    assert [f["after_seq"] for f in tab.sent_of("resume")] == [0]  # replayed from the start
    assert await page.locator(".tc-user").count() == 1  # not also listed from history
    assert len(tab.sent_of("ask")) == 1


async def test_token_is_refreshed_before_it_expires(open_tab: OpenTab) -> None:
    tab = await open_tab("/", user="short-lived", ttl=3)
    await tab.open_panel()
    await tab.page.wait_for_function("() => TextbookChat.client.stats.readies >= 3", timeout=10_000)
    assert len(tab.sent_of("auth")) >= 3
    assert await tab.page.evaluate("TextbookChat.client.stats.connects") == 1  # never dropped
    assert not [f for f in tab.received if f["type"] == "error"]


async def test_sign_in_failure_shows_an_error_with_retry(open_tab: OpenTab) -> None:
    token = token_for("late-signer")
    script = (
        "window.getToken = async () => { if (!window.signedIn) throw new Error('signed out');"
        f" return {json.dumps(token)}; }};"
    )
    tab = await open_tab("/", init_script=script)
    await tab.page.locator(".tc-launcher").click()
    status = tab.page.locator(".tc-root[data-state=error] .tc-status")
    await status.wait_for()
    assert "signed out" in await status.inner_text()
    await tab.page.evaluate("window.signedIn = true")
    await tab.page.get_by_role("button", name="Retry").click()
    await tab.page.wait_for_selector(".tc-root[data-state=open]", state="attached")
    assert await tab.page.locator(".tc-status").is_hidden()


async def test_rate_limited_waits_for_retry_after(
    open_tab: OpenTab, services: Services, fake_llm: FakeLLM
) -> None:
    strict = dataclasses.replace(
        services, settings=services.settings.replace(requests_per_minute=1)
    )
    async with LiveServer(strict) as server:
        tab = await open_tab("/", user="eager", server=server)
        await tab.open_panel()
        await tab.ask("first question")
        await tab.answer()
        await tab.ask("second question")
        meta = tab.page.locator(".tc-bot .tc-meta").nth(1)
        await meta.wait_for()
        assert re.search(r"asking again in \d+ s", await meta.inner_text())
        error = [f for f in tab.received if f["type"] == "error"][-1]
        assert error["code"] == "rate_limited" and error["retry_after"] > 0
        assert await tab.page.locator(".tc-stop").is_visible()  # Stop gives up the wait
        await tab.page.locator(".tc-stop").click()
        assert await tab.page.locator(".tc-send").is_enabled()
        assert len(tab.sent_of("ask")) == 2


# ---- safety ---------------------------------------------------------------------------------

HOSTILE = """Here is **bold** and `<b>code</b>`.

<img src=x onerror="alert('img')">
<script>alert('script')</script>
<iframe src="javascript:alert('frame')"></iframe>
[click me](javascript:alert('link')) [again](JaVaScRiPt:alert(1)) [data](data:text/html,<script>alert(2)</script>)
[spaced]( javascript:alert(3)) ![pic](x" onerror="alert(4)) [fine](https://example.org/a_b?q=1&r=2)
<a href="javascript:alert(5)">raw link</a> <svg onload=alert(6)></svg>

```html
<script>alert('in code')</script>
```
"""

FORBIDDEN = """(root) => {
  const bad = [];
  for (const el of root.querySelectorAll('*')) {
    if (['SCRIPT', 'IMG', 'IFRAME', 'SVG', 'OBJECT', 'EMBED', 'svg'].includes(el.tagName)) bad.push(el.tagName);
    for (const a of el.attributes) {
      if (a.name.startsWith('on') || a.name === 'style' || a.name === 'src') bad.push(el.tagName + ' ' + a.name);
      if (a.name === 'href' && !/^https?:/.test(a.value)) bad.push('href ' + a.value);
    }
  }
  return bad;
}"""


async def test_hostile_markdown_renders_as_inert_text(open_tab: OpenTab, fake_llm: FakeLLM) -> None:
    tab = await open_tab("/", user="mallory")
    page = tab.page
    await tab.open_panel()
    with model_config(fake_llm, reply=HOSTILE):
        await tab.ask("Say something nasty")
        text = await tab.answer()
    body = page.locator(".tc-bot .tc-body")
    assert await body.evaluate(FORBIDDEN) == []
    assert "<img src=x onerror=" in text and "<script>alert('script')</script>" in text
    assert await body.locator("strong").inner_text() == "bold"
    assert await body.locator("code").first.inner_text() == "<b>code</b>"
    assert await body.locator("a").evaluate_all("els => els.map(e => e.href)") == [
        "https://example.org/a_b?q=1&r=2"
    ]
    assert "alert('in code')" in await body.locator("pre code").inner_text()
    # The renderer on its own, in this browser, with the tricks HTML parsers fall for.
    tricks = [
        "<scr<script>ipt>alert(1)</script>",
        "[x](java\tscript:alert(1)) [y](\u0001javascript:alert(1)) [z](  javascript:alert(1))",
        "`` ` `` <!-- --><style>*{}</style>",
        "| a | b |\n|---|---|\n| <img src=x onerror=alert(1)> | [t](vbscript:x) |",
        ":::note[<img src=x onerror=alert(1)>]\n<b>inside</b>\n:::",
        '# heading {#x" onmouseover="alert(1)}\n- [l](javascript:alert(1))\n  - `<i>`',
    ]
    html = await page.evaluate(
        "(tricks) => tricks.map((t) => TextbookChat.renderMarkdown(t, {ids: true, book: true})).join('')",
        tricks,
    )
    await page.evaluate(
        "(html) => { const d = document.createElement('div'); d.id = 'probe'; d.innerHTML = html; document.body.append(d); }",
        html,
    )
    assert await page.locator("#probe").evaluate(FORBIDDEN) == []
    await asyncio.sleep(0.2)
    assert tab.dialogs == [] and tab.errors == []


# ---- the chapter reader ---------------------------------------------------------------------


@pytest.fixture
def echo(fake_llm: FakeLLM) -> Iterator[FakeLLM]:
    with model_config(fake_llm, echo=True):
        yield fake_llm


async def test_personalize_asks_for_a_profile_then_streams_the_chapter(
    open_tab: OpenTab, echo: FakeLLM, services: Services
) -> None:
    tab = await open_tab("/docs/vision-language-action", user="new-reader")
    page = tab.page
    original_h2 = await page.locator(".demo-content h2").first.inner_text()
    await page.get_by_role("button", name="Personalize for me").click()
    form = page.locator("form.tc-profile")
    await form.wait_for()
    await page.get_by_label("Software background").fill("Python web developer")
    await page.get_by_label("Hardware background").fill("none")
    await page.get_by_label("Level").select_option("beginner")
    await page.get_by_role("button", name="Save and personalize").click()
    output = page.locator("article .tc-reader-output")
    await output.wait_for()
    await page.wait_for_selector(".tc-reader-status:has-text('Personalized')")
    assert await output.get_attribute("dir") == "ltr"
    assert await output.locator("h2").first.inner_text() == original_h2  # echoed back
    assert await output.locator("pre code").count() >= 1
    profile = await services.store.get_profile("new-reader")
    assert profile is not None and profile.level == "beginner"
    assert "beginner" in echo.chat_requests[-1]["messages"][0]["content"]
    await page.get_by_role("button", name="Show original").click()
    assert await page.locator("article .tc-reader-output").count() == 0
    assert await page.locator(".demo-content h2").first.inner_text() == original_h2


async def test_translate_into_urdu_is_right_to_left(open_tab: OpenTab, echo: FakeLLM) -> None:
    tab = await open_tab("/docs/sensors-and-perception", user="urdu-reader")
    page = tab.page
    language = page.get_by_label("Translate to")
    assert await language.locator("option").first.get_attribute("value") == "ur"
    await page.get_by_role("button", name="Translate").click()
    await page.wait_for_selector(".tc-reader-status:has-text('Translated')")
    output = page.locator("article .tc-reader-output")
    assert await output.get_attribute("dir") == "rtl" and await output.get_attribute("lang") == "ur"
    assert await output.evaluate("el => getComputedStyle(el).direction") == "rtl"
    assert (
        await output.locator("pre").first.evaluate("el => getComputedStyle(el).direction") == "ltr"
    )
    frame = tab.sent_of("chapter")[-1]
    assert frame["mode"] == "translate" and frame["language"] == "ur"
    assert frame["chapter"] == "sensors-and-perception"
    assert "Urdu" in echo.chat_requests[-1]["messages"][0]["content"]


# ---- screenshots for the README (TC_SCREENSHOTS=1) -------------------------------------------

ANSWER = """The **zero-moment point** (ZMP) is the point on the ground where the tipping moments of
gravity and inertia cancel out [1].

- While it stays inside the *support polygon* (the outline of the feet on the ground), the robot
  does not tip over [2].
- Walking controllers plan the ZMP first, then move the centre of mass to follow it.

A simple model is the linear inverted pendulum: `x_zmp = x - (z / g) * x_ddot`.
"""

URDU = """## سینسر اور ادراک

روبوٹ صرف اسی دنیا میں سمجھ داری سے کام کر سکتا ہے جسے وہ ناپ سکے۔ ادراک خام سگنلوں کو ایسے اندازوں میں بدلتا ہے جو باقی نظام کے کام آئیں: جوڑ کہاں ہیں، نیچے کس طرف ہے، اور میز کتنی دور ہے۔

- **پروپریوسیپٹو** سینسر روبوٹ کے اپنے جسم کو ناپتے ہیں، جیسے جوائنٹ انکوڈر (joint encoders)۔
- **ایکسٹیروسیپٹو** سینسر ماحول کو ناپتے ہیں: کیمرے، ڈیپتھ کیمرے اور LiDAR۔

"""


@pytest.mark.skipif(
    not os.environ.get("TC_SCREENSHOTS"), reason="set TC_SCREENSHOTS=1 to write them"
)
async def test_screenshots_for_the_readme(open_tab: OpenTab, fake_llm: FakeLLM) -> None:
    tab = await open_tab("/docs/humanoid-locomotion", user="screenshot")
    page = tab.page
    await page.locator(".demo-content p").first.click(click_count=3)
    await page.locator(".tc-ask-selection").click()
    await screenshot(tab, "widget-open.png")
    with model_config(fake_llm, reply=ANSWER, tokens_per_second=25):
        await tab.ask("What is the zero-moment point, in plain words?")
        await page.wait_for_function(
            "() => (document.querySelector('.tc-bot .tc-body').textContent.match(/ /g) || []).length > 45"
        )
        await screenshot(tab, "widget-streaming.png")
        await tab.answer()
    await page.goto(live_url(page) + "/docs/sensors-and-perception")
    await page.locator(".tc-launcher").click()  # closes the panel this tab left open
    with model_config(fake_llm, reply=URDU):
        await page.get_by_role("button", name="Translate").click()
        await page.wait_for_selector(".tc-reader-status:has-text('Translated')")
    assert await page.locator(".tc-reader-output[dir=rtl]").count() == 1
    await screenshot(tab, "reader-urdu.png", clip={"x": 0, "y": 0, "width": 1280, "height": 500})


def live_url(page: Any) -> str:
    url: str = page.url
    return url[: url.index("/", len("http://"))]
