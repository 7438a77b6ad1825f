"""What an evaluation is given: its options, the held-out pairs in a fixed order, and the files
saved beside the adapter (recipe, training info). Everything is checked before a model is loaded."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


class EvalError(ValueError):
    """Bad input; the message names what is wrong and what to do."""


@dataclass
class EvalArguments:
    """Options of `python -m train.evaluate` (also readable from a YAML file with --config)."""

    output_dir: str = field(metadata={"help": "Folder for the report (replaced as a whole, atomically)."})
    adapter: str | None = field(default=None, metadata={"help": "Adapter folder or Hub id to evaluate."})
    pairs: str | None = field(
        default=None, metadata={"help": "Held-out pairs (eval.jsonl of python -m train.data)."}
    )
    sealed: bool = field(
        default=False,
        metadata={"help": "This is the sealed test's one evaluation: only python -m study.sealed passes it."},
    )
    base: str | None = field(
        default=None, metadata={"help": "Base model (default: the one the adapter names)."}
    )
    judge: str | None = field(
        default=None,
        metadata={
            "help": "A sequence-classification reward model that scores both models' answers: a folder "
            "(e.g. demo/judge-combined, a mean of judges, or demo/judge-minilm-hh) or a Hub id (OpenAssistant/reward-model-deberta-v3-large-v2)."
        },
    )
    judge_endpoint: str | None = field(
        default=None,
        metadata={
            "help": "Also judge with a chat model behind an OpenAI-compatible endpoint (a vLLM or TGI server, "
            "an Inference Endpoint, a hosted API; e.g. http://localhost:8000/v1), pairwise in both orders; "
            "the key from JUDGE_API_KEY, else OPENAI_API_KEY, else HF_TOKEN. Needs --judge-model."
        },
    )
    judge_model: str | None = field(default=None, metadata={"help": "The model the endpoint serves."})
    base_cache: str | None = field(
        default=None,
        metadata={
            "help": "Keep the base model's scores, answers and judge scores here, and reuse them for the "
            "next adapter on the same base, pairs, settings and judge (a study: half the cost)."
        },
    )
    votes: str | None = field(default=None, metadata={"help": "Arena votes (JSONL) for the leaderboard."})
    limit: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N pairs (sha256 order)."}
    )
    num_generations: int = field(
        default=3, metadata={"help": "Answers per prompt and model (seeds seed..seed+k-1), for the judge."}
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Answer length cap (default: the apps' serving length: answers are judged as served)."
        },
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature, 0 = greedy (default: the recipe's, else 0.7)."}
    )
    top_p: float | None = field(
        default=None, metadata={"help": "Nucleus sampling threshold (default: the apps')."}
    )
    base_repetition_penalty: float = field(
        default=1.2,
        metadata={
            "help": "Also answer with the base under this repetition_penalty (the decoding knob a skeptic "
            "tries first; end-of-turn tokens spared), and report its loops, ends and judge verdict against "
            "the plain base and against the tuned model; 0 or 1 = off."
        },
    )
    base_no_repeat_ngram_size: int = field(
        default=0,
        metadata={
            "help": "The knob's n-gram ban instead or beside: no n-gram of this size twice in a row's tokens "
            "(end-of-turn tokens spared); 0 = off."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass / generate call."})
    max_length: int = field(
        default=1024, metadata={"help": "Cap on prompt + reply tokens when scoring pairs."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for generation and the bootstrap."})
    samples: int = field(
        default=4, metadata={"help": "Side-by-side samples to show (first N prompts, sha256 order)."}
    )
    device: str | None = field(
        default=None, metadata={"help": "cuda, mps or cpu (default: the best at hand)."}
    )
    revision: str | None = field(default=None, metadata={"help": "Adapter revision on the Hub."})


def check_output_dir(path: str) -> Path:
    """OUTPUT_DIR is replaced whole: refuse a folder that holds anything but an earlier report."""
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise EvalError(f"{out}: exists and is not a folder; give a folder for the report")
        if any(out.iterdir()) and not (out / "report.json").is_file():
            raise EvalError(
                f"{out}: exists and is not an evaluation folder (no report.json); "
                "give a new folder, e.g. ADAPTER/eval"
            )
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise EvalError(f"{out}: cannot write there (no permission on {parent})")
    return out


REPO = Path(__file__).resolve().parents[2]
SEALED_TEST = Path("data/study-splits/test.jsonl")  # the study's sealed test, from the repository root


def pair_keys(path: str | Path) -> set[str]:
    """What identifies each pair of a file whatever the file is called: sha256 of its prompt, chosen
    and rejected reply."""
    keys = set()
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            pair = json.loads(line)
        except ValueError:  # read_pairs says what is wrong with the file; here only pairs count
            continue
        if isinstance(pair, dict):
            content = json.dumps(
                [pair.get("prompt"), pair.get("chosen"), pair.get("rejected")], sort_keys=True
            )
            keys.add(hashlib.sha256(content.encode()).hexdigest())
    return keys


def content_sha256(path: str | Path) -> str:
    """One sha256 of a pair file's content (its pairs' keys, sorted): the same for a renamed or
    re-ordered copy."""
    return hashlib.sha256("\n".join(sorted(pair_keys(path))).encode()).hexdigest()


def _split_test(path: Path) -> bool:
    """The test.jsonl of a three-split folder (its stats.json names a test range)."""
    stats = path.parent / "stats.json"
    if path.name != "test.jsonl" or not path.is_file() or not stats.is_file():
        return False
    try:
        return "test" in json.loads(stats.read_text()).get("held_out", {})
    except (ValueError, AttributeError):
        return False


def is_sealed_test(pairs: str) -> bool:
    """Whether ``pairs`` holds any pair of a sealed test (the study's, or the test.jsonl of the split
    folder the file sits in), by content: a copy under another name is the sealed test too."""
    tests = {path for path in (REPO / SEALED_TEST, Path(pairs).parent / "test.jsonl") if _split_test(path)}
    if not tests:
        return False
    given = pair_keys(pairs)
    return any(given & pair_keys(test) for test in tests)


def sealed_run_open(adapter: str, revision: str | None = None) -> bool:
    """Whether study.sealed has a run open on its ledger for this adapter's weights: the only case in
    which train.evaluate reads the sealed test, so that every read is on record."""
    from train.evaluate import ledger
    from train.identity import file_sha256

    weights = adapter_file(adapter, "adapter_model.safetensors", revision)
    if weights is None:
        return False
    sha = file_sha256(weights)
    runs = ledger.read_ledger(REPO / ledger.LEDGER)["runs"]  # (the module's LEDGER: tests move it)
    return any(
        not run["finished"] and sha in {c.get("adapter_sha256") for c in run["candidates"]} for run in runs
    )


def check_args(args: EvalArguments) -> None:
    if (args.adapter is None) != (args.pairs is None):
        raise EvalError("--adapter and --pairs go together: the pairs are what the adapter is evaluated on")
    if args.pairs is not None and Path(args.pairs).is_file() and is_sealed_test(args.pairs):
        if not args.sealed:
            raise EvalError(
                f"--pairs {args.pairs}: a sealed test (train.data.splits), by its pairs whatever the file is "
                "called; only python -m study.sealed evaluates on it, once, and keeps its ledger: evaluate "
                "on dev.jsonl instead"
            )
        if not sealed_run_open(args.adapter, args.revision):
            raise EvalError(
                f"--pairs {args.pairs} --sealed: the ledger has no open run of python -m study.sealed for "
                "this adapter; run python -m study.sealed NAME, which records the reading first"
            )
    if args.votes is None and args.adapter is None:
        raise EvalError(
            "give --adapter and --pairs to evaluate a model, or --votes for the leaderboard (or both)"
        )
    if args.judge is not None and not Path(args.judge).exists() and args.judge.count("/") != 1:
        raise EvalError(
            f"--judge {args.judge}: no such folder, and not a Hub id; give a sequence-classification "
            "reward model (e.g. demo/judge-minilm-hh or OpenAssistant/reward-model-deberta-v3-large-v2)"
        )
    for name in ("max_new_tokens", "batch_size", "max_length", "num_generations"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise EvalError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be at least 1, got {args.limit}")
    if args.temperature is not None and not 0 <= args.temperature <= 2:
        raise EvalError(f"--temperature must be between 0 and 2, got {args.temperature}")
    if bool(args.judge_endpoint) != bool(args.judge_model):
        raise EvalError(
            "--judge-endpoint and --judge-model go together: the endpoint's URL and the model it serves"
        )
    if args.judge_endpoint:
        from huggingface_hub import constants

        if constants.is_offline_mode():
            raise EvalError(
                "--judge-endpoint: HF_HUB_OFFLINE is set, and huggingface_hub's client then reaches no server, "
                "not even a local one; unset it for this run"
            )
    if args.base_repetition_penalty < 0 or args.base_no_repeat_ngram_size < 0:
        raise EvalError(
            f"--base-repetition-penalty and --base-no-repeat-ngram-size must be at least 0 (0 = off), got "
            f"{args.base_repetition_penalty} and {args.base_no_repeat_ngram_size}"
        )
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise EvalError(f"--top-p must be above 0 and at most 1, got {args.top_p}")
    if args.device not in (None, "cpu", "cuda", "mps") and not str(args.device).startswith("cuda:"):
        raise EvalError(f"--device must be cpu, cuda, cuda:N or mps, got {args.device!r}")
    if args.device and args.device != "cpu":
        import torch

        if not (torch.backends.mps.is_available() if args.device == "mps" else torch.cuda.is_available()):
            raise EvalError(
                f"--device {args.device}: no such device here; leave --device out to use the best at hand"
            )
    if args.samples < 0:
        raise EvalError(f"--samples must be 0 or more, got {args.samples}")
    if args.adapter is not None:
        adapter = Path(args.adapter)
        looks_local = (
            adapter.exists() or args.adapter.startswith((".", "/", "~")) or args.adapter.count("/") != 1
        )
        config = adapter / "adapter_config.json"
        if looks_local and not config.is_file():
            raise EvalError(
                f"{args.adapter}: no adapter there (no adapter_config.json); "
                "give an adapter folder written by python -m train, or a Hub repo id"
            )
        if config.is_file() and args.base is None:
            try:
                named = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
            except (OSError, ValueError, AttributeError):
                raise EvalError(f"{config}: not a readable adapter config (JSON object expected)") from None
            if not named:
                raise EvalError(f"{config} names no base model; give one with --base")


def prompt_key(pair: dict) -> str:
    """What identifies a prompt: the message it answers (a pair at any depth), else its text."""
    return str(pair.get("parent_id") or pair.get("prompt_id") or json.dumps(pair["prompt"]))


def stable_key(pair: dict) -> str:
    """The fixed order of pairs and samples: sha256 of the prompt's key."""
    return hashlib.sha256(prompt_key(pair).encode()).hexdigest()


