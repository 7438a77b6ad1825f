"""The Evidence tab: the served adapter's verdict from its committed evaluation report, its plots, and
every sample comparison, filterable by the judge's pick (``assistant.evidence``)."""

import gradio as gr
from PIL import Image

from assistant.evidence import FILTERS, Evidence, comparison_markdown, find
from assistant.service import Assistant


def build_evidence(assistant: Assistant) -> None:
    """The tab's content, inside the caller's ``gr.Tab``."""
    name = assistant.tuned_name
    folder = find(assistant.loaded, name)
    if folder is None:
        gr.Markdown(
            f"No evaluation report is committed for {name or 'this model'} (`<adapter>/eval/report.json`): "
            "`python -m train.evaluate` writes one."
        )
        return
    evidence = Evidence(folder, name)
    gr.Markdown(evidence.verdict(), elem_id="verdict")
    if evidence.plots:
        # Opened here and handed over as images: Gradio serves its own copies, so the page never carries
        # the path of the checkout on the server (a file path would be in /config).
        plots = [(Image.open(p), p.stem.replace("_", " ")) for p in evidence.plots]
        gr.Gallery(plots, label="Plots", columns=3, height="auto", preview=False)
    gr.Markdown(
        f"### The {len(evidence.all)} sample comparisons\nEvery held-out prompt the report answered, base and "
        "tuned (first answer of each), with the judge's pick. Marked: an answer that loops, and one cut off "
        "at the token limit."
    )
    with gr.Row():
        which = gr.Radio([(label, key) for key, label in FILTERS.items()], value="all", label="Show", scale=2)
        number = gr.Slider(1, max(1, len(evidence.all)), value=1, step=1, label="Comparison", scale=3)

    def show(key, n):
        chosen = evidence.comparisons(key)
        if not chosen:
            return f"No comparison is {FILTERS[key].lower()}.", "", ""
        return comparison_markdown(chosen[min(int(n), len(chosen)) - 1])

    first = show("all", 1)
    head = gr.Markdown(first[0], elem_id="comparison")
    with gr.Row(equal_height=True):
        base, tuned = (
            gr.Markdown(first[1], elem_id="base-answer"),
            gr.Markdown(first[2], elem_id="tuned-answer"),
        )

    def refilter(key):
        count = len(evidence.comparisons(key))
        return gr.update(maximum=max(1, count), value=1, label=f"Comparison (of {count})"), *show(key, 1)

    private = dict(api_visibility="private")
    which.change(refilter, which, [number, head, base, tuned], **private)
    number.change(show, [which, number], [head, base, tuned], **private)
