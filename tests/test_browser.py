"""The Gradio app in a real browser: Debian's headless Chromium driven by Playwright plays a whole battle.

UPDATE_SCREENSHOTS=1 also writes the Arena and Leaderboard screenshots to docs/ (shown in docs/space.md).
"""

import json
import os
import random
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

from assistant.service import Limits
from assistant.store import Store

CHROMIUM = Path("/usr/bin/chromium")
BASE, TUNED = "SmolLM2-135M-Instruct", "smollm2-grpo-demo"
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
def url(store):
    """What ``python app.py`` serves offline: SmolLM2 with the demo adapter (so the screenshots are the
    served app's), on loopback."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from app import build_demo
    from assistant.models import load_for_serving

    loaded = load_for_serving(None, None, None)
    assert list(loaded.adapters) == [TUNED], loaded.describe()
    torch.set_num_threads(1)  # on a shared 2-core machine, two spinning threads are slower than one
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
        page.set_default_timeout(120_000)
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


def buttons(page) -> dict:
    """Which of the Arena's buttons can be clicked now, read in one go in the page: read one by one, a
    stream that ends between two reads shows a state the page never had (Stop and the votes both live)."""
    names = ["Send", "Stop", "Regenerate", *VOTES]
    return page.evaluate(
        """names => Object.fromEntries(names.map(name => {
            const shown = [...document.querySelectorAll("button")].filter(b => b.offsetParent !== null
                && ((b.getAttribute("aria-label") || b.innerText).trim() === name));
            if (shown.length !== 1) throw new Error(`${shown.length} visible buttons named ${name}`);
            return [name, !shown[0].disabled && shown[0].getAttribute("aria-disabled") !== "true"];
        }))""",
        names,
    )


VOTES = ["A is better", "B is better", "Tie", "Both are bad"]


def no_error_badge(page) -> bool:
    """Gradio marks an event's failure with "error" on its outputs and an error toast."""
    return page.locator(".error:visible, .toast-body.error").count() == 0


def test_a_whole_battle_streams_with_the_buttons_that_fit_survives_a_reload_and_moves_the_leaderboard(
    page, store, tmp_path
):
    status = page.locator("#battle-status")
    board = page.locator("#leaderboard")
    page.get_by_role("tab", name="Leaderboard").click()
    assert "No anonymous votes yet" in board.inner_text()
    page.get_by_role("tab", name="Arena").click()
    assert buttons(page) == {"Send": True, "Stop": False, "Regenerate": False, **dict.fromkeys(VOTES, False)}
    assert not page.get_by_label("Model A", exact=True).is_visible()  # the pickers are for named battles

    page.get_by_role("button", name="Send").click()  # an empty message: refused with a warning
    page.locator(".toast-body.warning").get_by_text("the message is empty").wait_for()
    assert no_error_badge(page)

    page.get_by_placeholder("Ask both models").fill("Give me three tips for a good night's sleep.")
    page.get_by_role("button", name="Send").click()
    bot_a, bot_b = page.locator('#pane-a [data-testid="bot"]'), page.locator('#pane-b [data-testid="bot"]')
    states = []

    def read():
        states.append(buttons(page))
        return bot_b.last.inner_text() if bot_b.count() else ""

    seen = watch(read, lambda: page.get_by_role("button", name="A is better").is_enabled(), timeout=600)
    streaming = [s for s in states[:-1] if s["Stop"]]
    assert streaming, states  # the answers were written while the page looked
    assert all(not s["Send"] and not s["Regenerate"] and not any(s[v] for v in VOTES) for s in streaming)
    assert buttons(page) == {"Send": True, "Stop": False, "Regenerate": True, **dict.fromkeys(VOTES, True)}
    assert len(seen) >= 3, seen  # answer B grew in the page, piece by piece
    answer_a = bot_a.last.inner_text()
    assert answer_a and answer_a != bot_b.last.inner_text()
    assert "names are hidden" in status.inner_text()
    for name in (BASE, TUNED):  # in the header and pickers, not in the battle
        assert (
            name not in status.inner_text()
            and name not in page.locator("#pane-a, #pane-b").all_inner_texts()[0]
        )
    assert no_error_badge(page)
    shot(page, tmp_path, "arena.png")

    page.reload()  # the battle is kept in this browser
    page.locator("#pane-a").get_by_text(answer_a[:20]).wait_for()
    page.get_by_role("button", name="A is better").click()
    page.get_by_text("A was ").wait_for()
    (record,) = [json.loads(line) for line in store.files["votes"].read_text().splitlines()]
    assert f"A was {record['model_a']}, B was {record['model_b']}." in status.inner_text()
    seed_a, seed_b = record["turns"][0]["seeds"]  # fresh by default, each side its own, kept for a replay
    assert isinstance(seed_a, int) and isinstance(seed_b, int) and seed_a != seed_b
    # After the vote: only a new battle; the panes carry the names.
    page.get_by_role("button", name="New battle").wait_for()
    assert buttons(page) == {"Send": False, "Stop": False, "Regenerate": False, **dict.fromkeys(VOTES, False)}
    assert record["model_a"] in page.locator("#pane-a").inner_text()
    page.get_by_role("tab", name="Leaderboard").click()
    page.get_by_text(f"| {record['model_a']} |", exact=False).or_(
        board.get_by_text(record["model_a"])
    ).first.wait_for()
    text = board.inner_text()
    assert record["model_a"] in text and record["model_b"] in text and "1 anonymous vote." in text
    assert "none yet: 1 of the 20 votes a rank needs" in text  # no zero-width interval for one vote
    shot(page, tmp_path, "leaderboard.png")
    page.get_by_role("tab", name="Arena").click()
    page.get_by_role("button", name="New battle").click()
    from playwright.sync_api import expect

    expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled()
    assert not buttons(page)["A is better"]


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
        timeout=600,
    )
    seen = [s for s in seen if not s.startswith("waiting for the model")]  # its place in the queue
    # An answer cut at the limit says so on the page; the like stores the answer itself.
    seen = [re.sub(r"\s*\[cut off at the 24-token limit[^\]]*\]$", "", s) for s in seen]
    assert len(seen) >= 3, seen
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False)), seen
    page.get_by_label("Like", exact=True).last.click()
    feedback = store.files["feedback"]
    deadline = time.time() + 30  # the file can exist before its line is written: wait for the line
    while not (feedback.exists() and feedback.read_text().strip()) and time.time() < deadline:
        time.sleep(0.1)
    (record,) = [json.loads(line) for line in feedback.read_text().splitlines()]
    assert record["liked"] is True and record["model"] == TUNED and record["answer"] == seen[-1]


