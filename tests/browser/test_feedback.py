"""The widget's rating controls and its clear-history action, in real headless Chromium against
the live server (fixtures as in test_widget.py)."""

from __future__ import annotations

from typing import Any

from server.tools.fake_llm import FakeLLM
from tests.browser import test_widget
from tests.browser.test_widget import OpenTab, Tab
from tests.conftest import LiveServer, model_config

# the page fixtures of the widget's own tests: Chromium, and a tab with a reader's token
open_tab = test_widget.open_tab

RATING = "SELECT rating, comment FROM ratings WHERE message_id = $1::uuid"


async def _rows(live: LiveServer, query: str, *args: Any) -> list[tuple[Any, ...]]:
    async with live.services.store._conn() as conn:
        return [tuple(r) for r in await conn.fetch(query, *args)]


async def _pressed(tab: Tab, name: str, n: int = 0) -> str:
    value: str = (
        await tab.page.get_by_role("button", name=name, exact=True)
        .nth(n)
        .get_attribute("aria-pressed")
    )
    return value


async def test_rating_an_answer_from_the_keyboard_with_a_comment(
    open_tab: OpenTab, live: LiveServer, fake_llm: FakeLLM
) -> None:
    tab = await open_tab("/", user="critic")
    page = tab.page
    await tab.open_panel()
    await tab.ask("What is the zero-moment point?")
    await tab.answer()
    message = next(f for f in tab.received if f["type"] == "start")["message_id"]
    up = page.get_by_role("button", name="Helpful", exact=True)
    down = page.get_by_role("button", name="Not helpful", exact=True)
    assert await page.get_by_role("group", name="Rate this answer").count() == 1
    assert (await _pressed(tab, "Helpful"), await _pressed(tab, "Not helpful")) == (
        "false",
        "false",
    )
    comment = page.get_by_label("Comment (optional)")
    assert await comment.is_hidden()

    await down.focus()
    await page.keyboard.press("Space")
    await page.wait_for_selector(".tc-rate-btn[data-value=down][aria-pressed=true]")
    assert await _rows(live, RATING, message) == [(-1, None)]
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.getAttribute('aria-label')") == (
        "Comment (optional)"
    )
    await page.keyboard.type("It never says how the support polygon is measured.")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")  # "Send comment"
    await page.wait_for_selector(".tc-rate-note:has-text('Thanks!')")
    assert await _rows(live, RATING, message) == [
        (-1, "It never says how the support polygon is measured.")
    ]

    await up.focus()
    await page.keyboard.press("Enter")  # changed its mind
    await page.wait_for_selector(".tc-rate-btn[data-value=up][aria-pressed=true]")
    assert await _pressed(tab, "Not helpful") == "false"
    assert (await _rows(live, RATING, message))[0][0] == 1
    await up.click()  # pressed again: withdrawn
    await page.wait_for_selector(".tc-rate-note:has-text('Rating withdrawn.')")
    assert await _pressed(tab, "Helpful") == "false"
    assert await _rows(live, RATING, message) == []

    # Rated again, then a new page load shows the rating from the server's history.
    await down.click()
    await page.wait_for_selector(".tc-rate-btn[data-value=down][aria-pressed=true]")
    await page.reload()  # the panel was open: it opens again by itself
    await page.wait_for_selector(".tc-rate-btn[data-value=down][aria-pressed=true]")
    assert await page.get_by_label("Comment (optional)").input_value() == (
        "It never says how the support polygon is measured."
    )
    assert tab.errors == []


# The page's client takes every frame through `_frame`: ends of streams wait in `heldBack`.
HOLD_BACK_ENDS = """() => {
  window.heldBack = [];
  const client = TextbookChat.client;
  window.takeFrame = client._frame.bind(client);
  client._frame = (f) => (f.type === "done" ? window.heldBack.push(f) : window.takeFrame(f));
}"""
RELEASE_ENDS = """() => {
  delete TextbookChat.client._frame;
  window.heldBack.forEach((f) => window.takeFrame(f));
}"""


async def test_clear_history_asks_first_then_deletes_on_the_server(
    open_tab: OpenTab, live: LiveServer, fake_llm: FakeLLM
) -> None:
    tab = await open_tab("/", user="forgetful")
    page = tab.page
    await tab.open_panel()
    await tab.ask("What is a VLA model?")
    await tab.answer()
    clear = page.get_by_role("button", name="Clear history")
    await clear.click()
    dialog = page.get_by_role("alertdialog")
    assert await dialog.is_visible() and "cannot be undone" in await dialog.inner_text()
    assert await page.evaluate("document.activeElement.textContent") == "Cancel"
    await page.keyboard.press("Escape")  # closes the question, not the panel
    assert await dialog.is_hidden() and await page.locator("#tc-panel").is_visible()
    assert await page.evaluate("document.activeElement.textContent") == "Clear history"
    conversations = "SELECT count(*) FROM conversations WHERE user_id = $1"
    assert await _rows(live, conversations, "forgetful") == [(1,)]

    # While an answer streams: it is cancelled first, then everything goes. The cancelled
    # answer's end comes on the socket, the deletion's answer over HTTP: the page may get them
    # in either order, so its end is held back here until the deletion is shown (it spoke over
    # the news once when it came later).
    with model_config(fake_llm, tokens_per_second=15, tokens_per_answer=300):
        await tab.ask("Tell me everything about sensors")
        await page.wait_for_selector(".tc-bot[aria-busy] .tc-sources a")
        await page.evaluate(HOLD_BACK_ENDS)
        await clear.click()
        await dialog.get_by_role("button", name="Delete").click()
        await page.wait_for_selector(".tc-sr-only:has-text('Your history was deleted.')")
        await page.wait_for_function("window.heldBack.length > 0", polling=50)
        await page.evaluate(RELEASE_ENDS)
        announced = page.locator(".tc-sr-only[aria-live]")
        assert await announced.inner_text() == "Your history was deleted."
    assert (
        await page.locator(".tc-user").count() == 0 and await page.locator(".tc-bot").count() == 0
    )
    assert await dialog.is_hidden()
    done = [f for f in tab.received if f["type"] == "done"]
    assert done[-1]["finish_reason"] == "cancelled"
    assert await _rows(live, conversations, "forgetful") == [(0,)]
    assert await page.evaluate("document.activeElement.id") == "tc-input"
    assert await page.locator(".tc-send").is_enabled()

    # The next question starts a new conversation; "everything" also takes the profile.
    await tab.ask("What is Moravec's paradox?")
    await tab.answer()
    assert "conversation_id" not in tab.sent_of("ask")[-1]
    await page.evaluate(
        "TextbookChat.api('/v1/profile', {method: 'PUT', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({software_background: 'web', hardware_background: '', level: 'beginner'})})"
    )
    assert await _rows(live, "SELECT count(*) FROM profiles WHERE user_id = $1", "forgetful") == [
        (1,)
    ]
    await clear.click()
    await page.get_by_label("Also delete my profile and all my data").check()
    await dialog.get_by_role("button", name="Delete").click()
    await page.wait_for_function("() => !document.querySelector('.tc-user')")
    await dialog.wait_for(state="hidden")
    for table in ("conversations", "profiles", "messages"):
        assert await _rows(
            live, f"SELECT count(*) FROM {table} WHERE user_id = $1", "forgetful"
        ) == [(0,)]
    assert tab.errors == []
