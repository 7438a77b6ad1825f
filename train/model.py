"""The base model of a run: its tokenizer (with the shared chat template), its empty architecture (to
check the LoRA targets before any weight loads), the model itself, quantized when the recipe says, and
a warm start's adapter on it; and how one recipe adapts to this machine (its precision, its 4-bit base).
"""

from __future__ import annotations

import re
from pathlib import Path

from train.config import ConfigError


def load_tokenizer(model_args, trust_remote_code: bool = False):
    """The tokenizer (with the shared chat template), and where the base is: (tokenizer, path, revision)."""
    from transformers import AutoTokenizer

    from assistant.models import ModelLoadError, resolve_base
    from assistant.prompt import ensure_chat_template

    name = model_args.model_name_or_path
    if not name:
        raise ConfigError("model_name_or_path is not set: name a Hub model id or a local folder")
    path = resolve_base(name, model_args.model_revision)
    revision = None if Path(path).is_dir() else model_args.model_revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )
    except OSError as error:
        raise ModelLoadError(f"cannot load the tokenizer of {name!r}: {str(error).splitlines()[0]}") from None
    ensure_chat_template(tokenizer)
    tokenizer.padding_side = "left"  # generation pads prompts on the left
    return tokenizer, path, revision


def model_type(model_args, trust_remote_code: bool = False) -> str | None:
    """The base's architecture name ("phi", "llama"), from its config alone."""
    from transformers import AutoConfig

    from assistant.models import ModelLoadError, resolve_base

    name = model_args.model_name_or_path
    path = resolve_base(name, model_args.model_revision)
    revision = None if Path(path).is_dir() else model_args.model_revision
    try:
        config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise ModelLoadError(f"cannot read the config of {name!r}: {str(error).splitlines()[0]}") from None
    return getattr(config, "model_type", None)


def adapt_to_device(
    train_args, training_args, model_args, mixed_precision=None
) -> tuple[str, str, list[str]]:
    """GPU: the recipe as written (fp16 for bf16 where the GPU lacks it). CPU: bf16 where native, else
    fp32 (``assistant.models.compute_dtype``, the one rule); 4-bit only if asked."""
    import torch

    notes = []
    if torch.cuda.is_available() and not training_args.use_cpu:
        device = "cuda"
        if mixed_precision == "bf16" and training_args.fp16:  # mixed_precision_for found no bf16
            from assistant.models import gpu_compute_dtype

            compute = gpu_compute_dtype(False, model_type(model_args, training_args.trust_remote_code))
            if compute == torch.float32:
                # TrainingArguments turned fp16 into its mixed_precision when parsed: both go.
                training_args.fp16, training_args.mixed_precision = False, "no"
                model_args.dtype = "float32"
                notes.append("GPU without bf16: Phi computes in fp32 (its attention overflows in fp16)")
            else:
                notes.append("GPU without bf16: fp16 mixed precision instead")
                if model_args.dtype == "bfloat16":
                    model_args.dtype = "float16"
    else:
        from assistant.models import compute_dtype

        device, why = "cpu", "use_cpu" if torch.cuda.is_available() else "no GPU"
        training_args.bf16 = training_args.fp16 = False  # parse_args has done it already
        if compute_dtype("cpu") == torch.bfloat16:
            # Native bf16 (AVX512-BF16/AMX): the frozen base in bf16 and bf16 autocast, so generation runs
            # in bf16 too; PEFT keeps the LoRA weights fp32 (autocast_adapter_dtype), train.py checks it.
            training_args.bf16, training_args.mixed_precision = True, "bf16"
            model_args.dtype = "bfloat16"
            notes.append(f"{why}: the CPU has native bf16: a bf16 base under bf16 autocast, LoRA in fp32")
        else:
            if mixed_precision:
                notes.append(f"{why}: {mixed_precision} mixed precision off (this CPU has no native bf16)")
            if model_args.dtype not in (None, "float32", "auto"):
                notes.append(f"{why}: weights in float32 instead of {model_args.dtype}")
            model_args.dtype = "float32"
        if (model_args.load_in_4bit or model_args.load_in_8bit) and not train_args.quantize_on_cpu:
            model_args.load_in_4bit = model_args.load_in_8bit = False
            loaded = "bf16" if model_args.dtype == "bfloat16" else "fp32"
            notes.append(f"{why}: base loaded in {loaded}, not quantized (set quantize_on_cpu to keep 4-bit)")
    if model_args.load_in_4bit:
        compute = model_args.dtype if model_args.dtype not in (None, "auto") else "float32"
        precision = f"4-bit {model_args.bnb_4bit_quant_type.upper()} base, {compute} compute"
    elif model_args.load_in_8bit:
        precision = "8-bit base"
    elif training_args.bf16 or training_args.fp16:
        precision = f"{model_args.dtype or 'auto'} weights, {'bf16' if training_args.bf16 else 'fp16'} mixed precision"
    else:
        precision = model_args.dtype or "auto"
    return device, precision, notes