def test_the_evidence_tab_gives_the_committed_verdict_first_and_browses_every_comparison(page):
    from assistant.evidence import REPORTS, Evidence, find
    from assistant.models import demo_dir

    evidence = Evidence(find(type("L", (), {"adapter": None})(), TUNED), TUNED)
    # the sealed test's report where it was read, else the dev report
    assert evidence.folder == next(
        demo_dir() / TUNED / r for r in REPORTS if (demo_dir() / TUNED / r).is_dir()
    )
    worse = evidence.comparisons("worse")
    page.get_by_role("tab", name="Evidence").click()
    verdict = page.locator("#verdict")
    verdict.get_by_text(f"{TUNED} against").wait_for()
    headline = evidence.verdict().splitlines()[1].replace("**", "")
    assert headline in verdict.inner_text()  # the committed report's verdict, first
    assert f"Comparison {evidence.all[0].number}" in page.locator("#comparison").inner_text()
    page.get_by_label("Tuned worse").check()
    page.locator("#comparison").get_by_text(f"Comparison {worse[0].number}").wait_for()
    assert "prefers the base answer" in page.locator("#comparison").inner_text()
    marks = page.locator("#base-answer").inner_text() + page.locator("#tuned-answer").inner_text()
    assert ("cut off at the 256-token limit" in marks) == any(
        "cut off" in m for side in ("base", "tuned") for m in worse[0].marks(side)
    )


def test_a_newcomer_plays_five_battles_and_sees_no_red_error(page, store):
    """Issue 28's walk-through: five anonymous battles in a row, with what a first visitor tries along
    the way (a message too long, Regenerate, every vote); refusals are warnings, never an error badge."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Arena").click()
    send, again = (
        page.get_by_role("button", name="Send", exact=True),
        page.get_by_role("button", name="Regenerate"),
    )
    votes_before = len(store.files["votes"].read_text().splitlines()) if store.files["votes"].exists() else 0
    prompts = [
        "Name a fruit.",
        "How do I boil an egg?",
        "Say hello.",
        "Why is the sky blue?",
        "Name a color.",
    ]
    for i, (prompt, vote) in enumerate(zip(prompts, [*VOTES, VOTES[0]], strict=True)):
        new = page.get_by_role("button", name="New battle")
        if new.is_visible():
            new.click()
        expect(send).to_be_enabled()
        if i == 1:
            page.get_by_placeholder("Ask both models").fill("x" * 9000)
            send.click()
            page.locator(".toast-body.warning").get_by_text("the message is too long").first.wait_for()
            assert no_error_badge(page)
        page.get_by_placeholder("Ask both models").fill(prompt)
        send.click()
        expect(page.get_by_role("button", name=vote)).to_be_enabled(timeout=600_000)
        if i == 3:
            again.click()
            expect(page.get_by_role("button", name=vote)).to_be_disabled()  # answering again
            expect(page.get_by_role("button", name=vote)).to_be_enabled(timeout=600_000)
        page.get_by_role("button", name=vote).click()
        page.get_by_text("A was ").wait_for()
        assert no_error_badge(page), f"battle {i + 1}"
    lines = store.files["votes"].read_text().splitlines()
    assert len(lines) == votes_before + 5
    choices = [json.loads(line)["winner"] for line in lines[-5:]]
    assert len(set(choices)) == 4, choices  # each of the four votes was recorded as itself