def order_pairs(pairs: list[dict]) -> list[dict]:
    """Pairs in sha256 order of their prompt; ties (one prompt, several pairs) by reply ids, then texts."""
    return sorted(
        pairs,
        key=lambda p: (
            stable_key(p),
            str(p.get("chosen_id")),
            str(p.get("rejected_id")),
            p["chosen"],
            p["rejected"],
        ),
    )


def unique_prompts(pairs: list[dict]) -> list[dict]:
    """One pair per prompt (the first in the given order): generation answers each prompt once."""
    seen, out = set(), []
    for pair in pairs:
        key = prompt_key(pair)
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out


def pick_samples(pairs: list[dict], n: int) -> list[dict]:
    """The prompts shown side by side: the first ``n`` distinct prompts in sha256 order."""
    return unique_prompts(order_pairs(pairs))[: max(n, 0)]


def adapter_file(adapter: str, name: str, revision: str | None = None) -> Path | None:
    """A file saved beside the adapter (in its folder, or its Hub repo), or None when it has none."""
    from assistant.models import hub_file

    path = Path(adapter) / name
    if path.is_file():
        return path
    return None if Path(adapter).exists() else hub_file(adapter, name, revision)


def read_recipe(adapter: str, revision: str | None = None) -> dict:
    """The adapter's recipe.yaml, or {} when it has none."""
    import yaml

    path = adapter_file(adapter, "recipe.yaml", revision)
    if path is None:
        return {}
    try:
        recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise EvalError(
            f"{path}: unreadable recipe ({str(error).splitlines()[0]}); fix or remove it"
        ) from None
    return recipe if isinstance(recipe, dict) else {}


