"""The base-model host: resolve a model name, load it once, frozen, on the chosen device.

A name is a built-in tiny model, a local directory, or a hub id (read from the hub cache;
`HF_HUB_OFFLINE` is respected by transformers itself). bf16 on CUDA, fp32 on CPU unless asked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from . import packed_masks, tiny_models


def default_data_dir() -> Path:
    return Path(os.environ.get("LORASMITH_DATA_DIR", Path.home() / ".lorasmith"))


@dataclass(frozen=True)
class BaseModelInfo:
    """What the platform needs to validate requests without loading weights."""

    name: str
    model_dir: str  # local directory, or the hub id when read from the hub cache
    vocab_size: int
    max_context: int
    arch: str
    eos_token_id: int | None


def resolve_model_dir(name: str, data_dir: Path | None = None) -> str:
    if tiny_models.is_builtin(name):
        return str(tiny_models.materialise(name, (data_dir or default_data_dir()) / "models"))
    return name  # a local path or a hub id: transformers resolves both


def describe_base_model(name: str, data_dir: Path | None = None) -> BaseModelInfo:
    model_dir = resolve_model_dir(name, data_dir)
    config = AutoConfig.from_pretrained(model_dir)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return BaseModelInfo(
        name=name,
        model_dir=model_dir,
        vocab_size=int(text_config.vocab_size),
        max_context=int(getattr(text_config, "max_position_embeddings", 2048)),
        arch=(config.architectures or [config.model_type])[0],
        eos_token_id=eos,
    )


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The base weights' dtype: as asked ("bfloat16", "float32", ...), else bf16 on CUDA, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype:
        chosen = getattr(torch, dtype, None)
        if not isinstance(chosen, torch.dtype) or not chosen.is_floating_point:
            raise ValueError(f"unknown floating dtype {dtype!r}")
        return chosen
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def attention_implementation(config: PretrainedConfig) -> str:
    """ "sdpa" (torch's fused attention) where transformers has it for this architecture, else "eager".
    gpt-oss has no SDPA in transformers 5 (its attention sinks), and its eager attention takes the same
    masks, so packed passes work under both. The one rule `load_base_model` and `support` share."""
    try:
        model_class = AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:  # not a registered causal LM: let transformers pick and explain
        return "sdpa"
    return "sdpa" if getattr(model_class, "_supports_sdpa", True) else "eager"


def load_base_model(
    info: BaseModelInfo, device: torch.device, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load weights and tokenizer; the model is frozen and put in eval mode (no dropout), with the
    attention `attention_implementation` picks and packed masks wherever its decoder needs them."""
    config = AutoConfig.from_pretrained(info.model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        info.model_dir, dtype=dtype or pick_dtype(device), attn_implementation=attention_implementation(config)
    )
    packed_masks.install(model)
    model.to(device)  # type: ignore[arg-type]  # transformers types `to` via functools.wraps of the unbound method
    model.eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(info.model_dir)
    return model, tokenizer
