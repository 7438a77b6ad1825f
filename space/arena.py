"""The Arena tab: two models answer side by side, their names hidden until the vote (anonymous) or
chosen (named); the vote reveals them and updates the leaderboard (FastChat's
``gradio_block_arena_anony`` and ``gradio_block_arena_named``, one tab here).

The buttons follow the battle: Send while it can take a message, Stop while it answers, the votes and
Regenerate once both answers are in, and after the vote only New battle (as FastChat's arena). A refusal
(an empty message, a second vote) is a warning toast, not an error on the panes. The battle's id is kept
in the browser (``gr.BrowserState``), so a reload shows the battle again, or says that it was lost.
"""

import threading
from types import SimpleNamespace

import gradio as gr

from assistant.arena import CHOICES, Arena, BattleGone, limit_mark, revealed
from assistant.generation import RequestError
from assistant.leaderboard import LiveLeaderboard
from assistant.service import Assistant
from space.common import EXAMPLES, gpu, refuse

ANONYMOUS, NAMED = "Anonymous: two models drawn at random", "Named: pick the two models"
HIDDEN = "Anonymous battle: the names are hidden until you vote."


def pane_text(answer, limit: int) -> str:
    """A pane's answer while it streams: its place in the queue before the first token, the limit's
    mark once it stops there."""
    if answer.queued:
        return f"*waiting for the model: place {answer.queued} in the queue…*"
    if answer.done and answer.at_limit(limit):
        return f"{answer.text}\n\n{limit_mark(limit)}"
    return answer.text


def panes(battle, partial=None):
    """Both chat panes, with the models' names once the voter may see them: the battle's turns, and the
    turn being answered (``partial``: prompt, answers, limit)."""
    names = battle.names() if battle is not None else (None, None)
    values = []
    for side, name in zip("ab", names, strict=True):
        history = battle.history(side, marked=True) if battle is not None else []
        if partial is not None:
            answer = pane_text(partial[side], partial["limit"])
            history += [
                {"role": "user", "content": partial["prompt"]},
                {"role": "assistant", "content": answer},
            ]
        label = f"Model {side.upper()}" + (f": {name}" if name else "")
        values.append(gr.update(value=history, label=label))
    return tuple(values)


def status(battle, where: str) -> str:
    if battle is None:
        return "Ask something: two models answer side by side."
    name_a, name_b = battle.names()
    if battle.winner is not None:
        return f"**{revealed(battle)}** Saved on {where}. Start a new battle to go on."
    if name_a:
        return f"Named battle: A is **{name_a}**, B is **{name_b}**."
    return HIDDEN


def progress(a, b, limit: int) -> str:
    """The status line while a turn is answered: tokens so far on each side, or the queue."""
    if a.queued:
        return f"Waiting for the model: place {a.queued} in the queue (others' answers are being written)."
    return f"Answering: A {a.tokens}, B {b.tokens} of at most {limit} tokens each."


def controls(battle, answering: bool = False, clear: bool = False) -> tuple:
    """Send, the prompt box (emptied when ``clear``), Stop, Regenerate and the votes, live only when
    they can act."""
    voted = battle is not None and battle.winner is not None
    answered = battle is not None and bool(battle.turns) and not voted and not answering
    can_send = not answering and not voted
    box = dict(value="") if clear else {}
    return (
        gr.update(interactive=can_send),
        gr.update(
            interactive=can_send, placeholder="Start a new battle" if voted else "Ask both models", **box
        ),
        gr.update(interactive=answering),
        gr.update(interactive=answered),
        *[gr.update(interactive=answered) for _ in CHOICES],
    )


