"""Gradio Space: an arena of the served models (the base and every adapter on it), a chat, a leaderboard.

    python app.py                                   # serves on http://127.0.0.1:7860
    python app.py --adapters ./outputs/phi2-grpo,./outputs/phi2-dpo --port 7861

A thin shell over ``assistant``: the models are loaded once at start (``load_for_serving``), battles
are run by ``assistant.arena``, votes and Chat-tab likes are kept by ``assistant.store`` (and pushed to
the dataset repo ``ASSISTANT_FEEDBACK_REPO`` when it is set), and the leaderboard is
``assistant.leaderboard`` (as ``python -m train.evaluate --votes``), refitted in the background. The
tabs and the typed API are built by ``space`` (one module each); this file assembles them and starts
the server. docs/space.md describes the Space."""

import argparse
import logging
import os
import signal
import sys

import gradio as gr

from assistant.arena import Arena, about
from assistant.generation import RequestError
from assistant.leaderboard import LiveLeaderboard
from assistant.models import ModelLoadError, default_device, load_for_serving
from assistant.service import Assistant, Limits
from assistant.store import Store
from space.api import register_api
from space.arena import build_arena
from space.chat import build_chat
from space.common import settings_controls
from space.evidence import build_evidence
from space.leaderboard import build_leaderboard, leaderboard_board

log = logging.getLogger("app")


def build_demo(loaded, limits: Limits | None = None, store: Store | None = None, rng=None) -> gr.Blocks:
    """The whole UI for one loaded base with its adapters (tests pass a small one): the tabs of ``space``
    on one assistant, arena, store and live leaderboard."""
    assistant = Assistant(loaded, limits)
    store = store or Store("user_data")
    arena = Arena(assistant, store, rng)
    live = LiveLeaderboard.of(store)
    title = f"Open Assistant preference tuning: {len(assistant.models)} models"
    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}\n{loaded.describe()}\n\nYour messages, the answers, votes and likes are kept on "
            f"{store.where} (see About this arena)." + (f" {store.problem}" if store.problem else "")
        )
        with gr.Accordion("About this arena", open=False):
            gr.Markdown(about(assistant, store))
        controls = settings_controls(assistant)
        board = leaderboard_board(live)  # the Arena's votes update it; it stands in its own tab
        with gr.Tab("Arena"):
            build_arena(arena, live, controls, board, demo)
        with gr.Tab("Chat"):
            build_chat(assistant, store, controls)
        with gr.Tab("Leaderboard"):
            build_leaderboard(live, board, demo)
        with gr.Tab("Evidence"):
            build_evidence(assistant)
        register_api(arena, live)
    # Every event may reach the model's batcher at once: it batches them and says "busy" beyond its queue.
    limits = assistant.limits
    demo.queue(max_size=limits.max_waiting, default_concurrency_limit=limits.max_batch + limits.max_waiting)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", help="base model id or folder (env ASSISTANT_BASE_MODEL)")
    parser.add_argument(
        "--adapters", "--adapter", help="comma-separated adapter folders or Hub ids (env ASSISTANT_ADAPTERS)"
    )
    parser.add_argument("--revision", help="Hub revision of the adapters (env ASSISTANT_REVISION)")
    parser.add_argument("--data-dir", default=os.environ.get("ASSISTANT_DATA_DIR", "user_data"))
    parser.add_argument("--feedback-repo", default=os.environ.get("ASSISTANT_FEEDBACK_REPO") or None)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up checks, one line each
    if default_device() == "cpu":
        # PEFT imports bitsandbytes whenever it is installed, and its import compiles kernels with
        # torch.compile: 2-4 s of a CPU start for a library that only 4-bit bases use (GPU only here).
        sys.modules.setdefault("bitsandbytes", None)
    try:
        limits = Limits.from_env()
        loaded = load_for_serving(args.base_model, args.adapters, args.revision)
    except (ModelLoadError, RequestError) as error:
        sys.exit(f"error: {error}")
    print(loaded.describe(), flush=True)
    store = Store(args.data_dir, args.feedback_repo)
    signal.signal(signal.SIGTERM, stopper(store))  # a Space restart: push the last votes before going
    try:
        build_demo(loaded, limits, store).launch(server_name=args.host, server_port=args.port)
    finally:
        store.close()


def stopper(store: Store):
    def stop(signum, frame):
        last = f": pushing the last votes to {store.repo_id}" if store.scheduler is not None else ""
        log.info("stopping on signal %d%s", signum, last)
        raise SystemExit(0)  # out of launch(), through main's finally

    return stop


if __name__ == "__main__":
    main()
