"""A strong judge for people who have one: any OpenAI-compatible chat endpoint (a vLLM or TGI server, an
Inference Endpoint, a hosted API), asked AlpacaEval-style which of two answers to an instruction is
better, through huggingface_hub's ``InferenceClient``.

    python -m train.evaluate ... --judge-endpoint URL --judge-model NAME
    (the key from JUDGE_API_KEY, else OPENAI_API_KEY, else HF_TOKEN; none for a local server)

Each answer pair is asked in both orders, so the judge's bias towards a position cancels: the tuned
answer wins a pair when the judge picks it both times, loses when it picks the base's both times, and
ties otherwise (an order-dependent pick, or a reply that names neither). Its verdicts go into the same
report as the encoder judge's (``endpoint_judge``): per prompt, overall and where both answers are
clean, with the per-tree sign test, and how often the two judges agree where both decide.
"""

from __future__ import annotations

import os
import re

import numpy as np

from train.evaluate.defects import both_clean, is_clean
from train.evaluate.stats import outcomes, rate

KEY_VARIABLES = ("JUDGE_API_KEY", "OPENAI_API_KEY", "HF_TOKEN")
SYSTEM = "You are a helpful assistant who evaluates which of two answers to an instruction is better."
QUESTION = """Which output answers the instruction better: more helpful, correct and complete, without
repeating itself? Both were written by AI assistants; judge the content, not the length.

## Instruction

{instruction}

## Output (a)

{a}

## Output (b)

{b}

Answer with the letter of the better output, "a" or "b", and nothing else."""


class EndpointJudge:
    """A pairwise judge behind an OpenAI-compatible ``/v1/chat/completions`` at ``url``."""

    def __init__(self, url: str, model: str):
        from huggingface_hub import InferenceClient

        key = next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
        self.client = InferenceClient(base_url=url.rstrip("/"), api_key=key or "-")
        self.url, self.model = url, model

    def pick(self, conversation: list[dict], a: str, b: str) -> str | None:
        """ "a" or "b", the output the judge prefers; None when its reply names neither."""
        instruction = "\n\n".join(f"{m['role']}: {m['content']}" for m in conversation)
        reply = self.client.chat_completion(
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": QUESTION.format(instruction=instruction, a=a, b=b)},
            ],
            model=self.model,
            max_tokens=4,
            temperature=0.0,
        )
        match = re.match(r"\W*(?:output\s*)?\(?([ab])\b", (reply.choices[0].message.content or "").lower())
        return match.group(1) if match else None

    def verdict(self, conversation: list[dict], base: str, tuned: str) -> float:
        """1 when the tuned answer is picked in both orders, 0 when the base's is, 0.5 otherwise."""
        first, second = self.pick(conversation, base, tuned), self.pick(conversation, tuned, base)
        return 1.0 if (first, second) == ("b", "a") else 0.0 if (first, second) == ("a", "b") else 0.5


def endpoint_verdicts(
    judge: EndpointJudge, conversations: list, answers: dict, trees: list, encoder=None
) -> dict:
    """The endpoint judge on every answer pair (answer j of base and of tuned, same seed) of every
    prompt; ``encoder``: the encoder judge's per-prompt tuned − base differences, for the agreement."""
    from tqdm.auto import tqdm

    pairs = [
        (i, b, t)
        for i, row in enumerate(answers["base"])
        for b, t in zip(row, answers["tuned"][i], strict=True)
    ]
    wins = [[] for _ in conversations]
    for i, base, tuned in tqdm(pairs, desc=f"judging with {judge.model}", unit=" pair"):
        wins[i].append(judge.verdict(conversations[i], base.text, tuned.text))
    margin = np.array([np.mean(w) - 0.5 for w in wins])  # per prompt, > 0: the tuned answers won
    clean = {side: [[is_clean(a) for a in row] for row in answers[side]] for side in ("base", "tuned")}
    scores = {"base": [[0.0] * len(w) for w in wins], "tuned": [[v - 0.5 for v in w] for w in wins]}
    out = {
        "endpoint": judge.url,
        "model": judge.model,
        "both_orders": True,
        "per_prompt": outcomes(margin, 1e-6, trees),
        "both_clean": both_clean(clean, scores, trees, 1e-6),
    }
    if encoder is not None:
        decided = (margin != 0) & (np.asarray(encoder) != 0)
        same = np.sign(margin[decided]) == np.sign(np.asarray(encoder)[decided])
        out["agreement_with_encoder_judge"] = {
            **rate(same, np.asarray(trees, dtype=object)[decided]),
            "prompts": int(decided.sum()),
        }
    return out
