"""Whether the engine can serve a base model, known from its config alone (no weights loaded), so the
platform refuses an unsupported architecture at the door instead of a runner failing later."""

from __future__ import annotations

import functools

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .base_model import attention_implementation
from .errors import EngineInputError
from .lora_layer import Routing, wrap_model


@functools.cache
def base_model_refusal(model_dir: str) -> str | None:
    """Why the engine cannot serve this model (naming the architecture and what is missing), or None.
    Builds the model on the meta device with the attention `load_base_model` would pick, and wraps it
    exactly as the engine would."""
    config = AutoConfig.from_pretrained(model_dir)
    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type) or (config.architectures or [config.model_type])[0]
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attention_implementation(config))
    except ValueError as error:  # transformers refusing the attention it was given
        return f"{arch}: transformers cannot build it for the engine: {error}"
    try:
        wrap_model(model, Routing())
    except EngineInputError as error:
        return str(error)
    return None
