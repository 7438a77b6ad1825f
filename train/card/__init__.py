"""Our model card for a training output folder, rendered from ``template.md`` with huggingface_hub.

TRL writes its own README.md on every checkpoint save and on ``push_to_hub``, and PEFT's
``save_pretrained`` edits it (it sets ``base_model`` to whatever path the base was loaded from and
replaces the tags). So the card is rendered from the files the run left behind (see the training
output folder contract in the brief) and written last, over whatever is there.

Only ``training_info.json`` is required; every other file adds its section when present.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from train.card.evaluations import caption, read_json, report_matches, sealed_first  # noqa: F401  (train.hub, study read report_matches here)

TEMPLATE = Path(__file__).resolve().parent / "template.md"
DATASET_ID = "OpenAssistant/oasst1"
METHOD_NAMES = {"grpo": "GRPO", "dpo": "DPO", "reward": "reward model"}
# Licenses of the bases we train on; an adapter is distributed under its base model's terms.
BASE_LICENSES = {"microsoft/phi-2": "mit", "HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}
DEFAULT_LICENSE = "apache-2.0"  # the license of the Open Assistant data


class CardError(ValueError):
    """The output folder cannot be turned into a card (one line: what is wrong, what to do)."""


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_metrics(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by an interrupted run
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _counts(value) -> str:
    counts = _dict(value)
    return f" ({', '.join(f'{k} {_fmt(v)}' for k, v in counts.items())})" if counts else ""


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return json.dumps(value)
    return "-" if value is None or value == "" else str(value).replace("|", "\\|").replace("\n", " ")


def _public(value):
    """A local absolute path says nothing useful to a reader of the Hub page: keep its file name."""
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key == "inputs":  # per-file read details: paths on the training machine
            continue
        if key == "languages" and isinstance(value, dict):
            rows.append((name, ", ".join(f"{lang} {_fmt(n)}" for lang, n in value.items())))
        elif isinstance(value, dict) and value:
            rows += _flatten(value, f"{name} / ")
        else:
            rows.append((name, _public(value)))
    return rows


def _trend_rows(trends: dict) -> list[tuple[str, str, str, str]]:
    """Rows of training_info's trends: first and last tenth of the steps, and each pass's mean."""
    return [
        (
            key,
            _fmt(t["first_tenth_mean"]),
            _fmt(t["last_tenth_mean"]),
            " → ".join(_fmt(v) for v in t.get("pass_means") or []),
        )
        for key, t in trends.items()
        if isinstance(t, dict) and "first_tenth_mean" in t
    ]


def _runtime(seconds, resumed_from: str | None) -> str:
    """A resumed run times only the process that finished it: say so, or the figure reads as the whole."""
    if not isinstance(seconds, (int, float)):
        return "-"
    return f"{seconds / 60:.1f} min" + (
        f" (after resuming from {Path(resumed_from).name}: that part only)" if resumed_from else ""
    )


def _languages(stats: dict | None) -> list[str]:
    """ISO codes of the training pairs' languages, as the data step counted them; English if unknown."""
    stats = stats or {}
    counted = (stats.get("train") or {}).get("languages") if isinstance(stats.get("train"), dict) else None
    asked = (
        (stats.get("parameters") or {}).get("languages")
        if isinstance(stats.get("parameters"), dict)
        else None
    )
    codes = (
        list(counted) if isinstance(counted, dict) and counted else asked if isinstance(asked, list) else []
    )
    # The Hub wants language codes; "en-GB" is still "en", and "all" is no code at all.
    codes = sorted({str(c).split("-")[0].lower() for c in codes if str(c).lower() != "all"})
    return codes or ["en"]


def _dataset_ids(stats: dict | None) -> list[str]:
    """The Hub datasets the pairs came from, one per source."""
    sources = (stats or {}).get("sources") or [str((stats or {}).get("source") or "")]
    return list(dict.fromkeys(_dataset_of(str(source)) for source in sources))


def _dataset_of(source: str) -> str:
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not Path(source).exists():
        return source  # a Hub dataset id
    # A local export: name the release it comes from (the card's data table names the file).
    name = Path(source).name.lower()
    if "hh-rlhf" in name:
        return "Anthropic/hh-rlhf"
    return "OpenAssistant/oasst2" if "oasst2" in name else DATASET_ID


def _dataset_id(stats: dict | None) -> str:
    return " + ".join(_dataset_ids(stats))


def _used_4bit(recipe: dict, info: dict) -> bool:
    precision = str(info.get("precision", "")).lower()
    return bool(recipe.get("load_in_4bit")) or "4-bit" in precision or "nf4" in precision


def _weights_line(identity: dict | None) -> str:
    if not identity:
        return "not recorded"
    sha = identity.get("weights_sha256") or identity.get("revision")
    return f"{identity.get('source', 'unknown')}" + (f" (`{sha[:12]}`)" if sha else "")


