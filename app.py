"""Gradio Space: an arena of the served models (the base and every adapter on it), a chat, a leaderboard.

    python app.py                                   # serves on http://127.0.0.1:7860
    python app.py --adapters ./outputs/phi2-grpo,./outputs/phi2-dpo --port 7861

A thin shell over ``assistant``: the models are loaded once at start (``load_for_serving``), battles
are run by ``assistant.arena``, votes and Chat-tab likes are kept by ``assistant.store`` (and pushed to
the dataset repo ``ASSISTANT_FEEDBACK_REPO`` when it is set), and the leaderboard is
``assistant.leaderboard`` (as ``python -m train.evaluate --votes``), refitted in the background.
docs/space.md describes the Space."""

import argparse
import logging
import os
import signal
import sys
import uuid
from contextlib import closing

import gradio as gr

from assistant.arena import CHOICES, Arena, BattleGone, utc_now
from assistant.generation import RequestError
from assistant.leaderboard import LiveLeaderboard
from assistant.models import ModelLoadError, default_device, load_for_serving
from assistant.prompt import DEFAULT_SYSTEM, content_text, normalize_history
from assistant.service import DEFAULTS, Assistant, Limits
from assistant.store import Store

log = logging.getLogger("app")

try:  # ZeroGPU Spaces: marks the functions that need the GPU; absent elsewhere
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:

    def gpu(fn):
        return fn


EXAMPLES = [
    "Explain the difference between a list and a tuple in Python.",
    "Give me three tips for a good night's sleep.",
    "Write a short, friendly email declining a meeting invitation.",
    "What causes the seasons on Earth?",
]
ANONYMOUS, NAMED = "Anonymous: two models drawn at random", "Named: pick the two models"


def user_error(error: Exception, what: str) -> gr.Error:
    """The message the user sees; anything unexpected is logged, and the app keeps serving."""
    if isinstance(error, RequestError):  # an expected refusal: one quiet line, no traceback
        log.info("%s refused: %s", what, error)
        return gr.Error(str(error), print_exception=False)
    log.exception("%s failed", what)
    return gr.Error(f"{what} failed: {error}")