def handlers(arena: Arena, live: LiveLeaderboard) -> SimpleNamespace:
    """The tab's event functions, on one arena and its live leaderboard."""
    assistant, store = arena.assistant, arena.store

    def lookup(battle_id):
        """The battle, or None; a forgotten one says why in a warning."""
        try:
            return arena.get(battle_id) if battle_id else None
        except BattleGone as gone:
            gr.Warning(f"{gone}.")
            return None

    def streamed(battle, answers, prompt, limit):
        """The panes, status and controls as both answers grow."""
        for a, b in answers:
            partial = {"prompt": prompt, "a": a, "b": b, "limit": limit}
            yield (*panes(battle, partial), progress(a, b, limit), *controls(battle, answering=True))

    def settled(battle, clear=False):
        return (*panes(battle), status(battle, store.where), *controls(battle, clear=clear))

    @gpu
    def ask(
        battle_id,
        message,
        mode,
        model_a,
        model_b,
        system,
        temperature,
        top_p,
        max_new_tokens,
        seed,
        repetition,
    ):
        stop = threading.Event()  # set when Stop closes this generator: the batcher drops the turn
        battle = None
        try:
            battle = lookup(battle_id)
            chosen = assistant.settings(temperature, top_p, max_new_tokens, seed, repetition)
            assistant.prepare(message, [], system, chosen)  # refused before a battle is started
            if battle is None or battle.winner is not None:
                battle = arena.start(model_a, model_b) if mode == NAMED else arena.start()
            # The buttons change at once, before the model's first token.
            yield battle.id, *panes(battle), "Sending…", *controls(battle, answering=True)
            answers = arena.ask(battle.id, message, system, chosen, stop)
            for update in streamed(battle, answers, message, chosen.max_new_tokens):
                yield battle.id, *update
            yield battle.id, *settled(battle, clear=True)
        except Exception as error:  # the buttons settle first, then the warning (or the error) shows
            yield (battle.id if battle else None), *settled(battle)
            refuse(error, "the battle")
        finally:
            stop.set()

    @gpu
    def regenerate(battle_id):
        stop = threading.Event()
        battle = None
        try:
            battle = arena.get(battle_id)
            prompt = battle.turns[-1]["prompt"] if battle.turns else ""
            limit = battle.settings.max_new_tokens if battle.settings else 0
            yield from streamed(battle, arena.regenerate(battle_id, stop), prompt, limit)
            yield settled(battle)
        except Exception as error:
            yield settled(battle)
            refuse(error, "regenerate")
        finally:
            stop.set()

    def after_stop(battle_id):
        """The controls once Stop has ended the answer being written (the turn is not kept)."""
        battle = lookup(battle_id)
        return status(battle, store.where), *controls(battle)

    def vote(choice, battle_id, warned):
        try:
            arena.vote(battle_id, choice)
        except Exception as error:
            refuse(error, "the vote")
            return (gr.skip(),) * (5 + len(controls(None)))
        if store.problem and not warned:
            gr.Warning(store.problem)  # once per session; the votes stay on this server
        battle = arena.get(battle_id)
        return (
            status(battle, store.where),
            live.markdown(),
            warned or bool(store.problem),
            *settled(battle)[:2],
            *controls(battle),
        )

    def restore(battle_id):
        """A page (re)load: the battle kept in this browser, or a plain word that it was lost."""
        if not battle_id:
            return None, *settled(None)
        try:
            battle = arena.get(battle_id)
        except RequestError as error:
            lost = f"The battle you had open is lost ({error}). Ask something to start another."
            return None, *panes(None), lost, *controls(None)
        return battle.id, *settled(battle)

    def fresh(mode, model_a, model_b):
        where = f"A is **{model_a}**, B is **{model_b}**" if mode == NAMED else "the names stay hidden"
        return None, *panes(None), f"New battle: ask something ({where} until you vote).", *controls(None)

    def board_when_refitted() -> str:  # after a vote's answer: the board once the refit counts it
        live.wait(timeout=30)
        return live.markdown()

    return SimpleNamespace(
        ask=ask,
        regenerate=regenerate,
        after_stop=after_stop,
        vote=vote,
        restore=restore,
        fresh=fresh,
        board_when_refitted=board_when_refitted,
    )


