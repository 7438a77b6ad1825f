"""The Gradio app in a real browser: Debian's headless Chromium driven by Playwright."""

import os
import socket
import time
from pathlib import Path

import pytest

from assistant.generation import Limits
from assistant.models import load_model
from tests._helpers_space import make_random_lora

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def url(smollm2_dir, tmp_path_factory):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from app import build_demo

    adapter = make_random_lora(smollm2_dir, tmp_path_factory.mktemp("lora"))
    loaded = load_model(str(smollm2_dir), str(adapter))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo(
        loaded, Limits(max_new_tokens=16), votes=tmp_path_factory.mktemp("votes") / "votes.jsonl"
    )
    _, local_url, _ = demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True
    )
    yield local_url
    demo.close()


@pytest.fixture(scope="module")
def page(url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(url)
        yield page
        browser.close()


def watch(read, done, timeout=120.0) -> list[str]:
    """Every distinct value ``read()`` shows until ``done()`` (polled every 20 ms)."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        value = read()
        if value and (not seen or seen[-1] != value):
            seen.append(value)
        if done():
            return seen
        time.sleep(0.02)
    raise AssertionError(f"timed out; saw {seen!r}")


def test_chat_answer_appears_in_pieces_then_compare_shows_both(page, tmp_path):
    assert "Serving" in page.get_by_text("Serving").first.inner_text()
    box = page.get_by_placeholder("Type a message...")
    box.fill("What is the capital of France?")
    box.press("Enter")
    bot = page.locator('[data-testid="bot"]')
    stop = page.locator("button.stop-button")  # shown while the answer streams
    seen = watch(
        lambda: bot.last.inner_text() if bot.count() else "",
        lambda: bot.count() > 0 and not stop.is_visible(),
    )
    assert len(seen) >= 3, seen  # the answer grew in the page, piece by piece
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False)), seen

    page.get_by_role("tab", name="Compare").click()
    page.get_by_label("Prompt").fill("Name a fruit.")
    page.get_by_role("button", name="Compare", exact=True).click()
    left, right = page.get_by_label("Left:", exact=False), page.get_by_label("Right:", exact=False)
    generating = page.locator(".generating")  # Gradio marks outputs that are still streaming
    seen = watch(
        lambda: right.input_value(),
        lambda: bool(left.input_value() and right.input_value()) and generating.count() == 0,
    )
    assert len(seen) >= 2, seen
    assert left.input_value() != right.input_value()
    shot = tmp_path / "compare.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.get_by_text("Right", exact=True).click()
    page.get_by_role("button", name="Vote").click()
    page.get_by_text("Vote saved (right)").wait_for()
