"""The chat page in a real browser (Debian's chromium driven by Playwright) against a real
`edge serve` of the embedded model. The steps share one page and run in order, as a person would:
send and watch the reply stream, stop a long reply, reload, then the renderer's safety, API keys
and a narrow window on pages of their own. Screenshots go to $EDGE_TEST_ARTIFACTS/webui (default:
pytest's temporary folder)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import API_KEY, MODEL, PRICE, PRICED_MODEL, Server, metric, wait_for_metric

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need Playwright's Python package: pip install playwright "
    "(never `playwright install`: it downloads a browser; these tests use the system's chromium)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="browser tests need a chromium on PATH: apt-get install chromium")
expect = sync_api.expect
SEED = 7


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("EDGE_TEST_ARTIFACTS")
    folder = Path(root) / "webui" if root else tmp_path_factory.mktemp("webui")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"browser screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, url: str, width: int = 1280, height: int = 820):
    """A fresh browser profile (empty localStorage) on `url`; uncaught page errors fail the test."""
    context = browser.new_context(base_url=url, viewport={"width": width, "height": height})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.set_default_timeout(60_000)
    return page


@pytest.fixture(scope="module")
def page(browser, server: Server) -> Iterator[object]:
    page = open_page(browser, server.url)
    yield page
    assert not page.errors
    page.context.close()


def configure(page, max_tokens: int, temperature: float = 0, seed: int = SEED) -> None:
    page.fill("#temperature", str(temperature))
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#seed", str(seed))


def stored_chat(page) -> dict:
    """The current conversation as the page saved it in localStorage."""
    return page.evaluate("""() => {
        const id = JSON.parse(localStorage.getItem('edge.current.v1'));
        return JSON.parse(localStorage.getItem('edge.chats.v1')).find((chat) => chat.id === id);
    }""")


def record_reply_lengths(page) -> None:
    """Record the last reply's text length at every DOM change, in the page (no polling gaps)."""
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const bodies = document.querySelectorAll('.msg.assistant .body');
            if (bodies.length) window.__lengths.push(bodies[bodies.length - 1].textContent.length);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
    }""")


def wait_until_idle(page) -> None:
    expect(page.locator("#stop")).to_be_disabled(timeout=120_000)
    expect(page.locator(".msg.streaming")).to_have_count(0)


def test_1_a_reply_streams_in(page, server: Server, http: httpx.Client, artifacts: Path) -> None:
    page.goto("/")
    expect(page.locator("#model")).to_contain_text(MODEL)
    expect(page.locator("#model")).to_contain_text("1024 tokens of context")
    configure(page, max_tokens=96)
    record_reply_lengths(page)
    question = "Write a Python function that adds two numbers."
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")
    wait_until_idle(page)
    lengths = [n for n in page.evaluate("window.__lengths") if n > 0]
    assert len(set(lengths)) >= 2, f"the reply did not grow while streaming: {lengths}"
    page.screenshot(path=artifacts / "1-streamed.png", full_page=True)

    reply = stored_chat(page)["messages"][-1]
    # The page's SSE parsing lost nothing: the same request, whole, gives the same text and usage.
    whole = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": question}],
        "temperature": 0, "seed": SEED, "max_tokens": 96}).json()
    assert reply["content"] == whole["choices"][0]["message"]["content"]
    usage = whole["usage"]
    assert reply["stats"]["completion_tokens"] == usage["completion_tokens"]
    foot = page.locator(".msg.assistant .foot").last
    expect(foot).to_contain_text(f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens")
    expect(foot).to_contain_text("tok/s")
    expect(foot).to_contain_text("cost $0")
    expect(foot.get_by_role("button", name="Copy this reply")).to_be_visible()
    expect(page.locator(".msg.user .body").last).to_have_text(question)


def test_2_stop_frees_the_slot(page, server: Server, artifacts: Path) -> None:
    configure(page, max_tokens=900)  # the test server's context is 1024: a reply of many seconds
    cancelled = metric(server, "edge_requests_total", {"status": "cancelled"})
    page.fill("#prompt", "Tell me a very long story about a dragon who learns to cook, with many chapters.")
    page.click("#send")
    page.wait_for_function("() => document.querySelector('.msg.streaming .body')?.textContent.length > 40")
    assert metric(server, "edge_busy_slots") == 1, "the reply should still be running"
    # The status panel, fed from /metrics, sees the busy slot too (it polls every 2 s).
    expect(page.locator('[data-metric="busy"] .value')).to_have_text("1", timeout=10_000)
    page.wait_for_function("() => Number(document.querySelector('[data-metric=rate] .value').textContent) > 0",
                           timeout=10_000)  # recent tokens/s, from two polls of the token counter
    assert page.locator('[data-metric="busy"] svg rect').count() >= 1  # the bar of the busy slot
    page.screenshot(path=artifacts / "2-streaming.png", full_page=True)
    page.click("#stop")
    wait_until_idle(page)
    wait_for_metric(server, "edge_busy_slots", 0, timeout=30)
    assert metric(server, "edge_requests_total", {"status": "cancelled"}) == cancelled + 1
    expect(page.locator(".msg.assistant .foot").last).to_contain_text("stopped")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator('[data-metric="busy"] .value')).to_have_text("0", timeout=10_000)
    page.screenshot(path=artifacts / "2-stopped.png", full_page=True)


def test_3_the_conversation_survives_a_reload(page, artifacts: Path) -> None:
    before = stored_chat(page)
    texts = page.locator("#messages .body").all_inner_texts()
    assert len(before["messages"]) == 4
    page.reload()
    expect(page.locator("#model")).to_contain_text(MODEL)
    assert page.locator("#messages .body").all_inner_texts() == texts
    assert stored_chat(page) == before
    expect(page.locator(".msg.assistant .foot").last).to_contain_text("stopped")
    expect(page.locator("#chats .open[aria-current=true]")).to_have_text(before["title"])
    # A new chat starts empty; the old one stays in the list and opens again.
    page.click("#new-chat")
    expect(page.locator("#chats li")).to_have_count(2)
    expect(page.locator(".msg")).to_have_count(0)
    page.locator("#chats .open", has_text=before["title"]).click()
    expect(page.locator(".msg")).to_have_count(4)
    page.screenshot(path=artifacts / "3-reloaded.png", full_page=True)


HOSTILE = ("Here is <script>window.__pwned = 1</script> and <img src=x onerror=\"window.__pwned = 2\">.\n\n"
           "**bold** and `<b>code</b>` and [a link](javascript:window.__pwned=3) and [docs](https://example.org/)\n\n"
           "```html\n<script>window.__pwned = 4</script>\n```\n\n- one <iframe src=\"/\"></iframe>\n- two")


def test_4_markup_in_a_reply_renders_as_text(browser, server: Server, artifacts: Path) -> None:
    page = open_page(browser, server.url)
    page.goto("/")
    chat = {"id": "c1", "title": "hostile", "system": "", "updated": 1, "messages": [
        {"role": "user", "content": "<script>window.__pwned = 5</script>", "stats": None},
        {"role": "assistant", "content": HOSTILE, "stats": {"prompt_tokens": 3, "completion_tokens": 9}}]}
    page.evaluate("""(chat) => {
        localStorage.setItem('edge.chats.v1', JSON.stringify([chat]));
        localStorage.setItem('edge.current.v1', JSON.stringify(chat.id));
    }""", chat)
    page.reload()
    messages = page.locator("#messages")
    expect(messages.locator(".msg")).to_have_count(2)
    for tag in ("script", "img", "iframe", "b"):
        assert messages.locator(tag).count() == 0, f"a <{tag}> element came from model text"
    assert page.evaluate("window.__pwned") is None
    text = messages.inner_text()
    assert "<script>window.__pwned = 1</script>" in text and "<script>window.__pwned = 5</script>" in text
    assert "<img src=x onerror=" in text
    expect(messages.locator("strong")).to_have_text("bold")
    expect(messages.locator("p code")).to_have_text("<b>code</b>")
    expect(messages.locator(".codeblock pre code")).to_have_text("<script>window.__pwned = 4</script>")
    expect(messages.locator("li")).to_have_count(2)
    assert messages.locator("a").count() == 1  # only the https link; javascript: stays text
    assert messages.locator("a").get_attribute("href") == "https://example.org/"
    page.screenshot(path=artifacts / "4-markup-as-text.png", full_page=True)
    assert not page.errors
    page.context.close()


def test_5_a_server_with_keys(browser, priced_server: Server, artifacts: Path) -> None:
    page = open_page(browser, priced_server.url)
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda request: sent.append((request.url, request.headers.get("authorization"))))
    page.goto("/")
    expect(page.locator("#model")).to_contain_text("needs an API key")
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Tab")  # the change event: the page asks /v1/models again, with the key
    expect(page.locator("#model")).to_contain_text(PRICED_MODEL)
    configure(page, max_tokens=8)
    page.fill("#prompt", "Hi")
    page.press("#prompt", "Enter")
    wait_until_idle(page)
    stats = stored_chat(page)["messages"][-1]["stats"]
    assert stats["estimated_cost"] == pytest.approx(stats["total_tokens"] * PRICE / 1e6)
    cost = float(format(stats["estimated_cost"], ".2g"))  # two digits, as the page's toPrecision(2)
    shown = format(cost, ".10f").rstrip("0")
    expect(page.locator(".msg.assistant .foot").last).to_contain_text(f"cost ${shown}")
    chat_calls = [auth for url, auth in sent if url.endswith("/v1/chat/completions")]
    assert chat_calls == [f"Bearer {API_KEY}"]
    assert all(auth is None for url, auth in sent if url.endswith("/metrics"))
    assert json.loads(page.evaluate("localStorage.getItem('edge.settings.v1')"))["apiKey"] == API_KEY
    page.screenshot(path=artifacts / "5-api-key.png", full_page=True)
    assert not page.errors
    page.context.close()


def test_6_narrow_window_and_keyboard(browser, server: Server, artifacts: Path) -> None:
    page = open_page(browser, server.url, width=380, height=760)
    page.goto("/")
    expect(page.locator("#model")).to_contain_text(MODEL)
    assert page.evaluate("document.documentElement.scrollWidth") <= 380, "the page scrolls sideways"
    for selector in ("#prompt", "#send", "#stop", "#new-chat"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 380, selector
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, textarea, select')]
        .filter((field) => !field.labels.length && !field.getAttribute('aria-label')).map((field) => field.id)""")
    assert unlabelled == []
    # Shift+Enter is a new line, not a send; the focused control shows an outline.
    page.focus("#prompt")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#prompt") == "line one\nline two"
    expect(page.locator(".msg")).to_have_count(0)
    page.keyboard.press("Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert page.evaluate("document.activeElement.id") == "send" and outline != "none"
    page.screenshot(path=artifacts / "6-narrow.png", full_page=True)
    assert not page.errors
    page.context.close()