def layout(assistant: Assistant) -> SimpleNamespace:
    """The tab's components, in the caller's ``gr.Tab``."""
    tuned = assistant.tuned_name
    # The battle's id lives in the browser, so that a reload finds the battle again. A fixed secret (it
    # guards nothing: the id is the browser's own) lets a page opened before a restart read its id back and
    # say that the battle was lost, where a fresh random one would silently start over.
    ui = SimpleNamespace(
        battle_id=gr.BrowserState(None, storage_key="arena-battle", secret="arena-battle-id"),
        warned=gr.State(False),
    )
    with gr.Row(equal_height=True):
        ui.mode = gr.Radio([ANONYMOUS, NAMED], value=ANONYMOUS, label="Battle", scale=3)
        ui.model_a = gr.Dropdown(
            assistant.models,
            value=assistant.base_name,
            label="Model A",
            visible=False,
            scale=2,
            min_width=220,
        )
        ui.model_b = gr.Dropdown(
            assistant.models, value=tuned, label="Model B", visible=False, scale=2, min_width=220
        )
        ui.base_vs_tuned = gr.Button(f"Base vs {tuned} (named: not rated)", size="sm", scale=1)
    with gr.Row(equal_height=True):
        ui.pane_a = gr.Chatbot(label="Model A", height=380, elem_id="pane-a", feedback_options=None)
        ui.pane_b = gr.Chatbot(label="Model B", height=380, elem_id="pane-b", feedback_options=None)
    ui.status_box = gr.Markdown(HIDDEN, elem_id="battle-status")
    with gr.Row():
        ui.prompt = gr.Textbox(show_label=False, placeholder="Ask both models", scale=5)
        ui.send = gr.Button("Send", variant="primary", scale=1)
        ui.stop = gr.Button("Stop", variant="stop", scale=1, interactive=False)
    with gr.Row():
        ui.vote_buttons = {key: gr.Button(label, interactive=False) for key, label in CHOICES.items()}
    with gr.Row():
        ui.again = gr.Button("Regenerate", interactive=False)
        ui.fresh = gr.Button("New battle")
    gr.Examples([[e] for e in EXAMPLES], inputs=[ui.prompt])
    return ui


def build_arena(arena: Arena, live: LiveLeaderboard, controls_in: list, board: gr.Markdown, demo) -> None:
    """The tab's layout and events, inside the caller's ``gr.Tab``; a vote updates ``board``; each page
    load of ``demo`` restores the browser's battle."""
    assistant, ui, on = arena.assistant, layout(arena.assistant), handlers(arena, live)
    base, tuned = assistant.base_name, assistant.tuned_name
    buttons = [ui.send, ui.prompt, ui.stop, ui.again, *ui.vote_buttons.values()]
    shown = [ui.pane_a, ui.pane_b, ui.status_box, *buttons]
    private = dict(api_visibility="private")
    asking = gr.on(
        [ui.send.click, ui.prompt.submit],
        on.ask,
        inputs=[ui.battle_id, ui.prompt, ui.mode, ui.model_a, ui.model_b, *controls_in],
        outputs=[ui.battle_id, *shown],
        **private,
    )
    regenerating = ui.again.click(on.regenerate, [ui.battle_id], shown, **private)
    ui.stop.click(
        on.after_stop, [ui.battle_id], [ui.status_box, *buttons], cancels=[asking, regenerating], **private
    )
    for key, button in ui.vote_buttons.items():
        button.click(
            lambda b, w, key=key: on.vote(key, b, w),
            [ui.battle_id, ui.warned],
            [ui.status_box, board, ui.warned, ui.pane_a, ui.pane_b, *buttons],
            **private,
        ).success(on.board_when_refitted, None, board, concurrency_limit=None, **private)
    ui.fresh.click(on.fresh, [ui.mode, ui.model_a, ui.model_b], [ui.battle_id, *shown], **private)
    ui.mode.change(
        lambda mode: [gr.update(visible=mode == NAMED)] * 2, ui.mode, [ui.model_a, ui.model_b], **private
    )
    ui.base_vs_tuned.click(
        lambda: (NAMED, base, tuned, *on.fresh(NAMED, base, tuned)),
        None,
        [ui.mode, ui.model_a, ui.model_b, ui.battle_id, *shown],
        **private,
    )
    demo.load(on.restore, [ui.battle_id], [ui.battle_id, *shown], **private)
