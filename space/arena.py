"""The Arena tab: two models answer side by side, their names hidden until the vote (anonymous) or
chosen (named); the vote reveals them and updates the leaderboard (FastChat's
``gradio_block_arena_anony`` and ``gradio_block_arena_named``, one tab here)."""

from contextlib import closing
from types import SimpleNamespace

import gradio as gr

from assistant.arena import CHOICES, Arena, BattleGone, revealed
from assistant.leaderboard import LiveLeaderboard
from assistant.service import Assistant
from space.common import EXAMPLES, gpu, user_error

ANONYMOUS, NAMED = "Anonymous: two models drawn at random", "Named: pick the two models"


def panes(battle, partial=None):
    """Both chat panes: the battle's turns, and the turn being answered."""

    def pane(side):
        if partial is None:
            return battle.history(side)
        answering = {"role": "assistant", "content": partial[side]}
        return [*battle.history(side), {"role": "user", "content": partial["prompt"]}, answering]

    return pane("a"), pane("b")


def status(battle, where: str) -> str:
    name_a, name_b = battle.names()
    if battle.winner is not None:
        return f"**{revealed(battle)}** Saved on {where}. Start a new battle to go on."
    if name_a:
        return f"Named battle: A is **{name_a}**, B is **{name_b}**."
    return "Anonymous battle: the names are hidden until you vote."


def new_battle(mode, model_a, model_b):
    where = f"A is **{model_a}**, B is **{model_b}**" if mode == NAMED else "the names stay hidden"
    return None, [], [], f"New battle: ask something ({where} until you vote)."


def handlers(arena: Arena, live: LiveLeaderboard) -> SimpleNamespace:
    """The tab's event functions, on one arena and its live leaderboard."""
    assistant, store = arena.assistant, arena.store

    def streamed(battle, answers, prompt):
        with closing(answers):
            for a, b in answers:
                yield panes(battle, {"prompt": prompt, "a": a.text, "b": b.text})

    @gpu
    def ask(battle_id, message, mode, model_a, model_b, system, temperature, top_p, max_new_tokens, seed):
        try:
            chosen = assistant.settings(temperature, top_p, max_new_tokens, seed)
            try:
                battle = arena.get(battle_id) if battle_id else None
            except BattleGone as gone:
                gr.Warning(f"{gone}: this message starts it.")
                battle = None
            if battle is None or battle.winner is not None:
                battle = arena.start(model_a, model_b) if mode == NAMED else arena.start()
            for a, b in streamed(battle, arena.ask(battle.id, message, system, chosen), message):
                yield battle.id, a, b, status(battle, store.where), ""
            yield battle.id, *panes(battle), status(battle, store.where), ""
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
        return status(battle, store.where), live.markdown(), warned or bool(store.problem)

    def board_when_refitted() -> str:  # after a vote's answer: the board once the refit counts it
        live.wait(timeout=30)
        return live.markdown()

    return SimpleNamespace(ask=ask, regenerate=regenerate, vote=vote, board_when_refitted=board_when_refitted)


def layout(assistant: Assistant) -> SimpleNamespace:
    """The tab's components, in the caller's ``gr.Tab``."""
    tuned = assistant.tuned_name
    ui = SimpleNamespace(battle_id=gr.State(None), warned=gr.State(False))
    with gr.Row():
        ui.mode = gr.Radio([ANONYMOUS, NAMED], value=ANONYMOUS, label="Battle", scale=3)
        ui.model_a = gr.Dropdown(assistant.models, value=assistant.base_name, label="Named: model A")
        ui.model_b = gr.Dropdown(assistant.models, value=tuned, label="Named: model B")
        ui.base_vs_tuned = gr.Button(f"Base vs {tuned}", size="sm")
    with gr.Row(equal_height=True):
        ui.pane_a = gr.Chatbot(label="Model A", height=380, elem_id="pane-a")
        ui.pane_b = gr.Chatbot(label="Model B", height=380, elem_id="pane-b")
    ui.status_box = gr.Markdown(
        "Anonymous battle: the names are hidden until you vote.", elem_id="battle-status"
    )
    with gr.Row():
        ui.prompt = gr.Textbox(show_label=False, placeholder="Ask both models", scale=5)
        ui.send = gr.Button("Send", variant="primary", scale=1)
        ui.stop = gr.Button("Stop", variant="stop", scale=1)
    with gr.Row():
        ui.vote_buttons = {key: gr.Button(label) for key, label in CHOICES.items()}
    with gr.Row():
        ui.again = gr.Button("Regenerate")
        ui.fresh = gr.Button("New battle")
    gr.Examples([[e] for e in EXAMPLES], inputs=[ui.prompt])
    return ui


def build_arena(arena: Arena, live: LiveLeaderboard, controls: list, board: gr.Markdown) -> None:
    """The tab's layout and events, inside the caller's ``gr.Tab``; a vote updates ``board``."""
    assistant, ui, on = arena.assistant, layout(arena.assistant), handlers(arena, live)
    base, tuned = assistant.base_name, assistant.tuned_name
    panes_out = [ui.battle_id, ui.pane_a, ui.pane_b, ui.status_box]
    asking = gr.on(
        [ui.send.click, ui.prompt.submit],
        on.ask,
        inputs=[ui.battle_id, ui.prompt, ui.mode, ui.model_a, ui.model_b, *controls],
        outputs=[*panes_out, ui.prompt],
        api_visibility="private",
    )
    regenerating = ui.again.click(
        on.regenerate, [ui.battle_id], [ui.pane_a, ui.pane_b], api_visibility="private"
    )
    ui.stop.click(None, cancels=[asking, regenerating], api_visibility="private")
    for key, button in ui.vote_buttons.items():
        button.click(
            lambda b, w, key=key: on.vote(key, b, w),
            [ui.battle_id, ui.warned],
            [ui.status_box, board, ui.warned],
            api_visibility="private",
        ).success(on.board_when_refitted, None, board, api_visibility="private", concurrency_limit=None)
    ui.fresh.click(new_battle, [ui.mode, ui.model_a, ui.model_b], panes_out, api_visibility="private")
    ui.base_vs_tuned.click(
        lambda: (NAMED, base, tuned, *new_battle(NAMED, base, tuned)),
        None,
        [ui.mode, ui.model_a, ui.model_b, *panes_out],
        api_visibility="private",
    )
