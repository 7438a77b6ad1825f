"""The requests .ci/newcomer makes, run with the Python of the virtualenv under check.

    python .ci/newcomer_probe.py gradio http://127.0.0.1:7860 [--wait 600]   # one real battle
    python .ci/newcomer_probe.py streamlit streamlit_app.py                  # one chat turn (AppTest)

Each prints one line saying what it saw and exits non-zero when the app does not answer as it should.
"""

import argparse
import sys
import time
from pathlib import Path


def wait_for(url: str, seconds: float) -> None:
    """Until the server answers on ``url`` (a start loads the model first), or fail after ``seconds``."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"error: nothing answered on {url} within {seconds:.0f} s")
        time.sleep(2)


def gradio(url: str, wait: float) -> None:
    from gradio_client import Client

    wait_for(url, wait)
    client = Client(url, verbose=False)
    result = client.predict("Name a fruit.", max_new_tokens=8, temperature=0.0, api_name="/battle")
    answers = [result.get("answer_a", ""), result.get("answer_b", "")]
    if not result.get("battle_id") or not all(a.strip() for a in answers):
        sys.exit(f"error: the battle did not give two answers: {result}")
    print(f"gradio: {url} answered a battle with two answers: {answers}")


def streamlit(app: str) -> None:
    from streamlit.testing.v1 import AppTest

    # AppTest resolves a relative path against this file, not the working folder.
    at = AppTest.from_file(str(Path(app).resolve()), default_timeout=600).run()
    if at.exception:
        sys.exit(f"error: {app} raised at start: {at.exception[0].value}")
    at.sidebar.slider[2].set_value(8)  # max new tokens: one short answer
    at.chat_input(key="chat").set_value("Name a fruit.").run()
    if at.exception:
        sys.exit(f"error: {app} raised on a chat turn: {at.exception[0].value}")
    roles = [m.name for m in at.chat_message]
    answer = at.chat_message[1].markdown[0].value if roles == ["user", "assistant"] else ""
    if not answer.strip():
        sys.exit(f"error: {app} gave no answer (messages: {roles})")
    print(f"streamlit: {app} started and answered a chat turn: {answer!r}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python .ci/newcomer_probe.py", description=__doc__.split("\n")[0])
    parser.add_argument("app", choices=["gradio", "streamlit"])
    parser.add_argument("target", help="the Gradio app's URL, or the Streamlit script")
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for the Gradio app")
    args = parser.parse_args()
    gradio(args.target, args.wait) if args.app == "gradio" else streamlit(args.target)


if __name__ == "__main__":
    main()
