"""The rewards for what users notice, measured on dev before any run trusts them (issue 27):

    python -m study.defect_rewards    # study/defect_rewards.json and .md

- ``no_loop`` (assistant.defects): how often the base's dev answers at the Space's settings loop, and
  how often people's own replies to the same prompts would (a reward that punishes good answers teaches
  the wrong thing);
- ``missing_eos_penalty`` at 256 new tokens: how often the base's answers never end, and how many of
  people's replies are longer than 256 tokens of the policy's tokenizer (those it would punish).

The base's answers are the ones committed with the dev report of the demo served before issue 27 (its
``base`` side): temperature 0.7, 256 new tokens, one answer a prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from assistant.atomic import write_text
from assistant.defects import LOOP_THRESHOLD, loops, repeated_fraction

DEV = Path("data/study-splits/dev.jsonl")
ANSWERS = Path("study/retired/smollm2-grpo-demo/eval/generations.jsonl")
OUT = Path("study/defect_rewards")
MAX_NEW_TOKENS = 256


def rates(texts: list[str]) -> dict:
    fractions = [repeated_fraction(t) for t in texts]
    return {
        "n": len(texts),
        "loop_rate": round(sum(map(loops, texts)) / len(texts), 4),
        "no_loop_mean": round(-mean(fractions), 4),
        "no_loop_below_minus_0.05": round(sum(f > 0.05 for f in fractions) / len(texts), 4),
    }


def main() -> None:
    from transformers import AutoTokenizer

    from assistant.models import packaged_smollm2

    tokenizer = AutoTokenizer.from_pretrained(packaged_smollm2())
    pairs = [json.loads(line) for line in DEV.open()]
    answers = [json.loads(line)["base"][0] for line in ANSWERS.open()]
    human = {"chosen": [p["chosen"] for p in pairs], "rejected": [p["rejected"] for p in pairs]}
    result = {
        "loop_rule": f"more than {LOOP_THRESHOLD:.0%} of the answer's word 4-grams repeat an earlier one",
        "base_answers": {
            **rates([a["answer"] for a in answers]),
            "missing_end_rate": round(sum(not a["ended"] for a in answers) / len(answers), 4),
            "source": str(ANSWERS),
        },
    }
    for side, texts in human.items():
        too_long = sum(len(tokenizer(t)["input_ids"]) >= MAX_NEW_TOKENS for t in texts)
        result[f"human_{side}"] = {**rates(texts), "longer_than_256_tokens": round(too_long / len(texts), 4)}
    write_text(OUT.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    rows = [
        f"| {name} | {r['n']} | {r['loop_rate']:.1%} | {r['no_loop_mean']:.3f} | "
        + (f"{r['missing_end_rate']:.1%} never end" if "missing_end_rate" in r else
           f"{r['longer_than_256_tokens']:.1%} longer than 256 tokens")
        + " |"
        for name, r in [("base answers (dev, T 0.7, 256 tokens)", result["base_answers"]),
                        ("people's chosen replies (dev)", result["human_chosen"]),
                        ("people's rejected replies (dev)", result["human_rejected"])]
    ]  # fmt: skip
    write_text(
        OUT.with_suffix(".md"),
        "The rewards for loops and missing ends, on dev (`python -m study.defect_rewards`). Loop: "
        + result["loop_rule"]
        + ".\n\n| texts | n | loop rate | mean no_loop | missing_eos_penalty |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n",
    )
    print(OUT.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
