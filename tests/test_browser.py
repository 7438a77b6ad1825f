"""The Gradio app in a real browser: Debian's headless Chromium driven by Playwright plays a whole battle.

UPDATE_SCREENSHOTS=1 also writes the Arena and Leaderboard screenshots to docs/ (shown in docs/space.md).
"""

import json
import os
import random
import shutil
import socket
import time
from pathlib import Path

import pytest

from assistant.models import load_model
from assistant.service import Limits
from assistant.store import Store
from tests._helpers_space import make_random_lora

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parent.parent / "docs"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def url(smollm2_dir, tmp_path_factory, store):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from app import build_demo

    folder = tmp_path_factory.mktemp("adapters")
    adapters = [
        str(make_random_lora(smollm2_dir, folder / n, s)) for s, n in enumerate(["tuned-a", "tuned-b"])
    ]
    loaded = load_model(str(smollm2_dir), adapters)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo(loaded, Limits(max_new_tokens=24), store, rng=random.Random(0))
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


def shot(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOTS"):
        DOCS.mkdir(exist_ok=True)
        shutil.copy(path, DOCS / name)


def test_a_whole_battle_streams_hides_the_names_reveals_them_on_the_vote_and_moves_the_leaderboard(
    page, store, tmp_path
):
    status = page.locator("#battle-status")
    board = page.locator("#leaderboard")
    page.get_by_role("tab", name="Leaderboard").click()
    assert "No anonymous votes yet" in board.inner_text()
    page.get_by_role("tab", name="Arena").click()

    page.get_by_placeholder("Ask both models").fill("Give me three tips for a good night's sleep.")
    page.get_by_role("button", name="Send").click()
    bot_a, bot_b = page.locator('#pane-a [data-testid="bot"]'), page.locator('#pane-b [data-testid="bot"]')
    generating = page.locator(".generating")  # Gradio marks outputs that are still streaming
    seen = watch(
        lambda: bot_b.last.inner_text() if bot_b.count() else "",
        lambda: bot_a.count() > 0 and bot_b.count() > 0 and generating.count() == 0,
    )
    assert len(seen) >= 3, seen  # answer B grew in the page, piece by piece
    assert bot_a.last.inner_text() and bot_a.last.inner_text() != bot_b.last.inner_text()
    assert "names are hidden" in status.inner_text()
    for name in ("tuned-a", "tuned-b", "SmolLM2-135M-Instruct"):  # in the header and pickers, not the battle
        assert (
            name not in status.inner_text()
            and name not in page.locator("#pane-a, #pane-b").all_inner_texts()[0]
        )
    shot(page, tmp_path, "arena.png")

    page.get_by_role("button", name="A is better").click()
    page.get_by_text("A was ").wait_for()
    (record,) = [json.loads(line) for line in store.files["votes"].read_text().splitlines()]
    assert f"A was {record['model_a']}, B was {record['model_b']}." in status.inner_text()
    page.get_by_role("tab", name="Leaderboard").click()
    page.get_by_text(f"| {record['model_a']} |", exact=False).or_(
        board.get_by_text(record["model_a"])
    ).first.wait_for()
    text = board.inner_text()
    assert record["model_a"] in text and record["model_b"] in text and "1 anonymous vote." in text
    shot(page, tmp_path, "leaderboard.png")


def test_a_chat_answer_appears_in_pieces_and_a_like_is_stored(page, store):
    page.get_by_role("tab", name="Chat").click()
    box = page.get_by_placeholder("Type a message...")
    box.fill("What is the capital of France?")
    box.press("Enter")
    bot = page.locator('[data-testid="bot"]:visible')
    stop = page.locator("button.stop-button")  # shown while the answer streams
    seen = watch(
        lambda: bot.last.inner_text() if bot.count() else "",
        lambda: bot.count() > 0 and not stop.is_visible(),
    )
    assert len(seen) >= 3, seen
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False)), seen
    page.get_by_label("Like", exact=True).last.click()
    feedback = store.files["feedback"]
    deadline = time.time() + 30  # the file can exist before its line is written: wait for the line
    while not (feedback.exists() and feedback.read_text().strip()) and time.time() < deadline:
        time.sleep(0.1)
    (record,) = [json.loads(line) for line in feedback.read_text().splitlines()]
    assert record["liked"] is True and record["model"] == "tuned-a" and record["answer"] == seen[-1]