def generation_defaults(args: EvalArguments, recipe: dict) -> tuple[int, float, str]:
    """max_new_tokens: as given, else the apps' (answers are judged at the length they are served at,
    never at GRPO's shorter training max_completion_length, where a model that never stops looks no
    different from one that does); temperature: as given, else as the adapter was trained, else the
    apps'; and where they came from."""
    from assistant.generation import GenerationSettings

    default = GenerationSettings()
    taken = []
    max_new_tokens = args.max_new_tokens
    temperature = args.temperature
    if temperature is None and recipe.get("temperature") is not None:
        temperature = float(recipe["temperature"])
        taken.append("temperature")
    source = f"{' and '.join(taken)} from the adapter's recipe" if taken else ""
    return (
        max_new_tokens or default.max_new_tokens,
        default.temperature if temperature is None else temperature,
        source,
    )


def trained_trees(adapter: str, revision: str | None = None) -> set[str]:
    """The conversation trees the adapter was trained on (training_info.json's train_tree_ids)."""
    path = adapter_file(adapter, "training_info.json", revision)
    if path is None:
        return set()
    try:
        return set(json.loads(Path(path).read_text(encoding="utf-8")).get("train_tree_ids") or [])
    except (OSError, ValueError, AttributeError) as error:
        raise EvalError(f"{path}: unreadable training info ({error}); fix or remove it") from None


def read_pairs(path: str) -> list[dict]:
    from train.data import DataError, load_pairs

    if not Path(path).is_file():
        raise EvalError(
            f"{path}: no such pair file; write one with python -m train.data (it gives eval.jsonl)"
        )
    try:
        pairs = load_pairs(path)
    except DataError as error:
        raise EvalError(str(error)) from None
    if not pairs:
        raise EvalError(f"{path}: no pairs in this file; raise --eval_fraction of python -m train.data")
    return pairs
