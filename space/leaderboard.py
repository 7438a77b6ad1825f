"""The Leaderboard tab: the last Bradley-Terry fit of the votes (``assistant.leaderboard``), refitted in
the background after each vote; the Arena's votes update the same board."""

import gradio as gr

from assistant.leaderboard import LiveLeaderboard


def leaderboard_board(live: LiveLeaderboard) -> gr.Markdown:
    """The board, made before the tabs (the Arena's votes update it) and placed by ``build_leaderboard``."""
    return gr.Markdown(live.markdown(), elem_id="leaderboard", render=False)


def build_leaderboard(live: LiveLeaderboard, board: gr.Markdown, demo: gr.Blocks) -> None:
    """The tab's content, inside the caller's ``gr.Tab``; every page load shows the newest result."""

    def board_text() -> str:
        return live.markdown()  # the last result: a refit runs in the background after each vote

    board.render()
    refresh = gr.Button("Refresh")
    refresh.click(board_text, None, board, api_visibility="private")
    demo.load(board_text, None, board, api_visibility="private")