def _model_class(method: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    # A reward model is the base with a one-score head.
    return (
        (AutoModelForSequenceClassification, {"num_labels": 1})
        if method == "reward"
        else (AutoModelForCausalLM, {})
    )


def empty_model(model_args, path, revision, trust_remote_code: bool = False, method: str = "grpo"):
    """The architecture with no weights (meta device): enough to check LoRA targets before loading."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    model_class, extra = _model_class(method)
    for key, value in extra.items():
        setattr(config, key, value)
    with init_empty_weights():
        model = model_class.from_config(config, trust_remote_code=trust_remote_code)
    model.config._name_or_path = model_args.model_name_or_path
    return model


def load_model(
    model_args, path, revision, tokenizer, device: str, trust_remote_code: bool = False, method="grpo"
):
    """The base model, quantized when the recipe says; for a reward model, with a one-score head."""
    from trl import get_quantization_config

    from assistant.models import ModelLoadError

    name = model_args.model_name_or_path
    kwargs = {
        "revision": revision,
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "trust_remote_code": trust_remote_code,
    }
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        from accelerate import PartialState

        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": PartialState().local_process_index if device == "cuda" else "cpu"}
    model_class, extra = _model_class(method)
    try:
        model = model_class.from_pretrained(path, **kwargs, **extra)
    except OSError as error:
        raise ModelLoadError(f"cannot load base model {name!r}: {str(error).splitlines()[0]}") from None
    if model.config.pad_token_id is None:  # a score head reads the last non-pad token
        model.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    # The adapter must name the base by the id the recipe gave, never a local cache path.
    model.config._name_or_path = name
    model.name_or_path = name
    return model


def check_target_modules(model, targets) -> list[str] | str | None:
    """Every configured LoRA target must match a module of the model: a typo or another architecture's
    name (o_proj on Phi-2) would otherwise be silently left untrained."""
    if targets is None or targets == "all-linear":
        return targets
    if isinstance(targets, list) and len(targets) == 1:  # the parser makes a YAML string a list of one
        targets = targets[0]
    if isinstance(targets, str) and not re.fullmatch(r"[\w.]+", targets):
        # A regular expression (PEFT's meaning of a string): it must match at least one module.
        if not any(re.fullmatch(targets, n) for n, _ in model.named_modules()):
            raise ConfigError(f"lora_target_modules regex {targets!r} matches no module of the model")
        return targets
    targets = [targets] if isinstance(targets, str) else list(targets)
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        import torch

        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) or "Linear" in type(m).__name__
            }
        )
        raise ConfigError(
            f"lora_target_modules {', '.join(missing)} match no module of {model.config._name_or_path} "
            f"({type(model).__name__}); its linear layers are: {', '.join(linear)}"
        )
    return targets


def warm_start(model, adapter: str, model_args, notes: list[str]):
    """(model, None): ``model`` with the adapter at ``adapter`` loaded as its trainable "default" adapter.

    Given a PeftModel and no peft_config, TRL's GRPOTrainer (when beta > 0) and DPOTrainer add a frozen copy
    of it named "ref" and take their reference log-probabilities from that copy: the KL term and DPO's
    ratios are then measured against the warm start, not against the base with the adapter off.
    """
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    config = model.peft_config["default"]
    # The adapter's own shape is what trains: record it, not the recipe's unused LoRA keys.
    model_args.lora_r, model_args.lora_alpha = config.r, config.lora_alpha
    model_args.lora_dropout = config.lora_dropout
    targets = config.target_modules
    model_args.lora_target_modules = targets if isinstance(targets, str) else sorted(targets)
    notes.append(
        f"warm start: trains on from the adapter in {adapter} (r={config.r}); TRL's reference is a frozen copy"
    )
    return model, None


def lora_to_fp32_where_needed(model, device: str) -> int:
    """``trainable_to_fp32`` where it is needed; return how many parameters it cast.

    Over a quantized base TRL casts the adapter to bf16 (see trainable_to_fp32): cast back. On the CPU
    (the native-bf16 path: a bf16 base) PEFT keeps the adapter fp32 and this keeps it so. Elsewhere
    (an unquantized base on a GPU) PEFT made the adapter fp32, except under DeepSpeed ZeRO-3, where TRL
    keeps it in the base's bf16 on purpose: ZeRO-3 gathers parameters in one dtype, and an fp32 adapter
    beside a bf16 base raises a TypeError at the first step (TRL #6089, DeepSpeed #8072)."""
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    return trainable_to_fp32(model) if quantized or device == "cpu" else 0


def trainable_to_fp32(model) -> int:
    """Cast the trainable parameters (LoRA A/B, a reward model's score head) back to fp32; return how many.

    TRL's GRPO, DPO and Reward trainers cast them to bf16 when the base is quantized (QLoRA). bf16 keeps
    8 bits of mantissa: next to a 0.02 weight its smallest step is about 1e-4, while AdamW at lr 2e-5
    moves a weight ~2e-5 a step, so every update rounds away and the adapter silently does not train
    (fp32 moves it to 0.018 in 100 steps). Call it after the trainer is built, before training starts
    (the optimizer is created in train(), on these same parameter objects)."""
    import torch

    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            cast += 1
    return cast