def build_demo(loaded, limits: Limits | None = None, store: Store | None = None, rng=None) -> gr.Blocks:
    """The whole UI for one loaded base with its adapters (tests pass a small one)."""
    assistant = Assistant(loaded, limits)
    limits = assistant.limits
    store = store or Store("user_data")
    arena = Arena(assistant, store, rng)
    live = LiveLeaderboard.of(store)
    tuned = assistant.tuned_name

    def settings(temperature, top_p, max_new_tokens, seed):
        return assistant.settings(temperature, top_p, max_new_tokens, seed)

    def board_text() -> str:
        return live.markdown()  # the last result: a refit runs in the background after each vote

    def board_when_refitted() -> str:  # after a vote's answer: the board once the refit counts it
        live.wait(timeout=30)
        return live.markdown()

    # --- Chat ------------------------------------------------------------------------------------

    @gpu
    def chat(message, history, model, system, temperature, top_p, max_new_tokens, seed):
        try:
            prepared = assistant.prepare(
                message, history, system, settings(temperature, top_p, max_new_tokens, seed)
            )
            if prepared.notice:
                gr.Warning(prepared.notice)
            with closing(assistant.chat(prepared, model)) as answers:  # closed on stop: generation stops
                for answer in answers:
                    yield answer.text
        except Exception as error:
            raise user_error(error, "generation") from None

    def feedback(data: gr.LikeData, history, model):
        history = normalize_history(history)
        record = {
            "type": "feedback",
            "id": uuid.uuid4().hex,
            "time": utc_now(),
            "model": model or assistant.chat_model,
            "liked": data.liked,
            "answer": content_text(data.value),
            "conversation": history[: data.index[0] + 1 if isinstance(data.index, list) else data.index + 1],
        }
        try:
            store.append("feedback", record)
        except OSError as error:
            raise gr.Error(f"the feedback could not be saved ({error.strerror})") from None

    # --- Arena -----------------------------------------------------------------------------------

    def panes(battle, partial=None):
        """Both chat panes: the battle's turns, and the turn being answered."""
        turns = list(battle.turns) + ([partial] if partial else [])
        return tuple(
            [
                m
                for t in turns
                for m in ({"role": "user", "content": t["prompt"]}, {"role": "assistant", "content": t[s]})
            ]
            for s in ("a", "b")
        )

    def status(battle) -> str:
        name_a, name_b = battle.names()
        if battle.winner is not None:
            return (
                f"**A was {name_a}, B was {name_b}.** Your vote: {CHOICES[battle.winner]}. "
                f"Saved on {store.where}. Start a new battle to go on."
            )
        if name_a:
            return f"Named battle: A is **{name_a}**, B is **{name_b}**."
        return "Anonymous battle: the names are hidden until you vote."

    def streamed(battle, answers, prompt):
        with closing(answers):
            for a, b in answers:
                yield panes(battle, {"prompt": prompt, "a": a.text, "b": b.text})

    @gpu
    def ask(battle_id, message, mode, model_a, model_b, system, temperature, top_p, max_new_tokens, seed):
        try:
            chosen = settings(temperature, top_p, max_new_tokens, seed)
            try:
                battle = arena.get(battle_id) if battle_id else None
            except BattleGone as gone:
                gr.Warning(f"{gone}: this message starts it.")
                battle = None
            if battle is None or battle.winner is not None:
                battle = arena.start(model_a, model_b) if mode == NAMED else arena.start()
            for a, b in streamed(battle, arena.ask(battle.id, message, system, chosen), message):
                yield battle.id, a, b, status(battle), ""
            yield battle.id, *panes(battle), status(battle), ""
        except Exception as error:
            raise user_error(error, "the battle") from None

    @gpu
    def regenerate(battle_id):
        try:
            battle = arena.get(battle_id)
            prompt = battle.turns[-1]["prompt"] if battle.turns else ""
            yield from streamed(battle, arena.regenerate(battle_id), prompt)
            yield panes(battle)
        except Exception as error:
            raise user_error(error, "regenerate") from None

    def vote(choice, battle_id, warned):
        try:
            arena.vote(battle_id, choice)
        except Exception as error:
            raise user_error(error, "the vote") from None
        if store.problem and not warned:
            gr.Warning(store.problem)  # once per session; the votes stay on this server
        battle = arena.get(battle_id)
        return status(battle), board_text(), warned or bool(store.problem)

    def new_battle(mode, model_a, model_b):
        where = f"A is **{model_a}**, B is **{model_b}**" if mode == NAMED else "the names stay hidden"
        return None, [], [], f"New battle: ask something ({where} until you vote)."

    # --- typed API (fixed names; the UI's own events are private) ---------------------------------

    @gpu
    def battle_api(
        message: str,
        battle_id: str = "",
        model_a: str = "",
        model_b: str = "",
        system: str = DEFAULT_SYSTEM,
        temperature: float = DEFAULTS.temperature,
        top_p: float = DEFAULTS.top_p,
        max_new_tokens: int = assistant.default_max_new_tokens,
        seed: int = DEFAULTS.seed,
    ) -> dict:
        """One turn of a battle: a new battle when battle_id is empty (named when model_a and model_b are
        given, else anonymous). Returns battle_id, turn, answer_a, answer_b, and model_a / model_b
        (null while an anonymous battle has no vote)."""
        try:
            chosen = settings(temperature, top_p, max_new_tokens, seed)
            battle = arena.get(battle_id) if battle_id else arena.start(model_a or None, model_b or None)
            *_, (a, b) = arena.ask(battle.id, message, system, chosen)
        except Exception as error:
            raise user_error(error, "the battle") from None
        name_a, name_b = battle.names()
        return {
            "battle_id": battle.id,
            "turn": len(battle.turns),
            "answer_a": a.text,
            "answer_b": b.text,
            "model_a": name_a,
            "model_b": name_b,
        }

    def vote_api(battle_id: str, choice: str) -> dict:
        """Vote on a battle: choice is a, b, tie or both_bad. Returns the revealed names and where the
        vote is kept (and why only locally, when the dataset repo is out of reach)."""
        try:
            record = arena.vote(battle_id, choice)
        except Exception as error:
            raise user_error(error, "the vote") from None
        return {
            "model_a": record["model_a"],
            "model_b": record["model_b"],
            "winner": choice,
            "stored_in": store.where,
            "problem": store.problem,
        }

    def leaderboard_api() -> dict:
        """The last Bradley-Terry ratings, 95% intervals and vote counts (``updating``: a refit runs)."""
        try:
            return live.board()
        except ValueError as error:
            raise gr.Error(f"the leaderboard cannot be computed: {error}") from None

    @gpu
    def compare_api(
        prompt: str,
        system: str = DEFAULT_SYSTEM,
        temperature: float = DEFAULTS.temperature,
        top_p: float = DEFAULTS.top_p,
        max_new_tokens: int = assistant.default_max_new_tokens,
        seed: int = DEFAULTS.seed,
    ) -> tuple[str, str]:
        """The base's and the first adapter's answers to one prompt, same settings and seed, one batch."""
        try:
            prepared = assistant.prepare(
                prompt, [], system, settings(temperature, top_p, max_new_tokens, seed)
            )
            *_, (base, tuned_answer) = assistant.compare(prepared)
        except Exception as error:
            raise user_error(error, "compare") from None
        return base.text, tuned_answer.text

    # --- layout ----------------------------------------------------------------------------------

    title = f"Open Assistant preference tuning: {len(assistant.models)} models"
    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}\n{loaded.describe()}\n\nVotes and likes are saved on {store.where}."
            + (f" {store.problem}" if store.problem else "")
        )
        with gr.Accordion("Settings", open=False):
            system = gr.Textbox(
                DEFAULT_SYSTEM, label="System prompt", lines=2, placeholder="none (as in training)"
            )
            with gr.Row():
                temperature = gr.Slider(
                    0, 2, value=DEFAULTS.temperature, step=0.05, label="Temperature (0 = greedy)"
                )
                top_p = gr.Slider(0.05, 1, value=DEFAULTS.top_p, step=0.05, label="Top-p")
                max_new_tokens = gr.Slider(
                    1,
                    limits.max_new_tokens,
                    value=assistant.default_max_new_tokens,
                    step=1,
                    label="Max new tokens",
                )
                seed = gr.Number(DEFAULTS.seed, label="Seed", precision=0)
        controls = [system, temperature, top_p, max_new_tokens, seed]

        with gr.Tab("Arena"):
            battle_id, warned = gr.State(None), gr.State(False)
            with gr.Row():
                mode = gr.Radio([ANONYMOUS, NAMED], value=ANONYMOUS, label="Battle", scale=3)
                model_a = gr.Dropdown(assistant.models, value=assistant.base_name, label="Named: model A")
                model_b = gr.Dropdown(assistant.models, value=tuned, label="Named: model B")
                base_vs_tuned = gr.Button(f"Base vs {tuned}", size="sm")
            with gr.Row(equal_height=True):
                pane_a = gr.Chatbot(label="Model A", height=380, elem_id="pane-a")
                pane_b = gr.Chatbot(label="Model B", height=380, elem_id="pane-b")
            status_box = gr.Markdown(
                "Anonymous battle: the names are hidden until you vote.", elem_id="battle-status"
            )
            with gr.Row():
                prompt = gr.Textbox(show_label=False, placeholder="Ask both models", scale=5)
                send = gr.Button("Send", variant="primary", scale=1)
                stop = gr.Button("Stop", variant="stop", scale=1)
            with gr.Row():
                vote_buttons = {key: gr.Button(label) for key, label in CHOICES.items()}
            with gr.Row():
                again = gr.Button("Regenerate")
                fresh = gr.Button("New battle")
            gr.Examples([[e] for e in EXAMPLES], inputs=[prompt])

        with gr.Tab("Chat"):
            model = gr.Dropdown(assistant.models, value=assistant.chat_model, label="Model")
            chatbot = gr.Chatbot(feedback_options=("Like", "Dislike"), height=420)
            gr.ChatInterface(
                chat,
                chatbot=chatbot,
                additional_inputs=[model, *controls],
                examples=[[e] for e in EXAMPLES],
                api_name="chat",
                fill_height=False,
            )
            chatbot.like(feedback, [chatbot, model], None, api_visibility="private")

        with gr.Tab("Leaderboard"):
            board = gr.Markdown(board_text(), elem_id="leaderboard")
            refresh = gr.Button("Refresh")

        asking = gr.on(
            [send.click, prompt.submit],
            ask,
            inputs=[battle_id, prompt, mode, model_a, model_b, *controls],
            outputs=[battle_id, pane_a, pane_b, status_box, prompt],
            api_visibility="private",
        )
        regenerating = again.click(regenerate, [battle_id], [pane_a, pane_b], api_visibility="private")
        stop.click(None, cancels=[asking, regenerating], api_visibility="private")
        for key, button in vote_buttons.items():
            button.click(
                lambda b, w, key=key: vote(key, b, w),
                [battle_id, warned],
                [status_box, board, warned],
                api_visibility="private",
            ).success(board_when_refitted, None, board, api_visibility="private", concurrency_limit=None)
        fresh.click(
            new_battle,
            [mode, model_a, model_b],
            [battle_id, pane_a, pane_b, status_box],
            api_visibility="private",
        )
        base_vs_tuned.click(
            lambda: (NAMED, assistant.base_name, tuned, *new_battle(NAMED, assistant.base_name, tuned)),
            None,
            [mode, model_a, model_b, battle_id, pane_a, pane_b, status_box],
            api_visibility="private",
        )
        refresh.click(board_text, None, board, api_visibility="private")
        demo.load(board_text, None, board, api_visibility="private")
        gr.api(battle_api, api_name="battle")
        gr.api(vote_api, api_name="vote")
        gr.api(leaderboard_api, api_name="leaderboard")
        gr.api(compare_api, api_name="compare")

    # Every event may reach the model's batcher at once: it batches them and says "busy" beyond its queue.
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
    signal.signal(signal.SIGTERM, stop)  # a Space restart: push the last votes before going
    try:
        build_demo(loaded, limits, store).launch(server_name=args.host, server_port=args.port)
    finally:
        store.close()


def stop(signum, frame):
    log.info("stopping on signal %d: pushing the last votes", signum)
    raise SystemExit(0)  # out of launch(), through main's finally


if __name__ == "__main__":
    main()