def render_card(output_dir: str | Path, repo_id: str | None = None) -> ModelCard:
    """Our model card for the training output in ``output_dir`` (``repo_id`` names it in the usage)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise CardError(
            f"no training output folder at {output_dir}: give the OUTPUT_DIR that `python -m train` wrote"
        )
    info_path = output_dir / "training_info.json"
    info = read_json(info_path)
    if info is None:
        what = "is not a JSON object" if info_path.exists() else "is missing"
        raise CardError(
            f"{info_path} {what}: the card needs the file `python -m train` writes at the end of a run"
        )

    adapter_config = read_json(output_dir / "adapter_config.json") or {}
    recipe = _read_yaml(output_dir / "recipe.yaml")
    stats = read_json(output_dir / "data_stats.json")
    metrics = _read_metrics(output_dir / "metrics.jsonl")

    base_model = info.get("base_model") or adapter_config.get("base_model_name_or_path") or "unknown"
    method = str(info.get("method") or "unknown").lower()
    method_name = METHOD_NAMES.get(method, method.upper())
    qlora = _used_4bit(recipe, info)
    tags = ["trl", method, "lora"] + (["qlora"] if qlora else []) + ["open-assistant"]
    name = repo_id.split("/")[-1] if repo_id else output_dir.resolve().name

    trainable, total = info.get("trainable_params"), info.get("total_params")
    share = f" ({100 * trainable / total:.3g}% of {total:,})" if isinstance(trainable, int) and total else ""
    runtime = info.get("train_runtime_s")
    target_modules = info.get("target_modules") or adapter_config.get("target_modules")
    evaluations = sealed_first(output_dir, method)

    data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        datasets=_dataset_ids(stats),
        language=_languages(stats),
        license=info.get("license") or BASE_LICENSES.get(base_model, DEFAULT_LICENSE),
        pipeline_tag="text-classification" if method == "reward" else "text-generation",
        tags=tags,
    )
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        title=name,
        description=info.get("description"),
        method=method,
        method_name=method_name,
        qlora=qlora,
        base_model=base_model,
        dataset_id=_dataset_id(stats),
        dataset_links=" and ".join(
            f"[{d}](https://huggingface.co/datasets/{d})" for d in _dataset_ids(stats)
        ),
        adapter_ref=repo_id or name,
        pushed=repo_id is not None,
        details=[
            ("Base model", f"[{base_model}](https://huggingface.co/{base_model})"),
            ("Base weights used", _weights_line(info.get("base_weights"))),
            ("Method", f"{method_name} ({method}) with TRL"),
            (
                "Adapter",
                "LoRA"
                + (" on a 4-bit NF4 base (QLoRA)" if qlora else "")
                + "".join(
                    f", {k} {_fmt(adapter_config[k])}"
                    for k in ("r", "lora_alpha", "lora_dropout")
                    if k in adapter_config
                ),
            ),
            (
                "Target modules",
                _fmt(sorted(target_modules) if isinstance(target_modules, list) else target_modules),
            ),
            ("Trainable parameters", (_fmt(trainable) if trainable is not None else "not recorded") + share),
            ("Training pairs", _fmt(info.get("train_pairs")) + _counts(info.get("pair_counts"))),
            ("Optimizer steps", _fmt(info.get("global_step"))),
            ("Device / precision", f"{_fmt(info.get('device'))} / {_fmt(info.get('precision'))}"),
            ("Training time", _runtime(runtime, info.get("resumed_from"))),
        ],
        trainable_params=trainable,
        data_rows=[
            (k, _fmt(v)) for k, v in _flatten(stats or {}) if not k.startswith("parameters")
        ]  # counts first, then how they were made
        + [(k, _fmt(v)) for k, v in _flatten(stats or {}) if k.startswith("parameters")],
        pairs_file=_public(info.get("pairs_file")),
        hyperparameters=[(k, _fmt(_public(v))) for k, v in recipe.items() if k != "description"],
        notes=[str(n) for n in info.get("notes") or []],
        reward_weights=[(k, _fmt(v)) for k, v in _dict(info.get("reward_weights")).items()],
        final_metrics=[(k, _fmt(v)) for k, v in _dict(info.get("final_metrics")).items()],
        trends=_trend_rows(_dict(info.get("trends"))),
        logged_steps=len(metrics),
        plots=[(caption(p), f"plots/{p.name}") for p in sorted((output_dir / "plots").glob("*.png"))],
        evaluations=evaluations,
        versions=_dict(info.get("versions")),
    )


def write_card(output_dir: str | Path, repo_id: str | None = None) -> Path:
    """Render the card and write it to OUTPUT_DIR/README.md atomically; return that path."""
    output_dir = Path(output_dir)
    text = str(render_card(output_dir, repo_id))
    from assistant.atomic import write_text

    return write_text(output_dir / "README.md", text if text.endswith("\n") else text + "\n")
