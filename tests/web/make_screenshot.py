"""Makes docs/webui.png, the README's picture of the chat page: a real `edge serve` of the embedded
model, two questions at temperature 0, then a screenshot. Not a test (pytest does not collect it):
run `.venv/bin/python tests/web/make_screenshot.py [OUT.png]` with chromium and playwright installed."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: support.py
os.environ.setdefault("EDGE_CACHE_DIR", str(Path.home() / ".cache" / "edge-tests"))  # as tests/conftest.py

from playwright.sync_api import expect, sync_playwright  # noqa: E402
from support import Server  # noqa: E402

QUESTIONS = ["Write a Python function that adds two numbers.", "Now explain it in three short bullet points."]


def ask(page, question: str) -> None:
    replies = page.locator(".msg.assistant").count()
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")
    expect(page.locator(".msg.assistant")).to_have_count(replies + 1)
    expect(page.locator(".msg.streaming")).to_have_count(0, timeout=120_000)


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = Server(["--ctx-size", "2048"], {}, Path(folder) / "serve.log")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
                page = browser.new_page(base_url=server.url, viewport={"width": 1200, "height": 760})
                page.goto("/")
                page.fill("#temperature", "0")
                page.fill("#max-tokens", "200")
                page.fill("#seed", "7")
                for question in QUESTIONS:
                    ask(page, question)
                page.wait_for_timeout(2500)  # one more status poll after the last reply
                page.locator("#prompt").blur()
                page.screenshot(path=out)
                browser.close()
        finally:
            server.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "docs" / "webui.png")
