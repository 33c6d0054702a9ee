"""The web console in a real headless Chromium against ``python -m server`` (embedded STT).

Chromium's fake microphone plays the flite fixture ("hello world this is a test of the
transcription server / please remind me to call the doctor tomorrow morning"); the Live page
must show the words pocketsphinx hears. Screenshots of every page are written to the
``artifacts`` directory (``$TRIOSCRIBE_ARTIFACTS_DIR`` or a pytest temporary directory); with
``TRIOSCRIBE_UPDATE_SCREENSHOTS=1`` the Live one is also copied to ``docs/console-live.png``.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.console.conftest import ROOT, Receiver, ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.slow

WAIT_MS = 30_000


@pytest.fixture(name="context")
def _context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context (empty sessionStorage) with the microphone allowed."""
    context = browser.new_context(
        permissions=["microphone"], viewport={"width": 1100, "height": 800}
    )
    context.set_default_timeout(WAIT_MS)
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    try:
        yield context
    finally:
        context.close()


def _page(context: BrowserContext) -> tuple[Page, list[str]]:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # the console itself must never trip its Content-Security-Policy
    page.on(
        "console",
        lambda msg: "Content Security Policy" in msg.text and errors.append(msg.text),
    )
    return page, errors


def _sign_in(page: Page, url: str, token: str) -> None:
    """Sign in with the keyboard only: the token field has focus; Enter submits."""
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_label("API token")).to_be_focused()
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    expect(page.locator("#who-name")).to_have_text(re.compile(r"Signed in as \w+"))


def _fits_width(page: Page) -> bool:
    return bool(
        page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    )


def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_sign_in_page_errors_csp_and_401(
    context: BrowserContext, console_server: ServerProcess, artifacts: pathlib.Path
) -> None:
    from playwright.sync_api import expect

    page, errors = _page(context)
    page.goto(console_server.url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.screenshot(path=artifacts / "sign-in.png")

    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("invalid or revoked token")  # error.message
    assert page.evaluate("() => sessionStorage.length") == 0

    with page.expect_console_message(lambda msg: "Content Security Policy" in msg.text):
        blocked = page.evaluate(
            """() => {
                const s = document.createElement("script");
                s.textContent = "window.__inline = 1";
                document.head.append(s);
                return window.__inline === undefined;
            }"""
        )
    assert blocked, "the Content-Security-Policy must forbid inline script"
    errors.clear()  # that violation was this test's own

    _sign_in(page, console_server.url + "/", console_server.token("bob"))
    expect(page.get_by_role("heading", name="Live")).to_be_visible()
    page.evaluate("() => sessionStorage.setItem('trioscribe.token', 'revoked')")
    page.get_by_role("link", name="Conversations").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()  # 401 -> sign-in
    expect(page.get_by_role("alert")).to_have_text("invalid or revoked token")
    assert errors == []


def test_live_speech_to_processed_conversation_and_webhook_delivery(
    context: BrowserContext,
    console_server: ServerProcess,
    receiver: Receiver,
    artifacts: pathlib.Path,
) -> None:
    from playwright.sync_api import expect

    page, errors = _page(context)
    _sign_in(page, console_server.url + "/", console_server.token("alice"))

    # Webhooks: register memory_created to the loopback receiver; the secret is shown once.
    page.get_by_role("link", name="Webhooks").click()
    page.get_by_label("Kind").select_option("memory_created")
    page.get_by_label("URL").fill(receiver.url)
    page.get_by_role("button", name="Register").click()
    expect(page.locator("#secret-value")).to_have_text(re.compile(r"^whsec_"))
    first_secret = page.locator("#secret-value").inner_text()

    # Live: the fake microphone speaks; its words appear, segments upserted by id.
    page.get_by_role("link", name="Live").click()
    page.get_by_role("button", name="Start").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#live-phase")).to_have_text("Live")
    transcript = page.locator("#transcript")
    expect(transcript).to_contain_text("hello")
    expect(transcript).to_contain_text("doctor")
    ids = page.locator("#transcript li").evaluate_all("(items) => items.map((li) => li.dataset.id)")
    assert len(ids) == len(set(ids)) >= 1
    page.screenshot(path=artifacts / "live.png")
    if os.environ.get("TRIOSCRIBE_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(artifacts / "live.png", ROOT / "docs" / "console-live.png")

    # A dropped connection: the server restarts on its port (the session is closed 1001); the
    # page reconnects with backoff and a fresh ticket, and the same conversation goes on.
    before = len(transcript.inner_text())
    console_server.stop()
    expect(page.locator("#live-phase")).to_have_text("Reconnecting…")
    console_server.start()
    expect(page.locator("#live-phase")).to_have_text("Live")
    # (segments are upserted by id: the resumed speech may extend the last segment in place)
    _until(lambda: len(transcript.inner_text()) > before, 30, "speech after reconnecting")
    expect(page.locator("#live-events")).to_contain_text("connection closed (1001")

    # Finish: the live session ends its conversation; the processing events reach the page.
    page.get_by_role("button", name="Finish conversation").click()
    events = page.locator("#live-events")
    expect(events).to_contain_text("memory_processing_started")
    expect(events).to_contain_text("memory_created")
    expect(page.locator("#live-finished")).to_contain_text("(completed)")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#live-phase")).to_have_text("Stopped")
    expect(page.get_by_role("button", name="Start")).to_be_enabled()

    # Conversations: one completed (resumed across the reconnect); open it from the list.
    page.get_by_role("link", name="Conversations").click()
    page.get_by_label("Status").select_option("completed")
    items = page.locator("#conversation-list li")
    expect(items).to_have_count(1)
    items.first.get_by_role("link").click()
    expect(page.locator("#conversation-transcript")).to_contain_text("doctor")
    assert len(page.locator("#conversation-transcript").inner_text()) > before  # both sockets
    expect(page.locator("#overview")).not_to_be_empty()
    expect(page.locator(".badge.status-completed")).to_be_visible()
    page.screenshot(path=artifacts / "conversation.png", full_page=True)

    page.get_by_role("button", name="☆ Star").click()
    expect(page.locator("#star")).to_have_attribute("aria-pressed", "true")
    page.get_by_label("Title").fill("Call the doctor")
    page.get_by_role("button", name="Rename").click()
    expect(page.locator("#conversation-title")).to_contain_text("Call the doctor")
    page.get_by_role("button", name="Discard").click()
    page.get_by_role("button", name="Restore").click()
    expect(page.get_by_role("button", name="Discard")).to_be_visible()

    # The memory_created delivery: received signed, logged as delivered, redeliverable.
    _until(lambda: len(receiver.received()) >= 1, 15, "the memory_created webhook")
    (request,) = receiver.received()
    assert request["headers"]["webhook-signature"].startswith("v1,")
    page.get_by_role("link", name="Webhooks").click()
    page.get_by_role("button", name=re.compile("^Deliveries of memory_created")).click()
    rows = page.locator("#delivery-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("delivered")
    expect(rows.first.locator("td.num")).to_have_text("1")
    page.screenshot(path=artifacts / "webhooks.png", full_page=True)
    rows.first.get_by_role("button", name=re.compile("^Redeliver")).click()
    expect(page.get_by_role("status").filter(has_text="Redelivery queued.")).to_be_visible()
    _until(lambda: len(receiver.received()) >= 2, 15, "the redelivery")
    again = receiver.received()[1]
    assert again["headers"]["webhook-id"] == request["headers"]["webhook-id"]
    page.get_by_role("button", name=re.compile("^Rotate secret")).click()
    expect(page.locator("#secret-value")).to_have_text(re.compile(r"^whsec_"))
    assert page.locator("#secret-value").inner_text() != first_secret

    # Phone width: the list reads without horizontal scrolling; delete with confirmation.
    page.set_viewport_size({"width": 390, "height": 844})
    page.get_by_role("link", name="Conversations").click()
    page.get_by_label("Status").select_option("completed")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("Call the doctor")
    expect(items.first).to_contain_text("starred")
    assert _fits_width(page)
    page.screenshot(path=artifacts / "conversations-phone.png", full_page=True)
    link = items.first.get_by_role("link")
    href = link.get_attribute("href")
    link.click()
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    # The deleted one is gone from the list. (Not "the list is empty": Chromium's fake
    # microphone loops its file, so another conversation may have been processed meanwhile.)
    expect(page.get_by_role("heading", name="Conversations", exact=True)).to_be_visible()
    expect(page.locator("#conversations-empty:visible").or_(items).first).to_be_visible()
    expect(page.locator(f'a[href="{href}"]')).to_have_count(0)
    assert errors == []


def test_list_paging_reads_link_x_next_cursor_and_the_object_shape(
    context: BrowserContext, console_server: ServerProcess
) -> None:
    """The list's paging helper, imported by the page itself (CSP allows same-origin modules)."""
    page, errors = _page(context)
    page.goto(console_server.url + "/")
    pages = page.evaluate(
        """async () => {
            const { page } = await import("/console/conversations.js");
            const h = (pairs) => new Headers(pairs);
            const q = "limit=20&statuses=completed&offset=40";
            return [
                page([{ id: "a" }], h({ Link: '</v1/conversations?limit=20&cursor=L>; rel="next"',
                                       "X-Next-Cursor": "X" }), q),
                page([{ id: "a" }], h({ "X-Next-Cursor": "X" }), q),
                page({ conversations: [{ id: "b" }], next_cursor: "N" }, h({}), q),
                page([], h({}), q),
            ];
        }"""
    )
    assert pages == [
        {"items": [{"id": "a"}], "next": "/v1/conversations?limit=20&cursor=L"},
        {"items": [{"id": "a"}], "next": "/v1/conversations?limit=20&statuses=completed&cursor=X"},
        {"items": [{"id": "b"}], "next": "/v1/conversations?limit=20&statuses=completed&cursor=N"},
        {"items": [], "next": None},
    ]
    assert errors == []
